"""Paired comparison of the demo-setting runs of session 15 (``demo_var.py`` result.json files).

Usage: analyse.py RUNS   (RUNS/<arm>_s<seed>/result.json; arms: base, neck01, neck1)
Per arm and seed: mean Dice on the demo's 43 held-apart images and on the other 43 BUSI val images;
then, per arm against ``base`` on the seeds both have, the per-image difference over the 86 images
(seeds averaged) with a 95 % percentile bootstrap over images (10000 resamples)."""
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
    data[arm][int(seed)] = (np.array(r["demo_scores"]) * 100, np.array(r["other_scores"]) * 100, r["train_s"])

print("| arm | seed | held-apart 43 | other 43 | mean of 86 | train s |\n|---|---|---|---|---|---|")
for arm in sorted(data, key=lambda a: (a != "base", a)):
    for seed, (d, o, t) in sorted(data[arm].items()):
        print(f"| {arm} | {seed} | {d.mean():.2f} | {o.mean():.2f} | {np.concatenate([d, o]).mean():.2f} | {t} |")

rng = np.random.default_rng(0)
print("\n| arm - base | seeds | mean of 86 [95 %] | held-apart 43 |\n|---|---|---|---|")
for arm in sorted(data):
    if arm == "base":
        continue
    seeds = sorted(set(data[arm]) & set(data["base"]))
    if not seeds:
        continue
    diff = np.mean([np.concatenate(data[arm][s][:2]) - np.concatenate(data["base"][s][:2]) for s in seeds], 0)
    boot = diff[rng.integers(0, len(diff), (10000, len(diff)))].mean(1)
    held = np.mean([data[arm][s][0].mean() - data["base"][s][0].mean() for s in seeds])
    print(f"| {arm} | {','.join(map(str, seeds))} | {diff.mean():+.2f} [{np.percentile(boot, 2.5):+.2f}, "
          f"{np.percentile(boot, 97.5):+.2f}] | {held:+.2f} |")
