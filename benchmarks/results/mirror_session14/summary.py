"""Tables of tta_probe.py's JSON files beside this script (summary.txt). Usage: summary.py"""
import json, glob, os
from pathlib import Path
import numpy as np
keys = ["unprompted", "unprompted_flip", "self_prompt", "self_prompt_tta", "self_prompt_flipprompts"]
allrows = []
print("| model | half | " + " | ".join(keys) + " |")
for f in sorted(glob.glob(str(Path(__file__).resolve().parent / "*.json"))):
    r = json.load(open(f)); n = os.path.basename(f)[:-5]
    for grp, sel in (("held-apart 43", True), ("other 43", False)):
        rows = [v for v in r.values() if v["held_apart"] == sel]
        print(f"| {n} | {grp} | " + " | ".join(f"{100*np.mean([v[k] for v in rows]):.2f}" for k in keys) + " |")
    allrows.append(r)
rng = np.random.default_rng(0)
for a, b in (("self_prompt_tta", "self_prompt"), ("unprompted_flip", "unprompted"), ("self_prompt_flipprompts", "self_prompt")):
    d = np.mean([[v[a] - v[b] for v in r.values()] for r in allrows], 0) * 100
    m = d[rng.integers(0, len(d), (10000, len(d)))].mean(1)
    per = [np.mean([v[a] - v[b] for v in r.values()]) * 100 for r in allrows]
    print(f"{a} - {b}: {d.mean():+.2f} [{np.percentile(m,2.5):+.2f}, {np.percentile(m,97.5):+.2f}] over 86 images, models averaged; per model " + ", ".join(f"{p:+.2f}" for p in per))
