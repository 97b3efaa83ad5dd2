"""Tables of run.sh's results: per box pass, list and inference mode, labeled-only and CPC-SAM per
seed, per class (mean DSC and predicted / reference voxels, to show a collapsed class), and the
paired per-volume difference (DSC averaged over the classes, then over seeds) with a 95 % bootstrap
interval over volumes; also joint - per_class for each method. Usage: analyse.py RUNS_DIR"""
import csv
import sys
from pathlib import Path

import numpy as np

runs = Path(sys.argv[1])
METHODS = ("supervised", "cpcsam")


def load(bp, lst, seed, method, mode):
    path = runs / f"{bp}_{lst}_s{seed}" / "results" / f"{method}__{lst}__seed{seed}__{mode}_cases.csv"
    if not path.exists():
        return None
    rows = list(csv.DictReader(open(path)))
    cases = sorted({r["case"] for r in rows})
    classes = sorted({r["class"] for r in rows})
    d = {(r["case"], r["class"]): r for r in rows}
    dice = np.array([[float(d[c, k]["dice"]) for k in classes] for c in cases]) * 100
    vox = np.array([[[float(d[c, k]["pred_voxels"]), float(d[c, k]["gt_voxels"])] for k in classes] for c in cases])
    return cases, classes, dice, vox


def paired(a, b, rng):
    diff = np.mean([x.mean(1) - y.mean(1) for x, y in zip(a, b)], 0)
    boot = diff[rng.integers(0, len(diff), (10000, len(diff)))].mean(1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return f"{diff.mean():+.2f} [{lo:+.2f}, {hi:+.2f}] (volumes better {int((diff > 0).sum())}/{len(diff)})"


rng = np.random.default_rng(0)
for lst in ("labeled_1", "labeled_3"):
    for mode in ("unprompted", "self_prompt"):
        res = {}
        for bp in ("joint", "per_class"):
            seeds = [s for s in (0, 1, 2) if all(load(bp, lst, s, m, mode) for m in METHODS)]
            if seeds:
                res[bp] = (seeds, {m: [load(bp, lst, s, m, mode) for s in seeds] for m in METHODS})
        for bp, (seeds, per) in res.items():
            cases, classes = per["cpcsam"][0][0], per["cpcsam"][0][1]
            print(f"\n{lst}, {mode}, box pass {bp}, seeds {seeds}, {len(cases)} volumes")
            for m in METHODS:
                means = [x[2].mean() for x in per[m]]
                cls = np.mean([x[2].mean(0) for x in per[m]], 0)
                vox = [x[3].sum(0) for x in per[m]]  # per seed: [classes, (pred, ref)]
                print(f"  {m:10s} per seed " + " / ".join(f"{v:.2f}" for v in means) + f"  mean {np.mean(means):.2f}"
                      + "  per class " + ", ".join(f"{k} {v:.2f}" for k, v in zip(classes, cls))
                      + "  voxels pred/ref " + "; ".join(
                          ", ".join(f"{int(v[i, 0])}/{int(v[i, 1])}" for i in range(len(classes))) for v in vox))
            print(f"  CPC-SAM - labeled-only: {paired([x[2] for x in per['cpcsam']], [x[2] for x in per['supervised']], rng)}"
                  + "; per seed " + ", ".join(f"{c[2].mean() - s[2].mean():+.2f}"
                                             for c, s in zip(per["cpcsam"], per["supervised"])))
        if len(res) == 2 and res["joint"][0] == res["per_class"][0]:
            for m in METHODS:
                print(f"  {lst} {mode} {m}: joint - per_class "
                      f"{paired([x[2] for x in res['joint'][1][m]], [x[2] for x in res['per_class'][1][m]], rng)}")
