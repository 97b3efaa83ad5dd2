"""BUSI labeled_10, 60 minutes of CPU training per method, seeds 0-2: per seed and the mean over seeds,
with a 95 % bootstrap interval over the 86 val cases of the paired difference (seed-averaged per case).
Seed 0 from busi_l10_60min_s0 (self-prompted: the component-box rescoring, the current default);
seeds 1-2 from this folder's *_s{1,2}_scores.json (scored by exp.py with the current default)."""
import json
from pathlib import Path

import numpy as np

here = Path(__file__).parent
s0 = here.parent / "busi_l10_60min_s0"


def load(method, seed):
    if seed == 0:
        run = json.loads((s0 / f"{method}_rescored.json").read_text())[-1]
        return run["iteration"], run["cases"]
    d = json.loads((here / f"{method}_s{seed}_scores.json").read_text())
    return d["summary"]["iteration"], d["cases"]


rng = np.random.default_rng(0)


def interval(d, n=10000):
    return np.percentile(d[rng.integers(0, len(d), (n, len(d)))].mean(1), [2.5, 97.5])


seeds = [s for s in (0, 1, 2) if s == 0 or (here / f"cpcsam_s{s}_scores.json").is_file()
         and (here / f"supervised_s{s}_scores.json").is_file()]
print("| seed | labeled-only its | CPC-SAM its | mode | labeled-only | CPC-SAM | paired difference [95 %] | better/worse |")
print("|---|---|---|---|---|---|---|---|")
diffs = {"unprompted": [], "self_prompt": []}
for s in seeds:
    (ni_s, sup), (ni_c, cpc) = load("supervised", s), load("cpcsam", s)
    for mode in diffs:
        u, c = np.array(sup[mode]) * 100, np.array(cpc[mode]) * 100
        d = c - u
        diffs[mode].append(d)
        lo, hi = interval(d)
        print(f"| {s} | {ni_s} | {ni_c} | {mode} | {u.mean():.2f} | {c.mean():.2f} | {d.mean():+.2f} [{lo:+.2f}, {hi:+.2f}]"
              f" | {(d > 0).sum()}/{(d < 0).sum()} |")
for mode, ds in diffs.items():
    m = np.mean(ds, 0)
    lo, hi = interval(m)
    print(f"\nmean of seeds {seeds}, {mode}: {m.mean():+.2f} [{lo:+.2f}, {hi:+.2f}] "
          f"(cases better/worse {(m > 0).sum()}/{(m < 0).sum()})")
