"""Paired CPC-SAM minus labeled-only on the 86 images (demo43 + other43), per seed and seed-averaged,
with a 95 % percentile bootstrap over cases. Usage: paired.py CPC_s0.json SUP_s0.json [CPC_s1.json SUP_s1.json ...]"""
import json, sys
import numpy as np
def scores(path):
    r = json.load(open(path))
    return np.array(r["demo_scores"] + r["other_scores"])
pairs = [(scores(a), scores(b)) for a, b in zip(sys.argv[1::2], sys.argv[2::2])]
rng = np.random.default_rng(0)
def line(d):
    boot = [d[rng.integers(0, len(d), len(d))].mean() for _ in range(10000)]
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return f"{100 * d.mean():+.2f} [{100 * lo:+.2f}, {100 * hi:+.2f}] (better/worse {(d > 0).sum()}/{(d < 0).sum()})"
for (c, s), a, b in zip(pairs, sys.argv[1::2], sys.argv[2::2]):
    print(f"{a} - {b}: CPC-SAM {100 * c.mean():.2f}, labeled-only {100 * s.mean():.2f}, paired {line(c - s)}")
if len(pairs) > 1:
    d = np.mean([c - s for c, s in pairs], 0)
    print(f"mean of {len(pairs)} seeds: paired {line(d)}")
