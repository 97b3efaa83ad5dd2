"""CPU, CPC-SAM labeled_1 seed 2, 400 iterations, box margin 0 vs 0.1, on the first 8 val volumes;
with the GPU runs of call 2 (margin 0.1, labeled-only and CPC-SAM) on the same volumes. Usage (repository root): PYTHONPATH=. python compare.py"""
import csv
from pathlib import Path

from benchmarks.report import case_csv_table

here = Path(__file__).parent
files = {
    "CPU CPC-SAM, margin 0": here / "cpcsam_margin0__labeled_1__seed2__unprompted_cases.csv",
    "CPU CPC-SAM, margin 0.1": here / "cpcsam_margin0.1__labeled_1__seed2__unprompted_cases.csv",
    "GPU CPC-SAM, margin 0.1 (call 2)": here.parent / "call2_400it/per_class_labeled_1_s2/results/cpcsam__labeled_1__seed2__unprompted_cases.csv",
    "GPU labeled-only, margin 0.1 (call 2)": here.parent / "call2_400it/per_class_labeled_1_s2/results/supervised__labeled_1__seed2__unprompted_cases.csv",
}
cases = sorted({r["case"] for r in csv.DictReader(open(files["CPU CPC-SAM, margin 0"]))})
print(f"{len(cases)} volumes: {', '.join(cases)}")
print("\n".join(case_csv_table(files, cases)))
