"""Paired comparisons of session 16's demo-setting runs.

Usage: analyse.py RUNS A:B [A:B ...]
RUNS/<arm>_s<seed>/result.json (``demo_var.py``); mirrored scores from ``demo_scores_m``/``other_scores_m``
there (``MIRROR=1``) or from ``mirror_eval.json`` beside it (``mirror_eval.py``). An arm name with the
suffix ``.m`` means its mirrored scores. Prints each arm and seed (the demo's 43 held-apart images,
the other 43 BUSI val images, the mean of 86), then for each A:B the per-image difference A - B over
the 86 images, seeds averaged over the seeds both have, with a 95 % percentile bootstrap over images
(10000 resamples), and the held-apart 43 means."""
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

runs = Path(sys.argv[1])
data = defaultdict(dict)
for f in sorted(runs.glob("*_s*/result.json")):
    arm, seed = f.parent.name.rsplit("_s", 1)
    r = json.loads(f.read_text())
    data[arm][int(seed)] = np.array(r["demo_scores"] + r["other_scores"]) * 100
    m = f.parent / "mirror_eval.json"
    if "demo_scores_m" in r:
        data[arm + ".m"][int(seed)] = np.array(r["demo_scores_m"] + r["other_scores_m"]) * 100
    elif m.is_file():
        data[arm + ".m"][int(seed)] = np.array(json.loads(m.read_text())["mirror"]) * 100

print("| arm | seed | held-apart 43 | other 43 | mean of 86 |\n|---|---|---|---|---|")
for arm in sorted(data):
    for seed, s in sorted(data[arm].items()):
        print(f"| {arm} | {seed} | {s[:43].mean():.2f} | {s[43:].mean():.2f} | {s.mean():.2f} |")
    if len(data[arm]) > 1:
        held = [s[:43].mean() for s in data[arm].values()]
        print(f"| {arm} | mean of {len(held)} | {np.mean(held):.2f} | "
              f"{np.mean([s[43:].mean() for s in data[arm].values()]):.2f} | "
              f"{np.mean([s.mean() for s in data[arm].values()]):.2f} |")

rng = np.random.default_rng(0)
print("\n| A - B | seeds | mean of 86 [95 %] | held-apart 43: A / B |\n|---|---|---|---|")
for pair in sys.argv[2:]:
    a, b = pair.split(":")
    seeds = sorted(set(data[a]) & set(data[b]))
    if not seeds:
        print(f"| {a} - {b} | none | | |")
        continue
    d = np.mean([data[a][s] - data[b][s] for s in seeds], axis=0)
    boot = d[rng.integers(0, len(d), (10000, len(d)))].mean(1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    ha = np.mean([data[a][s][:43].mean() for s in seeds])
    hb = np.mean([data[b][s][:43].mean() for s in seeds])
    print(f"| {a} - {b} | {','.join(map(str, seeds))} | {d.mean():+.2f} [{lo:+.2f}, {hi:+.2f}] | {ha:.2f} / {hb:.2f} |")
