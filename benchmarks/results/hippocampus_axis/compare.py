"""Hippocampus seed 2, 400 iterations, first 8 val volumes: slicing axis x (SimpleITK axis 0) against
the old default z, labeled-only and CPC-SAM; labeled_1 (CPU runs of this folder and of
../hippocampus_gpu: CPU margin check, GPU call 2) and labeled_3 (CPU runs of this folder, GPU call 2
along z). Usage (repository root): PYTHONPATH=. python benchmarks/results/hippocampus_axis/compare.py"""
import csv
from pathlib import Path

from benchmarks.report import case_csv_table

here = Path(__file__).parent
gpu = here.parent / "hippocampus_gpu"
call2 = gpu / "call2_400it" / "per_class_{lst}_s2" / "results"  # seed 2
lists = {
    "labeled_1 seed 2": {
        "CPU labeled-only, axis z": here / "supervised_z__labeled_1__seed2__{mode}_cases.csv",
        "CPU CPC-SAM, axis z": gpu / "cpu_margin_l1_seed2/cpcsam_margin0.1__labeled_1__seed2__{mode}_cases.csv",
        "GPU labeled-only, axis z (call 2)": call2 / "supervised__labeled_1__seed2__{mode}_cases.csv",
        "GPU CPC-SAM, axis z (call 2)": call2 / "cpcsam__labeled_1__seed2__{mode}_cases.csv",
        "CPU labeled-only, axis x": here / "supervised_x__labeled_1__seed2__{mode}_cases.csv",
        "CPU CPC-SAM, axis x": here / "cpcsam_x__labeled_1__seed2__{mode}_cases.csv",
    },
    "labeled_1 seed 1": {
        "GPU labeled-only, axis z (call 2)": gpu / "call2_400it/per_class_labeled_1_s1/results/supervised__labeled_1__seed1__{mode}_cases.csv",
        "GPU CPC-SAM, axis z (call 2)": gpu / "call2_400it/per_class_labeled_1_s1/results/cpcsam__labeled_1__seed1__{mode}_cases.csv",
        "CPU labeled-only, axis x": here / "supervised_auto__labeled_1__seed1__{mode}_cases.csv",
        "CPU CPC-SAM, axis x": here / "cpcsam_auto__labeled_1__seed1__{mode}_cases.csv",
    },
    "labeled_3": {
        "GPU labeled-only, axis z (call 2)": call2 / "supervised__labeled_3__seed2__{mode}_cases.csv",
        "GPU CPC-SAM, axis z (call 2)": call2 / "cpcsam__labeled_3__seed2__{mode}_cases.csv",
        "CPU labeled-only, axis x": here / "supervised_x__labeled_3__seed2__{mode}_cases.csv",
        "CPU CPC-SAM, axis x": here / "cpcsam_x__labeled_3__seed2__{mode}_cases.csv",
        "CPU CPC-SAM, axis x, box margin 0": here / "cpcsam_x_margin0__labeled_3__seed2__{mode}_cases.csv",
        "CPU CPC-SAM, axis x, joint box pass": here / "cpcsam_x_joint__labeled_3__seed2__{mode}_cases.csv",
    },
}
for lst, files in lists.items():
    first = str(files["CPU labeled-only, axis x"]).format(mode="unprompted")
    cases = sorted({r["case"] for r in csv.DictReader(open(first))})
    print(f"## {lst}: {len(cases)} volumes: {', '.join(cases)}")
    for mode in ("unprompted", "self_prompt"):
        print(f"\n{mode}")
        print("\n".join(case_csv_table({k: Path(str(v).format(mode=mode, lst=lst.split()[0])) for k, v in files.items()}, cases)))
    print()
