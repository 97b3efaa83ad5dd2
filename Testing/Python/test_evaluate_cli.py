"""`cpcsam evaluate` on real label files: unique case names, no silent overwrite, its own wording,
plain numbers, and no torch import on its path."""

from __future__ import annotations

import argparse
import csv
import shutil
import subprocess
import sys
from pathlib import Path

import SimpleITK as sitk

from CPCSAMLib import cli


def _two_label_pngs(busi_dir: Path, root: Path) -> tuple[list[str], list[str]]:
    """Real BUSI masks saved as p1/label.png and p2/label.png (predictions: the other mask in
    p2, so the two cases differ)."""
    for sub, gt_name, pred_name in (("p1", "benign_006.png", "benign_006.png"),
                                    ("p2", "malignant_056.png", "malignant_056.png")):
        for kind, name in (("gt", gt_name), ("pred", pred_name)):
            (root / kind / sub).mkdir(parents=True, exist_ok=True)
            shutil.copy(busi_dir / "masks" / name, root / kind / sub / "label.png")
    return ([str(root / "pred" / s / "label.png") for s in ("p1", "p2")],
            [str(root / "gt" / s / "label.png") for s in ("p1", "p2")])


def test_evaluate_in_a_real_process(busi_dir, tmp_path):
    preds, gts = _two_label_pngs(busi_dir, tmp_path)
    out = tmp_path / "report"
    argv = [sys.executable, "-m", "CPCSAMLib", "evaluate", "--pred", *preds, "--gt", *gts,
            "--output", str(out)]
    first = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    assert "# Segmentation metrics (2 cases)" in first.stdout
    with open(out / "metrics.csv", newline="") as fh:
        assert [r["case"] for r in csv.DictReader(fh)] == ["p1/label", "p2/label"]
    assert (out / "metrics.csv").stat().st_mode & 0o777 == 0o644  # the test runner's umask 022
    before = (out / "metrics.md").read_bytes()
    again = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2
    assert again.stderr.startswith("cpcsam: error: Metrics already exist:")
    assert "--overwrite" in again.stderr and "Traceback" not in again.stderr
    assert (out / "metrics.md").read_bytes() == before
    forced = subprocess.run(argv + ["--overwrite"], capture_output=True, text=True, timeout=300)
    assert forced.returncode == 0, forced.stderr


def test_evaluate_errors_in_its_own_words(busi_dir, nrrd3d_dir, tmp_path, capsys):
    preds, gts = _two_label_pngs(busi_dir, tmp_path)
    out = str(tmp_path / "report")

    def run(*args: str) -> str:
        assert cli.main(["evaluate", *args]) == 2
        return capsys.readouterr().err

    err = run("--pred", *preds, "--gt", gts[0], "--output", out)
    assert "evaluate: 2 prediction file(s) (--pred) but 1 reference file(s) (--gt)" in err
    err = run("--pred", preds[0], "--gt", gts[0], "--output", out, "--classes", "lesion:255")
    assert "--classes: classes[0] must look like NAME=VALUE" in err
    err = run("--pred", preds[0], "--gt", gts[0], "--output", out, "--classes", "a=255", "b=255")
    assert "class values must be unique; 255 is given twice" in err
    err = run("--pred", preds[0], "--gt", gts[0], "--output", out, "--classes", "a=1",
              "--model", "m.pt")
    assert "--classes or with --model, not both" in err
    err = run("--pred", *preds, "--gt", gts[0], gts[0], "--output", out)
    assert "label.png is given twice (pairs 1 and 2)" in err
    label = nrrd3d_dir / "prostate_phantom_subvolume-label.nrrd"
    spaced = sitk.ReadImage(str(label))
    spaced.SetSpacing((500.0, 500.0, 500.0))
    sitk.WriteImage(spaced, str(tmp_path / "spaced.nrrd"))
    err = run("--pred", str(tmp_path / "spaced.nrrd"), "--gt", str(label), "--output", out,
              "--classes", "a=1", "b=7", "c=8", "d=9")
    assert "Prediction file" in err and "spacing (500.0, 500.0, 500.0) != reference spacing" in err
    assert "np.float64" not in err and "manifest" not in err and "its image" not in err
    assert not Path(out).exists()


def test_evaluate_command_does_not_import_torch(busi_dir, tmp_path):
    """The evaluate command (classes from --classes) runs without importing torch."""
    preds, gts = _two_label_pngs(busi_dir, tmp_path)
    args = argparse.Namespace(pred=preds, gt=gts, output=str(tmp_path / "r"), classes=["lesion=255"],
                              model=None, overwrite=False)
    code = ("import sys, argparse; from CPCSAMLib.cli import _cmd_evaluate; "
            f"rc = _cmd_evaluate(argparse.Namespace(**{vars(args)!r})); "
            "print('torch imported:', 'torch' in sys.modules, 'rc:', rc)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("torch imported: False rc: 0")
    assert (tmp_path / "r" / "metrics.csv").is_file()
