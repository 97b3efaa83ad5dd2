"""Per-volume plot of cases/ (sup and cpc, each volume's DSC averaged over the arm's seeds and the two
classes): left, labeled-only against CPC-SAM per volume; right, the paired difference per volume,
sorted. Usage: plot.py [CASES] [OUT.png]"""
import csv
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

here = Path(__file__).resolve().parent
folder = Path(sys.argv[1]) if len(sys.argv) > 1 else here / "cases"
out = Path(sys.argv[2]) if len(sys.argv) > 2 else here / "per_volume.png"
dice = defaultdict(lambda: defaultdict(list))  # arm -> case -> [per-seed DSC]
seeds = defaultdict(list)
for f in sorted(folder.glob("*_s*.csv")):
    arm, seed = f.stem.rsplit("_s", 1)
    seeds[arm].append(int(seed))
    per_case = defaultdict(list)
    for r in csv.DictReader(f.open()):
        per_case[r["case"]].append(float(r["dice"]) * 100)
    for case, values in per_case.items():
        dice[arm][case].append(np.mean(values))
cases = sorted(dice["sup"])
sup = np.array([np.mean(dice["sup"][c]) for c in cases])
cpc = np.array([np.mean(dice["cpc"][c]) for c in cases])
diff = cpc - sup
fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.5))
lo, hi = min(sup.min(), cpc.min()) - 2, max(sup.max(), cpc.max()) + 2
a.plot([lo, hi], [lo, hi], color="grey", lw=0.8)
a.scatter(sup, cpc, s=18)
a.set(xlim=(lo, hi), ylim=(lo, hi), xlabel=f"labeled-only DSC % (seeds {sorted(seeds['sup'])})",
      ylabel=f"CPC-SAM DSC % (seeds {sorted(seeds['cpc'])})",
      title=f"{len(cases)} val volumes: {(diff > 0).sum()} above the line")
order = np.argsort(diff)
b.bar(range(len(cases)), diff[order], color=["tab:red" if d < 0 else "tab:green" for d in diff[order]])
b.axhline(diff.mean(), color="black", lw=1, label=f"mean {diff.mean():+.2f}")
b.set(xticks=range(len(cases)), xlabel="volume (sorted)", ylabel="CPC-SAM - labeled-only, DSC points",
      title="paired difference per volume")
b.set_xticklabels([cases[i].replace("hippocampus_", "") for i in order], rotation=90, fontsize=7)
b.legend()
fig.suptitle("Hippocampus labeled_3, 1200 iterations, 24 unlabeled volumes (CPU)")
fig.tight_layout()
fig.savefig(out, dpi=110)
print(out)
