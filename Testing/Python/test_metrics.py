"""Tests of CPCSAMLib.metrics against hand-computed cases and real label files."""

from __future__ import annotations

import csv
import math
import os

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage
from scipy.spatial.distance import cdist

from CPCSAMLib import metrics as mt
from CPCSAMLib.dataset import ClassInfo, parse_classes
from CPCSAMLib.errors import InputError

LESION = [ClassInfo("lesion", 255)]


def square(top, left, size=10, shape=(20, 20)):
    m = np.zeros(shape, bool)
    m[top:top + size, left:left + size] = True
    return m


def shifted_boxes_3d():
    """Boxes of 4 x 6 x 6 voxels ([z, y, x]) one slice apart along z."""
    a = np.zeros((9, 10, 10), bool)
    b = np.zeros((9, 10, 10), bool)
    a[2:6, 2:8, 2:8] = True
    b[3:7, 2:8, 2:8] = True
    return a, b


def test_overlapping_squares_dice_jaccard():
    a, b = square(0, 0), square(5, 5)  # overlap 5 x 5 = 25
    assert mt.dice(a, b) == pytest.approx(2 * 25 / 200)
    assert mt.jaccard(a, b) == pytest.approx(25 / 175)
    assert mt.dice(a, a) == 1.0 and mt.jaccard(a, a) == 1.0


def test_one_pixel_shift_surface_distances():
    # 10 x 10 square shifted by one column: each 36-pixel border has 18 pixels at distance 0 and
    # 18 at distance 1 from the other border.
    a, b = square(5, 5), square(5, 6)
    assert mt.dice(a, b) == pytest.approx(0.9)
    assert mt.jaccard(a, b) == pytest.approx(90 / 110)
    assert mt.hd95(a, b) == pytest.approx(1.0)
    assert mt.asd(a, b) == pytest.approx(0.5)
    d_ab, d_ba = mt.surface_distances(a, b)
    assert len(d_ab) == len(d_ba) == 36 and d_ab.sum() == pytest.approx(18)


def test_anisotropic_spacing_2d():
    a, b = square(5, 5), square(5, 6)
    # columns 2 mm apart: the left/right borders are 2 mm off, except the two pixels next to the
    # top/bottom rows (1 mm away vertically): (10*2 + 2*1 + 6*2) / 36 per direction
    assert mt.asd(a, b, spacing=(1.0, 2.0)) == pytest.approx(34 / 36)
    assert mt.hd95(a, b, spacing=(1.0, 2.0)) == pytest.approx(2.0)
    # rows 2 mm apart do not matter for a shift along columns
    assert mt.asd(a, b, spacing=(2.0, 1.0)) == pytest.approx(0.5)
    assert mt.hd95(a, b, spacing=2.0) == pytest.approx(2.0)


def test_anisotropic_spacing_3d_hand_values():
    a, b = shifted_boxes_3d()
    spacing = (3.0, 0.5, 0.5)  # [z, y, x]
    # A's surface (112 voxels): bottom face 36 at 3.0; side rings at z=3,4: 40 at 0; top face:
    # ring 20 at 0, next 12 at 0.5, centre 4 at 1.0. B->A is the mirror image.
    assert mt.asd(a, b, spacing) == pytest.approx((36 * 3.0 + 12 * 0.5 + 4 * 1.0) / 112)
    assert mt.hd95(a, b, spacing) == pytest.approx(3.0)
    assert mt.dice(a, b) == pytest.approx(0.75)
    assert mt.jaccard(a, b) == pytest.approx(0.6)


def _reference(p, g, spacing):
    """Brute force: full-connectivity surfaces, all pairwise distances."""
    st = ndimage.generate_binary_structure(p.ndim, p.ndim)
    sp = np.argwhere(p & ~ndimage.binary_erosion(p, st)) * spacing
    sg = np.argwhere(g & ~ndimage.binary_erosion(g, st)) * spacing
    d = cdist(sp, sg)
    d_pg, d_gp = d.min(axis=1), d.min(axis=0)
    return np.percentile(np.concatenate([d_pg, d_gp]), 95), (d_pg.mean() + d_gp.mean()) / 2


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_against_brute_force(seed):
    rng = np.random.default_rng(seed)
    p = ndimage.binary_opening(rng.random((40, 50)) > 0.6)
    g = ndimage.binary_dilation(p, iterations=2) ^ (rng.random((40, 50)) > 0.97)
    spacing = np.array([0.7, 1.3])
    hd, asd = _reference(p, g, spacing)
    assert mt.hd95(p, g, spacing) == pytest.approx(hd)
    assert mt.asd(p, g, spacing) == pytest.approx(asd)


def test_asd_is_mean_of_directed_means_not_pooled_mean():
    big = square(2, 2, size=12)
    small = square(6, 6, size=4)
    d_pg, d_gp = mt.surface_distances(big, small)
    assert len(d_pg) != len(d_gp)
    assert mt.asd(big, small) == pytest.approx((d_pg.mean() + d_gp.mean()) / 2)
    assert mt.asd(big, small) != pytest.approx(np.concatenate([d_pg, d_gp]).mean())


def test_surfaces_at_array_border():
    a = np.ones((6, 6), bool)
    b = np.zeros((6, 6), bool)
    b[:, :5] = True
    assert mt.hd95(a, b) == pytest.approx(1.0)
    assert mt.hd95(a, a) == 0.0


def test_empty_rules():
    empty, full = np.zeros((8, 8), bool), square(2, 2, 4, (8, 8))
    assert (mt.dice(empty, empty), mt.jaccard(empty, empty)) == (1.0, 1.0)
    assert (mt.hd95(empty, empty), mt.asd(empty, empty)) == (0.0, 0.0)
    for p, g in ((empty, full), (full, empty)):
        assert mt.dice(p, g) == 0.0 and mt.jaccard(p, g) == 0.0
        assert math.isnan(mt.hd95(p, g)) and math.isnan(mt.asd(p, g))


def test_shape_and_spacing_errors():
    with pytest.raises(InputError):
        mt.dice(np.zeros((3, 3)), np.zeros((3, 4)))
    with pytest.raises(InputError):
        mt.hd95(square(1, 1), square(2, 2), spacing=(1.0, 1.0, 1.0))


def test_case_metrics_summary_and_reports(tmp_path):
    gt = np.zeros((20, 20), np.uint8)
    gt[5:15, 5:15] = 1
    gt[0:3, 0:3] = 2
    pred_a = np.zeros_like(gt)
    pred_a[5:15, 6:16] = 1  # class 2 missed -> NaN distances
    pred_b = gt.copy()
    rows = mt.case_metrics(pred_a, gt, ["lesion", "cyst"], None, "a")
    rows += mt.case_metrics(pred_b, gt, ["lesion", "cyst"], (1.0, 1.0), "b")
    assert [(r["case"], r["class"]) for r in rows] == [("a", "lesion"), ("a", "cyst"),
                                                        ("b", "lesion"), ("b", "cyst")]
    assert rows[0]["dice"] == pytest.approx(0.9) and rows[0]["hd95"] == pytest.approx(1.0)
    assert rows[1]["dice"] == 0.0 and math.isnan(rows[1]["hd95"])
    summary = mt.summarize(rows)
    assert summary["num_cases"] == 2
    lesion = summary["per_class"]["lesion"]
    assert lesion["dice"]["mean"] == pytest.approx(0.95)
    assert lesion["dice"]["std"] == pytest.approx(0.05)
    cyst = summary["per_class"]["cyst"]
    assert cyst["hd95"] == {"mean": 0.0, "std": 0.0, "n": 1, "nan": 1}
    assert cyst["dice"]["mean"] == pytest.approx(0.5)

    csv_path, md_path = tmp_path / "out" / "m.csv", tmp_path / "out" / "m.md"
    mt.write_reports(rows, csv_path, md_path)
    with open(csv_path, newline="") as fh:
        read = list(csv.DictReader(fh))
    assert len(read) == 4 and read[1]["hd95"] == "nan" and float(read[0]["dice"]) == 0.9
    md = md_path.read_text()
    assert "| lesion | 2 | 0.9500 ± 0.0500" in md
    assert "(1 NaN)" in md and "Empty-mask rule" in md and "all classes" in md
    assert sorted(os.listdir(tmp_path / "out")) == ["m.csv", "m.md"]


def test_evaluate_files_physical_spacing(tmp_path):
    a, b = shifted_boxes_3d()
    for name, arr in (("pred.nrrd", a), ("gt.nrrd", b)):
        img = sitk.GetImageFromArray(arr.astype(np.uint8) * 5)
        img.SetSpacing((0.5, 0.5, 3.0))
        img.SetOrigin((10.0, -4.0, 2.0))
        sitk.WriteImage(img, str(tmp_path / name))
    out = mt.evaluate_files([tmp_path / "pred.nrrd"], [tmp_path / "gt.nrrd"],
                            [ClassInfo("organ", 5)], tmp_path / "report")
    (row,) = out["rows"]
    assert row["case"] == "gt" and row["dice"] == pytest.approx(0.75)
    assert row["hd95"] == pytest.approx(3.0)
    assert row["asd"] == pytest.approx(118 / 112)
    assert "HD95 (mm)" in (tmp_path / "report" / "metrics.md").read_text()


def test_evaluate_files_real_labels(nrrd3d_dir, busi_dir, tmp_path):
    label = nrrd3d_dir / "prostate_phantom_subvolume-label.nrrd"
    classes = parse_classes([f"c{v}={v}" for v in (1, 7, 8, 9)], "test")
    out = mt.evaluate_files([label], [label], classes, tmp_path / "r1")
    assert [r["dice"] for r in out["rows"]] == [1.0] * 4
    assert [r["hd95"] for r in out["rows"]] == [0.0] * 4
    mask = busi_dir / "masks" / "benign_006.png"
    out = mt.evaluate_files([mask], [mask], LESION, tmp_path / "r2")
    assert out["rows"][0]["dice"] == 1.0
    assert "HD95 (px)" in (tmp_path / "r2" / "metrics.md").read_text()


def test_evaluate_files_rejects_bad_inputs(nrrd3d_dir, busi_dir, tmp_path):
    label = nrrd3d_dir / "prostate_phantom_subvolume-label.nrrd"
    with pytest.raises(InputError, match="prostate_phantom_subvolume-label.nrrd"):
        mt.evaluate_files([label], [label], [ClassInfo("c1", 1)], tmp_path / "r")
    with pytest.raises(InputError, match="benign_162.png"):
        mt.evaluate_files([busi_dir / "masks" / "benign_162.png"],
                          [busi_dir / "masks" / "benign_006.png"], LESION,
                          tmp_path / "r")
    with pytest.raises(InputError, match="as many"):
        mt.evaluate_files([label], [], [ClassInfo("c1", 1)], tmp_path / "r")
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------------------ evaluate: cases, overwrite, wording


def _two_label_pngs(busi_dir, root):
    """Two real BUSI masks, both named label.png, in p1/ and p2/ (predictions: the same masks)."""
    import shutil

    for sub, name in (("p1", "benign_006.png"), ("p2", "malignant_056.png")):
        for kind in ("gt", "pred"):
            (root / kind / sub).mkdir(parents=True, exist_ok=True)
            shutil.copy(busi_dir / "masks" / name, root / kind / sub / "label.png")
    return ([root / "pred" / s / "label.png" for s in ("p1", "p2")],
            [root / "gt" / s / "label.png" for s in ("p1", "p2")])


def test_case_names_are_unique(busi_dir, tmp_path):
    preds, gts = _two_label_pngs(busi_dir, tmp_path)
    out = mt.evaluate_files(preds, gts, LESION, tmp_path / "report")
    assert [r["case"] for r in out["rows"]] == ["p1/label", "p2/label"]
    assert out["summary"]["num_cases"] == 2
    assert "(2 cases)" in (tmp_path / "report" / "metrics.md").read_text()
    assert mt.case_names([tmp_path / "a.nii.gz", tmp_path / "x" / "b.nrrd"]) == ["a", "b"]
    with pytest.raises(InputError, match="label.png is given twice .pairs 1 and 3."):
        mt.case_names([gts[0], gts[1], gts[0]])


def test_evaluate_refuses_to_overwrite_metrics(busi_dir, tmp_path):
    preds, gts = _two_label_pngs(busi_dir, tmp_path)
    out_dir = tmp_path / "report"
    mt.evaluate_files(preds[:1], gts[:1], LESION, out_dir)
    assert "# Segmentation metrics (1 case)" in (out_dir / "metrics.md").read_text()
    before = (out_dir / "metrics.csv").read_bytes()
    with pytest.raises(InputError, match="metrics.csv.*--overwrite"):
        mt.evaluate_files(preds, gts, LESION, out_dir)
    assert (out_dir / "metrics.csv").read_bytes() == before
    mt.evaluate_files(preds, gts, LESION, out_dir, overwrite=True)
    assert (out_dir / "metrics.csv").read_bytes() != before


def test_evaluate_errors_speak_of_predictions_and_references(nrrd3d_dir, busi_dir, tmp_path):
    with pytest.raises(InputError) as info:
        mt.evaluate_files([busi_dir / "masks" / "benign_162.png"],
                          [busi_dir / "masks" / "benign_006.png"], LESION, tmp_path / "r")
    msg = str(info.value)
    assert msg.startswith("Prediction file") and "its reference has size" in msg
    assert "--pred and --gt" in msg and "image" not in msg
    label = nrrd3d_dir / "prostate_phantom_subvolume-label.nrrd"
    with pytest.raises(InputError, match="Reference file .* not in the class list.*--classes"):
        mt.evaluate_files([label], [label], [ClassInfo("c1", 1)], tmp_path / "r")
    spaced = sitk.ReadImage(str(label))
    spaced.SetSpacing((500.0, 500.0, 500.0))
    sitk.WriteImage(spaced, str(tmp_path / "spaced.nrrd"))
    classes = parse_classes([f"c{v}={v}" for v in (1, 7, 8, 9)], "test")
    with pytest.raises(InputError) as info:
        mt.evaluate_files([tmp_path / "spaced.nrrd"], [label], classes, tmp_path / "r")
    msg = str(info.value)
    assert "spacing (500.0, 500.0, 500.0) != reference spacing" in msg
    assert "np.float64" not in msg and "manifest" not in msg
    assert not (tmp_path / "r").exists()
