"""CPU, CPC-SAM labeled_1 seed 2, 400 iterations, box margin 0 vs 0.1, on the first 8 val volumes;
with the GPU runs of call 2 (margin 0.1, labeled-only and CPC-SAM) on the same volumes. Usage: compare.py"""
import csv
from pathlib import Path

here = Path(__file__).parent
files = {
    "CPU CPC-SAM, margin 0": here / "cpcsam_margin0__labeled_1__seed2__unprompted_cases.csv",
    "CPU CPC-SAM, margin 0.1": here / "cpcsam_margin0.1__labeled_1__seed2__unprompted_cases.csv",
    "GPU CPC-SAM, margin 0.1 (call 2)": here.parent / "call2_400it/per_class_labeled_1_s2/results/cpcsam__labeled_1__seed2__unprompted_cases.csv",
    "GPU labeled-only, margin 0.1 (call 2)": here.parent / "call2_400it/per_class_labeled_1_s2/results/supervised__labeled_1__seed2__unprompted_cases.csv",
}
cases = sorted({r["case"] for r in csv.DictReader(open(files["CPU CPC-SAM, margin 0"]))})
print(f"{len(cases)} volumes: {', '.join(cases)}")
print("| run | DSC | anterior DSC | posterior DSC | anterior voxels (ref) | posterior voxels (ref) |\n|---|---|---|---|---|---|")
for name, f in files.items():
    if not f.exists():
        print(f"| {name} | (missing) |")
        continue
    rows = [r for r in csv.DictReader(open(f)) if r["case"] in cases]
    cls = {k: [r for r in rows if r["class"] == k] for k in ("anterior", "posterior")}
    d = {k: 100 * sum(float(r["dice"]) for r in v) / len(v) for k, v in cls.items()}
    v = {k: (sum(int(r["pred_voxels"]) for r in rr), sum(int(r["gt_voxels"]) for r in rr)) for k, rr in cls.items()}
    print(f"| {name} | {(d['anterior'] + d['posterior']) / 2:.2f} | {d['anterior']:.2f} | {d['posterior']:.2f} | "
          f"{v['anterior'][0]} ({v['anterior'][1]}) | {v['posterior'][0]} ({v['posterior'][1]}) |")
