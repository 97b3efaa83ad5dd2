"""Tables of the GPU sweep (results.jsonl): per arm and seed, DSC % over the 86 val images (43 held-apart
+ 43 other), self-prompted and unprompted; paired differences of seed-averaged per-case scores with a
95 % percentile bootstrap over the 86 cases (10000 resamples). Usage: analyse.py [results.jsonl]"""
import json, sys
from collections import defaultdict
from pathlib import Path
import numpy as np

path = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).with_name("results.jsonl"))
arms = defaultdict(dict)
for line in path.read_text().splitlines():
    r = json.loads(line)
    if r.get("rc") != 0:
        print("failed:", r["name"], r.get("rc")); continue
    arm, seed = r["name"].rsplit("_s", 1)
    arms[arm][int(seed)] = r

def cases(arm, mode):
    suffix = "" if mode == "self" else "_u"
    return np.array([arms[arm][s][f"demo_scores{suffix}"] + arms[arm][s][f"other_scores{suffix}"] for s in sorted(arms[arm])]) * 100

def boot(d, n=10000):
    rng = np.random.default_rng(0)
    m = d[rng.integers(0, len(d), (n, len(d)))].mean(1)
    return d.mean(), np.percentile(m, 2.5), np.percentile(m, 97.5)

print("| arm | iterations | self-prompted 86, per seed (mean) | held-apart 43 (mean) | unprompted 86 (mean) | train s |")
print("|---|---|---|---|---|---|")
for arm, d in arms.items():
    c, u = cases(arm, "self"), cases(arm, "u")
    held = [d[s]["demo43"] * 100 for s in sorted(d)]
    print(f"| {arm} | {d[min(d)]['its']} | {' / '.join(f'{x:.2f}' for x in c.mean(1))} ({c.mean():.2f}) | "
          f"{' / '.join(f'{x:.2f}' for x in held)} ({np.mean(held):.2f}) | {u.mean():.2f} | "
          f"{' / '.join(str(d[s]['train_s']) for s in sorted(d))} |")
print()
for base in ("sup300", "sup450", "demo"):
    for arm in arms:
        if arm == base or base not in arms:
            continue
        row = []
        for mode in ("self", "u"):
            m, lo, hi = boot(cases(arm, mode).mean(0) - cases(base, mode).mean(0))
            row.append(f"{m:+.2f} [{lo:+.2f}, {hi:+.2f}]")
        print(f"{arm} - {base}: self-prompted {row[0]}, unprompted {row[1]}")
