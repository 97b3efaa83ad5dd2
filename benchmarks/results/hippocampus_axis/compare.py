"""Hippocampus labeled_1 seed 2, 400 iterations, first 8 val volumes: slicing axis x (SimpleITK axis
0) against the default z, labeled-only and CPC-SAM, CPU runs of this folder and of
../hippocampus_gpu (CPU margin check, GPU call 2). Usage (repository root): PYTHONPATH=. python compare.py"""
import csv
from pathlib import Path

from benchmarks.report import case_csv_table

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
    print(f"\n{mode}")
    print("\n".join(case_csv_table({k: Path(str(v).format(mode=mode)) for k, v in files.items()}, cases)))
