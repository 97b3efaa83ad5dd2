"""Paired CPC-SAM - labeled-only over seeds: per-seed means, mean +- SD over seeds, and per case the
difference of the seed-averaged scores with a 95 % percentile bootstrap over cases (10000, seed 0).
Usage: paired_seeds.py A[,A...] B[,B...]: run folders of exp.py (their scores.json) or score files."""
import json, sys, numpy as np


def load(dirs):
    return [json.load(open(d if d.endswith(".json") else d + "/scores.json"))["cases"] for d in dirs.split(",")]


A, B = load(sys.argv[1]), load(sys.argv[2])
for mode in A[0]:
    a = np.array([r[mode] for r in A]) * 100
    b = np.array([r[mode] for r in B]) * 100
    print(f"{mode}: A per seed {np.round(a.mean(1), 2).tolist()} = {a.mean(1).mean():.2f} +- {a.mean(1).std(ddof=1) if len(a) > 1 else 0:.2f}; "
          f"B per seed {np.round(b.mean(1), 2).tolist()} = {b.mean(1).mean():.2f} +- {b.mean(1).std(ddof=1) if len(b) > 1 else 0:.2f}")
    d = a.mean(0) - b.mean(0)
    rng = np.random.default_rng(0)
    boots = [d[rng.integers(0, len(d), len(d))].mean() for _ in range(10000)]
    per_seed = np.round(a.mean(1) - b.mean(1), 2).tolist() if len(a) == len(b) else None
    print(f"  paired diff {d.mean():+.2f} [{np.percentile(boots, 2.5):+.2f}, {np.percentile(boots, 97.5):+.2f}]; "
          f"per-seed diffs {per_seed}; better {int((d > 0.5).sum())} worse {int((d < -0.5).sum())} of {len(d)}; "
          f"empty A {int((a == 0).sum())} B {int((b == 0).sum())} (case-seed pairs)")
