"""The benchmark package (``python -m benchmarks``): tiny real runs in a subprocess on real BUSI and
MSD Hippocampus data with the real LiteMedSAM (2 iterations, frozen encoder, 2 test cases, 2
unlabeled cases), the paired statistics on hand-computed numbers, and the report's wording."""
from __future__ import annotations

import csv
import json
import math
import os
import re
import subprocess
import sys

import pytest

from benchmarks import stats
from benchmarks.data import choose_unlabeled

ENV = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_WAIT_POLICY": "PASSIVE"}
TINY = ["--iterations", "2", "--batch-size", "2", "--max-test", "2", "--freeze-encoder",
        "--cache-views", "1", "--threads", "1"]
HIPPOCAMPUS = ["--labeled-list", "labeled_1.txt", "--unlabeled-limit", "1", "--methods", "cpcsam", "zeroshot",
               "--seeds", "0", *TINY, "--max-test", "1"]  # a volume is ~35 slices
INFERENCE = ["unprompted", "self_prompt"]
PROJECT_WORDS = re.compile(r"\bissues?\b|\btargets?\b|\bticket\b|\bTODO\b", re.IGNORECASE)


def _bench(repo_root, *args, timeout=900):
    return subprocess.run([sys.executable, "-m", "benchmarks", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=ENV, cwd=repo_root)


def _finite(*values):
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


# ---- statistics on hand-computed numbers -----------------------------------------------------------


def test_paired_difference_averages_seeds_per_case_first():
    method = {0: {"a": 50.0, "b": 70.0, "c": 40.0}, 1: {"a": 60.0, "b": 80.0, "c": 40.0}}
    baseline = {0: {"a": 50.0, "b": 50.0, "c": 45.0}, 1: {"a": 50.0, "b": 60.0, "c": 45.0}, 2: {"a": 50.0}}
    d = stats.paired_difference(method, baseline)
    # per case: a 55 - 50 = 5, b 75 - 55 = 20, c 40 - 45 = -5 -> mean 20 / 3
    assert d["cases"] == 3 and d["mean"] == pytest.approx(20 / 3)
    assert (d["better"], d["worse"], d["equal"]) == (2, 1, 0)
    assert d["method_seeds"] == [0, 1] and d["baseline_seeds"] == [0, 1, 2]
    assert -5 <= d["ci_low"] < d["mean"] < d["ci_high"] <= 20


def test_bootstrap_interval_of_two_cases_and_of_constant_differences():
    # two cases, differences 0 and 2: resampled means are 0, 1 or 2 with probabilities 1/4, 1/2, 1/4,
    # so the 2.5th and 97.5th percentiles are 0 and 2
    assert stats.bootstrap_interval([0.0, 2.0]) == (0.0, 2.0)
    assert stats.bootstrap_interval([3.0, 3.0, 3.0]) == (3.0, 3.0)
    again = stats.bootstrap_interval([1.0, -4.0, 2.5, 7.0])
    assert again == stats.bootstrap_interval([1.0, -4.0, 2.5, 7.0])  # fixed bootstrap seed
    assert stats.bootstrap_interval([]) == (None, None)


def test_mean_sd_over_seeds_and_case_scores_over_classes():
    assert stats.mean_sd([40.0, 50.0, 60.0]) == {"mean": 50.0, "sd": 10.0, "n": 3}  # sample SD
    assert stats.mean_sd([42.0, None]) == {"mean": 42.0, "sd": None, "n": 1}
    rows = [{"case": "x", "class": "anterior", "dice": 0.5}, {"case": "x", "class": "posterior", "dice": 0.9},
            {"case": "y", "class": "anterior", "dice": float("nan")}, {"case": "y", "class": "posterior", "dice": 0.2}]
    assert stats.case_scores(rows) == {"x": pytest.approx(0.7), "y": pytest.approx(0.2)}


def test_each_inference_mode_asks_the_predictor_for_that_mode(busi_dir, tmp_path):
    """"unprompted" must ask for unprompted inference: predict's default is self-prompted."""
    import SimpleITK as sitk

    from benchmarks.data import LAYOUTS, Plan
    from benchmarks.runs import score_test_list

    names = (busi_dir / "val.txt").read_text().split()[:2]
    plan = Plan(LAYOUTS["busi"], busi_dir, "train.txt", [], {}, {}, {}, {}, None, "val.txt", names, 86, None, None,
                tmp_path)

    class Recorder:
        def __init__(self):
            self.modes = []

        def predict_image(self, image, **kwargs):
            self.modes.append(kwargs.get("self_prompt", "default"))
            return sitk.Image(image.GetSize(), sitk.sitkUInt8)

    for mode, expected in (("unprompted", False), ("self_prompt", True)):
        recorder = Recorder()
        rows, _ = score_test_list(recorder, plan, mode)
        assert recorder.modes == [expected, expected] and len(rows) == 2


def test_unlabeled_subset_is_fixed_and_keeps_list_order():
    names = [f"case_{i:03d}" for i in range(50)]
    first, second = choose_unlabeled(names, 20), choose_unlabeled(names, 20)
    assert first == second and len(first) == 20 and len(set(first)) == 20
    assert first == [n for n in names if n in set(first)]
    assert choose_unlabeled(names, None) == names and choose_unlabeled(names, 80) == names


# ---- tiny real runs --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def busi_run(tmp_path_factory, busi_dir, repo_root):
    out = tmp_path_factory.mktemp("bench_busi") / "out"
    r = _bench(repo_root, "--data", busi_dir, "--output", out, "--methods", "supervised", "cpcsam", "zeroshot",
               "--seeds", "0", "1", "--inference", *INFERENCE, "--unlabeled-limit", "2", *TINY)
    assert r.returncode == 0, r.stderr[-3000:]
    return out, r


@pytest.fixture(scope="module")
def hippocampus_run(tmp_path_factory, shared_data_dir, repo_root):
    out = tmp_path_factory.mktemp("bench_hippocampus") / "out"
    r = _bench(repo_root, "--data", shared_data_dir / "hippocampus", "--output", out, *HIPPOCAMPUS)
    assert r.returncode == 0, r.stderr[-3000:]
    return out, r


def test_busi_units_per_method_and_seed(busi_run):
    out, r = busi_run
    assert r.stdout.strip().endswith("report.md")
    for method in ("supervised", "cpcsam"):
        for seed in (0, 1):
            d = json.loads((out / "results" / f"{method}__labeled_10__seed{seed}.json").read_text())
            assert d["seed"] == seed and d["config"]["seed"] == seed and d["config"]["method"] == method
            assert d["iterations_done"] == 2 and d["status"] == "completed" and d["num_labeled"] == 10
            assert d["num_unlabeled"] == (0 if method == "supervised" else 2)
            assert len(d["history"]["loss"]) == 2 and _finite(*d["history"]["loss"])
            for mode in INFERENCE:
                m = d["inference"][mode]["metrics"]
                assert _finite(m["dice"], m["jaccard"]) and 0 <= m["jaccard"] <= m["dice"] <= 100
                assert m["cases"] == 2 and 0 <= m["empty_predictions"] <= 2
                with open(d["inference"][mode]["cases_csv"], newline="") as f:
                    assert len(list(csv.DictReader(f))) == 2
    zs = json.loads((out / "results" / "zeroshot.json").read_text())
    assert zs["variants"]["zeroshot_box"]["metrics"]["dice"] > 50  # a reference box is an easy prompt


def test_busi_report_has_seed_spread_and_paired_differences(busi_run):
    out, _ = busi_run
    report = (out / "report.md").read_text()
    table = report.split("### `labeled_10`, unprompted")[1]
    cpcsam_row = next(line for line in table.splitlines() if line.startswith("| CPC-SAM (frozen encoder) | 10/12 |"))
    assert "| 0, 1 |" in cpcsam_row and " ± " in cpcsam_row
    paired = next(line for line in table.splitlines() if line.startswith("| CPC-SAM - labeled-only | 2 |"))
    assert re.search(r"\| \[-?\d+\.\d\d, -?\d+\.\d\d\] \| \d / \d / \d \| 0, 1 vs 0, 1 \|", paired), paired
    assert "2 of the 421 other cases of the train list, drawn with the fixed seed 0" in report
    assert "Scored on `val.txt`: 2 of 86 cases (a subset: --max-test)" in report
    assert "**last** one" not in report and "No validation list: the scored model is the last one." in report
    assert "Paper, Table 1" in report and "71.20" in report
    for name in ("dsc_vs_labels.png", "training_curves.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert not list(out.rglob("*.tmp")), "atomic writes left temporary files"


def test_reports_hold_no_project_words(busi_run, hippocampus_run):
    for out, _ in (busi_run, hippocampus_run):
        text = (out / "report.md").read_text()
        assert not PROJECT_WORDS.search(text), PROJECT_WORDS.search(text).group(0)


def test_hippocampus_is_scored_in_3d_per_class(hippocampus_run, shared_data_dir):
    out, _ = hippocampus_run
    run = json.loads((out / "results" / "run.json").read_text())
    assert run["dataset"] == "hippocampus" and run["class_names"] == ["anterior", "posterior"]
    train = (shared_data_dir / "hippocampus" / "train.txt").read_text().split()
    labeled = (shared_data_dir / "hippocampus" / "labeled_1.txt").read_text().split()
    unlabeled = run["labeled"]["labeled_1"]["unlabeled_names"]
    assert len(unlabeled) == 1 and set(unlabeled) <= set(train) - set(labeled)
    d = json.loads((out / "results" / "cpcsam__labeled_1__seed0.json").read_text())
    assert d["axis"] == 0  # isotropic, two classes: the engine slices along x, where both show together
    rows = d["inference"]["unprompted"]["rows"]
    assert sorted({r["class"] for r in rows}) == ["anterior", "posterior"] and len(rows) == 2
    assert all(r["gt_voxels"] > 100 for r in rows)  # whole volumes, not one slice
    assert set(d["inference"]["unprompted"]["metrics"]["per_class"]) == {"anterior", "posterior"}
    zs = json.loads((out / "results" / "zeroshot.json").read_text())["variants"]["zeroshot_box"]["metrics"]
    assert zs["per_class"]["anterior"]["dice"] > 30 and zs["per_class"]["posterior"]["dice"] > 30
    report = (out / "report.md").read_text()
    assert "| DSC anterior | DSC posterior |" in report and "HD95 (mm)" in report
    assert "1 of the 169 other cases of the train list" in report and "scored in 3D" in report
    assert "Slicing axis of the trained models: x " in report


def test_rerun_keeps_every_unit(hippocampus_run, shared_data_dir, repo_root):
    out, _ = hippocampus_run
    results = out / "results"
    before = {p.name: p.stat().st_mtime_ns for p in results.glob("*.json") if p.name != "run.json"}
    r = _bench(repo_root, "--data", shared_data_dir / "hippocampus", "--output", out, *HIPPOCAMPUS, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stderr.count(": kept ") >= 3  # store, zeroshot, the unit
    assert {p.name: p.stat().st_mtime_ns for p in results.glob("*.json") if p.name != "run.json"} == before


def test_rerun_on_more_test_cases_scores_the_kept_model_again(tmp_path, busi_dir, repo_root):
    args = ["--data", busi_dir, "--output", tmp_path / "out", "--methods", "supervised", "zeroshot", "--seeds", "0",
            *TINY]
    first = _bench(repo_root, *args, "--max-test", "1", timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    result = tmp_path / "out" / "results" / "supervised__labeled_10__seed0.json"
    model = json.loads(result.read_text())["model"]
    trained = os.stat(model).st_mtime_ns
    r = _bench(repo_root, *args, "--max-test", "3", timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "kept the trained model, scoring unprompted on 3 cases of val.txt" in r.stderr
    assert os.stat(model).st_mtime_ns == trained  # scored again, not trained again
    d = json.loads(result.read_text())
    assert d["test_cases"] == 3 and d["inference"]["unprompted"]["metrics"]["cases"] == 3
    assert len(d["inference"]["unprompted"]["rows"]) == 3
    zs = json.loads((tmp_path / "out" / "results" / "zeroshot.json").read_text())
    assert zs["test_cases"] == 3 and zs["variants"]["zeroshot_box"]["metrics"]["cases"] == 3
    assert "Scored on `val.txt`: 3 of 86 cases" in (tmp_path / "out" / "report.md").read_text()


@pytest.mark.parametrize("extra, message", [
    (["--data", "/nonexistent/folder"], "is not a folder"),
    (["--checkpoint", "best"], "--checkpoint best needs --val-list"),
    (["--labeled-list", "val.txt"], "are not in train.txt"),
])
def test_bad_input_exits_2(tmp_path, busi_dir, repo_root, extra, message):
    args = ["--data", busi_dir] if "--data" not in extra else []
    r = _bench(repo_root, *args, "--output", tmp_path / "o", "--methods", "cpcsam", *extra, timeout=120)
    assert r.returncode == 2 and message in r.stderr, r.stderr[-2000:]


def test_speed_only_times_both_training_structures_and_inference(tmp_path, busi_dir, repo_root):
    out = tmp_path / "out"
    r = _bench(repo_root, "--data", busi_dir, "--output", out, "--speed-only", "--batch-size", "2", "--max-test", "2",
               "--unlabeled-limit", "2", "--speed-repeats", "1", "--speed-warmup", "0", "--threads", "1",
               "--explore", "cached_embeddings")
    assert r.returncode == 0, r.stderr[-3000:]
    speed = json.loads((out / "results" / "speed.json").read_text())
    for kind in ("engine", "official"):
        assert "error" not in speed[kind], speed[kind]
        assert _finite(speed[kind]["seconds_per_step"], speed[kind]["peak_rss_mb"]) and speed[kind]["batch_size"] == 2
        assert speed[kind]["peak_rss_mb"] > 100
    assert _finite(speed["ratio_official_over_engine"]) and speed["ratio_official_over_engine"] > 0
    assert speed["inference"]["seconds_per_slice"] > 0 and speed["inference"]["slices"] == 2
    cached = json.loads((out / "results" / "exploration.json").read_text())["rows"]["cached_embeddings"]
    assert "error" not in cached, cached
    assert _finite(cached["seconds_per_step"], cached["encode_seconds_per_image"])
    report = (out / "report.md").read_text()
    assert "## Speed: engine step vs the official code's structure" in report
    assert "decoder-only step on cached embeddings" in report and not PROJECT_WORDS.search(report)


def test_report_from_hand_made_results(tmp_path):
    """The report's seed spread, paired line and configuration check, computed from hand-made unit files."""
    from benchmarks.common import write_json
    from benchmarks.report import build_report
    from benchmarks.runs import summary

    def unit(method, seed, dice_a, dice_b, lr=1e-3):
        rows = [{"case": case, "class": "lesion", "dice": d, "jaccard": d / 2, "hd95": 10.0, "asd": 3.0,
                 "pred_voxels": 50, "gt_voxels": 60} for case, d in (("a", dice_a), ("b", dice_b))]
        return {"method": method, "title": {"supervised": "Labeled-only", "cpcsam": "CPC-SAM"}[method], "seed": seed,
                "labeled_key": "labeled_10", "labeled_list": "labeled_10.txt", "num_labeled": 10, "num_train": 431,
                "num_unlabeled": 0 if method == "supervised" else 421, "status": "completed", "iterations_done": 400,
                "train_seconds": 600.0, "config": {"method": method, "seed": seed, "lr": lr, "iterations": 400},
                "history": {"iteration": [1, 2], "loss": [2.0, 1.0]},
                "inference": {"unprompted": {"metrics": summary(rows), "rows": rows}}}

    results = tmp_path / "results"
    write_json(results / "run.json", {"dataset": "busi", "class_names": ["lesion"], "distance_unit": "px",
                                      "seeds": [0, 1], "inference": ["unprompted"], "test_list": "val.txt",
                                      "test_cases": 2, "test_total": 2})
    # labeled-only: case a 0.50/0.60, b 0.40/0.40 -> per-seed means 45, 50; CPC-SAM: a 0.70/0.80, b 0.40/0.30
    for method, seed, a, b in (("supervised", 0, 0.5, 0.4), ("supervised", 1, 0.6, 0.4),
                               ("cpcsam", 0, 0.7, 0.4), ("cpcsam", 1, 0.8, 0.3)):
        write_json(results / f"{method}__labeled_10__seed{seed}.json", unit(method, seed, a, b))
    report = build_report(tmp_path)
    assert "| Labeled-only | 10/431 | 0, 1 | 47.50 ± 3.54 |" in report  # per-seed means 45 and 50
    assert "| CPC-SAM | 10/431 | 0, 1 | 55.00 ± 0.00 |" in report
    # per case over seeds: a 75 - 55 = +20, b 35 - 40 = -5 -> mean 7.5; two cases: interval [-5, 20]
    assert "| CPC-SAM - labeled-only | 2 | 7.50 | [-5.00, 20.00] | 1 / 1 / 0 | 0, 1 vs 0, 1 |" in report
    assert "the same for every method and seed" in report and not PROJECT_WORDS.search(report)
    write_json(results / "cpcsam__labeled_10__seed1.json", unit("cpcsam", 1, 0.8, 0.3, lr=5e-4))
    assert "**The runs differ in lr**" in build_report(tmp_path)
