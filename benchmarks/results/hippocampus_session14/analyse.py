"""Tables of the CPU runs of session 14 (CASES/<arm>_s<seed>.csv, the benchmark's unprompted per-case
CSVs; default: cases/ beside this script): per arm,
DSC % per seed over the scored val volumes (mean of the two classes), predicted / reference voxels per
class (mean of seeds), and the paired difference against labeled-only (`sup`): per volume, classes
averaged, each arm's seeds averaged, then a 95 % percentile bootstrap over the volumes (10000
resamples). Arms may have different seeds; "same seeds" pairs only the seeds both arms have.
Usage: analyse.py [CASES]"""
import csv
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

folder = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "cases"
data = defaultdict(dict)  # arm -> seed -> {case: {class: row}}
for f in sorted(folder.glob("*_s*.csv")):
    arm, seed = f.stem.rsplit("_s", 1)
    rows = defaultdict(dict)
    for r in csv.DictReader(f.open()):
        rows[r["case"]][r["class"]] = r
    data[arm][int(seed)] = rows


def dsc(arm, seed, cases):
    return np.array([np.mean([float(v["dice"]) for v in data[arm][seed][c].values()]) * 100 for c in cases])


def boot(d, n=10000):
    rng = np.random.default_rng(0)
    m = d[rng.integers(0, len(d), (n, len(d)))].mean(1)
    return d.mean(), np.percentile(m, 2.5), np.percentile(m, 97.5)


cases = sorted(next(iter(data["sup"].values())))
base = {s: dsc("sup", s, cases) for s in data["sup"]}
print(f"{len(cases)} volumes: {', '.join(cases)}\n")
print("| arm | DSC per seed (mean) | anterior / posterior voxels, mean of seeds (reference) "
      "| - labeled-only, all seeds [95 %] | - labeled-only, same seeds |")
print("|---|---|---|---|---|")
for arm in sorted(data, key=lambda a: (a != "sup", a)):
    seeds = sorted(data[arm])
    x = {s: dsc(arm, s, cases) for s in seeds}
    vox = []
    for cls in ("anterior", "posterior"):
        p = np.mean([sum(int(data[arm][s][c][cls]["pred_voxels"]) for c in cases) for s in seeds])
        g = sum(int(data[arm][seeds[0]][c][cls]["gt_voxels"]) for c in cases)
        vox.append(f"{p:.0f} ({g})")
    per_seed = " / ".join(f"s{s} {x[s].mean():.2f}" for s in seeds)
    mean = np.mean([x[s] for s in seeds], 0)
    diff = same = ""
    if arm != "sup":
        diff = "{:+.2f} [{:+.2f}, {:+.2f}]".format(*boot(mean - np.mean(list(base.values()), 0)))
        common = [s for s in seeds if s in base]
        if common:
            same = "{:+.2f} [{:+.2f}, {:+.2f}] (seeds {})".format(
                *boot(np.mean([x[s] - base[s] for s in common], 0)), ",".join(map(str, common)))
    print(f"| {arm} | {per_seed} ({mean.mean():.2f}) | {' / '.join(vox)} | {diff} | {same} |")
