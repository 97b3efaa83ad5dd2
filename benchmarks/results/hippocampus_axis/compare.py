"""Hippocampus labeled_1 seed 2, 400 iterations, first 8 val volumes: slicing axis x (SimpleITK axis
0) against the default z, labeled-only and CPC-SAM, CPU runs of this folder and of
../hippocampus_gpu (CPU margin check, GPU call 2). Usage: compare.py"""
import csv
from pathlib import Path

here = Path(__file__).parent
gpu = here.parent / "hippocampus_gpu"
files = {
    "CPU labeled-only, axis z (default)": here / "supervised_z__labeled_1__seed2__{mode}_cases.csv",
    "CPU CPC-SAM, axis z (default)": gpu / "cpu_margin_l1_seed2/cpcsam_margin0.1__labeled_1__seed2__{mode}_cases.csv",
    "GPU labeled-only, axis z (call 2)": gpu / "call2_400it/per_class_labeled_1_s2/results/supervised__labeled_1__seed2__{mode}_cases.csv",
    "GPU CPC-SAM, axis z (call 2)": gpu / "call2_400it/per_class_labeled_1_s2/results/cpcsam__labeled_1__seed2__{mode}_cases.csv",
    "CPU labeled-only, axis x": here / "supervised_x__labeled_1__seed2__{mode}_cases.csv",
    "CPU CPC-SAM, axis x": here / "cpcsam_x__labeled_1__seed2__{mode}_cases.csv",
}
cases = sorted({r["case"] for r in csv.DictReader(open(str(files["CPU labeled-only, axis x"]).format(mode="unprompted")))})
print(f"{len(cases)} volumes: {', '.join(cases)}")
for mode in ("unprompted", "self_prompt"):
    print(f"\n{mode}\n| run | DSC | anterior DSC | posterior DSC | anterior voxels (ref) | posterior voxels (ref) |\n|---|---|---|---|---|---|")
    for name, pattern in files.items():
        f = Path(str(pattern).format(mode=mode))
        if not f.exists():
            print(f"| {name} | (not run) |")
            continue
        rows = [r for r in csv.DictReader(open(f)) if r["case"] in cases]
        cls = {k: [r for r in rows if r["class"] == k] for k in ("anterior", "posterior")}
        d = {k: 100 * sum(float(r["dice"]) for r in v) / len(v) for k, v in cls.items()}
        v = {k: (sum(int(r["pred_voxels"]) for r in rr), sum(int(r["gt_voxels"]) for r in rr)) for k, rr in cls.items()}
        print(f"| {name} | {(d['anterior'] + d['posterior']) / 2:.2f} | {d['anterior']:.2f} | {d['posterior']:.2f} | "
              f"{v['anterior'][0]} ({v['anterior'][1]}) | {v['posterior'][0]} ({v['posterior'][1]}) |")
