"""Hippocampus labeled_1 / labeled_3, labeled-only vs CPC-SAM, seeds 0-2, 8 val volumes, 100 iterations.
Seed 0: the committed session-4/5 case files; seeds 1-2: this folder's copies (runs of session 7).
Prints per-seed means, per-class means and the paired per-volume difference (DSC averaged over the
two classes, then over seeds) with a 95 % percentile bootstrap over volumes. Usage: analyse.py"""
import csv
from pathlib import Path
import numpy as np

here = Path(__file__).parent
res = here.parent


def case_file(method, lst, seed, mode):
    if seed == 0 and lst == 1:
        name = f"{method}__labeled_1__seed0__" + ("unprompted_rescored_cases.csv" if mode == "unprompted" else "self_prompt_cases.csv")
        return res / "hippocampus_l1_100it" / name
    if seed == 0:
        return res / "hippocampus_l3_100it" / f"{method}__labeled_3__seed0__{mode}_cases.csv"
    return here / f"seed{seed}" / f"{method}__labeled_{lst}__seed{seed}__{mode}_cases.csv"


def load(path):
    rows = list(csv.DictReader(open(path)))
    cases = sorted({r["case"] for r in rows})
    classes = sorted({r["class"] for r in rows})
    d = {(r["case"], r["class"]): float(r["dice"]) for r in rows}
    return cases, classes, np.array([[d[c, k] for k in classes] for c in cases]) * 100


rng = np.random.default_rng(0)
for lst in (1, 3):
    for mode in ("unprompted", "self_prompt"):
        seeds = [s for s in (0, 1, 2) if all(case_file(m, lst, s, mode).exists() for m in ("supervised", "cpcsam"))]
        if not seeds:
            continue
        per = {m: [load(case_file(m, lst, s, mode)) for s in seeds] for m in ("supervised", "cpcsam")}
        cases, classes = per["cpcsam"][0][0], per["cpcsam"][0][1]
        assert all(c == cases for m in per for c, _, _ in per[m])
        print(f"\nlabeled_{lst}, {mode}, seeds {seeds}, {len(cases)} volumes, classes {classes}")
        for m in per:
            means = [a.mean() for _, _, a in per[m]]
            cls = np.mean([a.mean(0) for _, _, a in per[m]], 0)
            print(f"  {m:10s} per seed " + " / ".join(f"{x:.2f}" for x in means) +
                  f"  mean {np.mean(means):.2f}  per class " + ", ".join(f"{k} {v:.2f}" for k, v in zip(classes, cls)))
        diff = np.mean([c.mean(1) - s.mean(1) for (_, _, c), (_, _, s) in zip(per["cpcsam"], per["supervised"])], 0)
        boot = diff[rng.integers(0, len(diff), (10000, len(diff)))].mean(1)
        lo, hi = np.percentile(boot, [2.5, 97.5])
        seedwise = [c.mean() - s.mean() for (_, _, c), (_, _, s) in zip(per["cpcsam"], per["supervised"])]
        print(f"  CPC-SAM - labeled-only: {diff.mean():+.2f} [{lo:+.2f}, {hi:+.2f}] (volumes better {int((diff > 0).sum())}"
              f"/{len(diff)}); per seed " + ", ".join(f"{x:+.2f}" for x in seedwise))
