"""Tables of run.sh's runs (runs.tar.gz unpacked into RUNS): per arm and seed, DSC % over the 30 val
volumes (mean of the two classes), predicted / reference voxels per class, and paired differences
against labeled-only (per volume, classes averaged, then seeds averaged; 95 % percentile bootstrap over
the volumes, 10000 resamples). Usage: analyse.py RUNS"""
import csv, sys
from collections import defaultdict
from pathlib import Path
import numpy as np

runs = Path(sys.argv[1])
data = defaultdict(dict)  # arm -> seed -> mode -> {case: {class: row}}
for d in sorted(p for p in runs.iterdir() if p.is_dir()):
    arm, seed = d.name.rsplit("_s", 1)
    for f in (d / "results").glob("*_cases.csv"):
        mode = "self_prompt" if "__self_prompt_" in f.name else "unprompted"
        rows = defaultdict(dict)
        for r in csv.DictReader(f.open()):
            rows[r["case"]][r["class"]] = r
        data[arm].setdefault(int(seed), {})[mode] = rows

def per_case(arm, mode):
    seeds = sorted(data[arm])
    cases = sorted(data[arm][seeds[0]][mode])
    return cases, np.array([[np.mean([float(v["dice"]) for v in data[arm][s][mode][c].values()]) * 100
                             for c in cases] for s in seeds])

def boot(d, n=10000):
    rng = np.random.default_rng(0)
    m = d[rng.integers(0, len(d), (n, len(d)))].mean(1)
    return d.mean(), np.percentile(m, 2.5), np.percentile(m, 97.5)

for mode in ("unprompted", "self_prompt"):
    print(f"\n### {mode}\n| arm | DSC per seed (mean) | anterior / posterior voxels, mean of seeds (reference) | - labeled-only [95 %] | per seed |")
    print("|---|---|---|---|---|")
    _, base = per_case("sup", mode)
    for arm in data:
        cases, x = per_case(arm, mode)
        vox = []
        for cls in ("anterior", "posterior"):
            p = np.mean([sum(int(data[arm][s][mode][c][cls]["pred_voxels"]) for c in cases) for s in data[arm]])
            g = sum(int(data[arm][min(data[arm])][mode][c][cls]["gt_voxels"]) for c in cases)
            vox.append(f"{p:.0f} ({g})")
        diff = "" if arm == "sup" else "{:+.2f} [{:+.2f}, {:+.2f}]".format(*boot(x.mean(0) - base.mean(0)))
        per_seed = "" if arm == "sup" else ", ".join(f"{v:+.2f}" for v in (x - base).mean(1))
        print(f"| {arm} | {' / '.join(f'{v:.2f}' for v in x.mean(1))} ({x.mean():.2f}) | {' / '.join(vox)} | {diff} | {per_seed} |")
