"""Tests of CPCSAMLib.dataset: manifests, split lists, folder convention, slices, augmentation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from CPCSAMLib import dataset as ds
from CPCSAMLib import io
from CPCSAMLib.errors import InputError

LESION = [ds.ClassInfo("lesion", 255)]


def _write_manifest(folder: Path, data: dict, name: str = "manifest.json") -> Path:
    path = folder / name
    path.write_text(json.dumps(data))
    return path


def _busi_pair_copy(busi_dir: Path, dst: Path, name: str) -> None:
    (dst / "images").mkdir(parents=True, exist_ok=True)
    (dst / "masks").mkdir(parents=True, exist_ok=True)
    shutil.copy(busi_dir / "images" / name, dst / "images" / name)
    shutil.copy(busi_dir / "masks" / name, dst / "masks" / name)


# ------------------------------------------------------------------------------ manifests


def test_manifest_relative_paths_resolved(busi_dir, tmp_path):
    for n in ("benign_006.png", "benign_162.png"):
        _busi_pair_copy(busi_dir, tmp_path / "data", n)
    path = _write_manifest(tmp_path / "data", {
        "classes": [{"name": "lesion", "value": 255}],
        "labeled": [{"image": "images/benign_006.png", "label": "masks/benign_006.png"}],
        "unlabeled": ["images/benign_162.png"],
        "validation": [{"image": "images/benign_162.png", "label": "masks/benign_162.png"}],
        "axis": None})
    m = ds.load_manifest(path)
    root = (tmp_path / "data").resolve()
    assert m.root == root
    assert m.labeled == [(root / "images/benign_006.png", root / "masks/benign_006.png")]
    assert m.unlabeled == [root / "images/benign_162.png"]
    assert m.classes == LESION and m.axis is None and m.label_values == [255]


def test_manifest_absolute_paths_and_save_round_trip(busi_dir, tmp_path):
    img, lab = busi_dir / "images" / "benign_006.png", busi_dir / "masks" / "benign_006.png"
    path = _write_manifest(tmp_path, {"classes": [{"name": "lesion", "value": 255}],
                                      "labeled": [{"image": str(img), "label": str(lab)}],
                                      "axis": 2})
    m = ds.load_manifest(path)
    assert m.labeled == [(img, lab)] and m.unlabeled == [] and m.validation == [] and m.axis == 2
    out = tmp_path / "elsewhere" / "saved.json"
    ds.save_manifest(m, out)
    again = ds.load_manifest(out)
    assert [(a.resolve(), b.resolve()) for a, b in again.labeled] == [(img.resolve(), lab.resolve())]
    assert again.axis == 2 and again.classes == m.classes
    assert sorted(p.name for p in out.parent.iterdir()) == ["saved.json"]


def test_manifest_yaml(busi_dir, tmp_path):
    pytest.importorskip("yaml")
    _busi_pair_copy(busi_dir, tmp_path, "benign_006.png")
    (tmp_path / "m.yaml").write_text(
        "classes:\n  - {name: lesion, value: 255}\n"
        "labeled:\n  - {image: images/benign_006.png, label: masks/benign_006.png}\n")
    assert len(ds.load_manifest(tmp_path / "m.yaml").labeled) == 1


def test_manifest_missing_file_named(busi_dir, tmp_path):
    _busi_pair_copy(busi_dir, tmp_path, "benign_006.png")
    path = _write_manifest(tmp_path, {
        "classes": [{"name": "lesion", "value": 255}],
        "labeled": [{"image": "images/benign_006.png", "label": "masks/benign_006.png"}],
        "unlabeled": ["images/ghost_999.png"]})
    with pytest.raises(InputError) as info:
        ds.load_manifest(path)
    assert "ghost_999.png" in str(info.value) and "manifest.json" in str(info.value)


@pytest.mark.parametrize("change, match", [
    ({"labeled": []}, "at least one labeled"),
    ({"classes": [{"name": "a", "value": 0}]}, "background"),
    ({"classes": [{"name": "a", "value": 1}, {"name": "b", "value": 1}]}, "unique"),
    ({"classes": [{"name": "a", "value": "1"}]}, "integer"),
    ({"classes": [{"name": "a", "value": 1, "colour": [1, 0, 0]}]}, "exactly|keys"),
    ({"classes": [{"name": "a", "value": 1}, {"name": "a", "value": 2}]}, "'a' is given twice"),
    ({"labeled": [{"image": "images/benign_006.png", "label": "masks/benign_006.png"}] * 3},
     "benign_006.png is listed 3 times in the labeled list"),
    ({"unlabeled": ["images/benign_006.png", "images/benign_006.png"]},
     "benign_006.png is listed 2 times in the unlabeled list"),
    ({"axis": 5}, "axis"),
    ({"unlabelled": []}, "unknown key"),
])
def test_manifest_validation_errors(busi_dir, tmp_path, change, match):
    _busi_pair_copy(busi_dir, tmp_path, "benign_006.png")
    data = {"classes": [{"name": "lesion", "value": 255}],
            "labeled": [{"image": "images/benign_006.png", "label": "masks/benign_006.png"}]}
    data.update(change)
    path = _write_manifest(tmp_path, data)
    with pytest.raises(InputError, match=match) as info:
        ds.load_manifest(path)
    assert "manifest.json" in str(info.value)


def test_manifest_bad_json(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"classes": [}')
    with pytest.raises(InputError, match="broken.json.*not valid JSON"):
        ds.load_manifest(path)


def test_split_lists_busi_counts(busi_dir):
    m = ds.manifest_from_split_lists(busi_dir, "train.txt", "labeled_10.txt", "val.txt")
    assert (len(m.labeled), len(m.unlabeled), len(m.validation)) == (10, 421, 86)
    assert m.classes == LESION
    labeled_names = {p.name for p, _ in m.labeled}
    assert labeled_names.isdisjoint({p.name for p in m.unlabeled})
    assert all(img.parent.name == "images" and lab.parent.name == "masks" for img, lab in m.labeled)
    m20 = ds.manifest_from_split_lists(busi_dir, "train.txt", "labeled_20.txt")
    assert (len(m20.labeled), len(m20.unlabeled), len(m20.validation)) == (20, 411, 0)


def test_split_lists_labeled_not_in_train(busi_dir):
    with pytest.raises(InputError, match="not in the train list"):
        ds.manifest_from_split_lists(busi_dir, ["benign_006.png"], ["benign_003.png"])


def test_manifest_from_folder(busi_dir, tmp_path):
    root = tmp_path / "set"
    for sub in ("labeled/images", "labeled/labels", "unlabeled", "validation/images",
                "validation/labels"):
        (root / sub).mkdir(parents=True)
    for n in ("benign_006.png", "malignant_056.png"):
        shutil.copy(busi_dir / "images" / n, root / "labeled/images" / n)
        shutil.copy(busi_dir / "masks" / n, root / "labeled/labels" / n)
    shutil.copy(busi_dir / "images" / "benign_001.png", root / "unlabeled")
    shutil.copy(busi_dir / "images" / "benign_003.png", root / "validation/images")
    shutil.copy(busi_dir / "masks" / "benign_003.png", root / "validation/labels")
    m = ds.manifest_from_folder(root)
    assert [p.name for p, _ in m.labeled] == ["benign_006.png", "malignant_056.png"]
    assert [p.name for p in m.unlabeled] == ["benign_001.png"]
    assert len(m.validation) == 1
    assert m.classes == [ds.ClassInfo("label_255", 255)]  # inferred without classes.json
    (root / "classes.json").write_text(json.dumps([{"name": "lesion", "value": 255}]))
    assert ds.manifest_from_folder(root).classes == LESION
    (root / "labeled/labels/benign_006.png").unlink()
    with pytest.raises(InputError, match="benign_006.png"):
        ds.manifest_from_folder(root)


# ------------------------------------------------------------------------------ slices


def test_build_slices_busi(busi_dir):
    pairs = [(busi_dir / "images" / n, busi_dir / "masks" / n)
             for n in ("benign_006.png", "malignant_056.png")]
    s = ds.build_slices(pairs, LESION, 64, None)
    assert s.images.shape == (2, 64, 64) and s.images.dtype == np.float32
    assert s.labels.shape == (2, 64, 64) and s.labels.dtype == np.uint8
    assert 0.0 <= s.images.min() and s.images.max() <= 1.0
    assert set(np.unique(s.labels)) == {0, 1}
    assert s.source == [(str(pairs[0][0]), 0), (str(pairs[1][0]), 0)]
    u = ds.build_slices([busi_dir / "images" / "benign_001.png"], LESION, 32, None)
    assert u.images.shape == (1, 32, 32) and u.labels is None and len(u) == 1


def test_build_slices_3d_multiclass(nrrd3d_dir):
    classes = [ds.ClassInfo(f"c{v}", v) for v in (1, 7, 8, 9)]
    pair = (nrrd3d_dir / "prostate_phantom_subvolume.nrrd",
            nrrd3d_dir / "prostate_phantom_subvolume-label.nrrd")
    s = ds.build_slices([pair], classes, 32, None)
    assert s.images.shape == (13, 32, 32)  # 13 slices along z (3.0 mm)
    assert set(np.unique(s.labels)) <= {0, 1, 2, 3, 4} and s.labels.max() > 1
    assert [k for _, k in s.source] == list(range(13))
    kept = ds.build_slices([pair], classes, 32, None, skip_empty=True)
    assert 0 < len(kept) <= 13 and all(lab.any() for lab in kept.labels)
    # per-volume normalisation: the whole volume spans [0, 1]
    assert s.images.max() <= 1.0 and s.images.min() >= 0.0
    x = ds.build_slices([pair], classes, 16, 0)
    assert x.images.shape == (82, 16, 16)


def test_build_slices_no_foreground(busi_dir, tmp_path):
    name = "benign_006.png"
    empty = np.zeros_like(sitk.GetArrayFromImage(sitk.ReadImage(str(busi_dir / "masks" / name))))
    sitk.WriteImage(sitk.GetImageFromArray(empty), str(tmp_path / "empty_mask.png"))
    with pytest.raises(InputError, match="no foreground") as info:
        ds.build_slices([(busi_dir / "images" / name, tmp_path / "empty_mask.png")], LESION, 32, None)
    assert "empty_mask.png" in str(info.value)


def test_build_slices_bad_label_names_file(busi_dir):
    with pytest.raises(InputError) as info:
        ds.build_slices([(busi_dir / "images" / "benign_006.png",
                          busi_dir / "masks" / "benign_162.png")], LESION, 32, None)
    assert "benign_162.png" in str(info.value)


# ------------------------------------------------------------------------------ augmentation


def _busi_slice(busi_dir, name="malignant_056.png", size=96):
    return ds.build_slices([(busi_dir / "images" / name, busi_dir / "masks" / name)],
                           LESION, size, None)


def test_augment_keeps_label_aligned(busi_dir):
    s = _busi_slice(busi_dir)
    label = s.labels[0]
    image = label.astype(np.float32)  # image equal to the label
    rng = np.random.default_rng(0)
    for _ in range(10):
        img, lab = ds.augment(image, label, rng)
        assert img.shape == image.shape and lab.dtype == label.dtype
        assert set(np.unique(lab)) <= set(np.unique(label))
        agreement = ((img > 0.5) == (lab == 1)).mean()
        assert agreement > 0.99


def test_augment_flips_exact(busi_dir):
    s = _busi_slice(busi_dir, size=64)
    image, label = s.images[0], s.labels[0]

    class Fixed:  # a Generator stand-in: angle 0, chosen flips
        def __init__(self, h, v):
            self.draws = [0.0 if h else 0.9, 0.0 if v else 0.9]

        def uniform(self, lo, hi):
            return 0.0

        def random(self):
            return self.draws.pop(0)

    img, lab = ds.augment(image, label, Fixed(True, False))
    np.testing.assert_array_equal(img, image[:, ::-1])
    np.testing.assert_array_equal(lab, label[:, ::-1])
    img, lab = ds.augment(image, label, Fixed(False, True))
    np.testing.assert_array_equal(img, image[::-1])
    np.testing.assert_array_equal(lab, label[::-1])
    img, lab = ds.augment(image, label, Fixed(True, True))
    np.testing.assert_array_equal(lab, label[::-1, ::-1])
    img, none = ds.augment(image, None, Fixed(False, False))
    assert none is None
    np.testing.assert_allclose(img, image, atol=1e-6)


def test_augment_rotation_range_and_determinism(busi_dir):
    s = _busi_slice(busi_dir, size=64)
    a = ds.augment(s.images[0], s.labels[0], np.random.default_rng(7))
    b = ds.augment(s.images[0], s.labels[0], np.random.default_rng(7))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    angles = [np.random.default_rng(i).uniform(-20, 20) for i in range(200)]
    assert min(angles) >= -20 and max(angles) <= 20


# ------------------------------------------------------------------------------ class lists


def test_parse_classes_shapes_and_round_trip():
    classes = ds.parse_classes([
        {"name": "lesion", "value": 255, "color": [255, 0, 0]},
        "cyst = 7",
        {"name": "liver", "value": 3, "color": [0.2, 0.5, 1.0],
         "terminology": "SCT^10200004^Liver"},
        ds.ClassInfo("fluid", 9),
    ], "test")
    assert classes == [ds.ClassInfo("lesion", 255, (1.0, 0.0, 0.0)), ds.ClassInfo("cyst", 7),
                       ds.ClassInfo("liver", 3, (0.2, 0.5, 1.0), "SCT^10200004^Liver"),
                       ds.ClassInfo("fluid", 9)]
    as_json = ds.classes_to_json(classes)
    assert as_json[1] == {"name": "cyst", "value": 7}
    assert as_json[2]["terminology"] == "SCT^10200004^Liver"
    assert ds.parse_classes(json.loads(json.dumps(as_json)), "again") == classes


@pytest.mark.parametrize("raw, match", [
    ([], "at least one class"),
    ("lesion=255", "must be a non-empty list"),
    (["lesion"], "NAME=VALUE"),
    (["lesion=abc"], "NAME=VALUE"),
    (["a=0"], "background"),
    (["a=1", "b=1"], "values must be unique; 1 is given twice"),
    (["a=1", "a=2"], "names must be unique; 'a' is given twice"),
    ([{"name": "a", "value": True}], "integer"),
    ([{"name": " ", "value": 1}], "non-empty string"),
    ([{"name": "a", "value": 1, "color": [1, 0]}], "color"),
    ([{"name": "a", "value": 1, "color": [300, 0, 0]}], "color"),
    ([{"name": "a", "value": 1, "terminology": ""}], "terminology"),
    ([f"c{v}={v}" for v in range(1, 257)], "at most 255"),
    (["a=4294967296"], "32 bits"),
])
def test_parse_classes_rules(raw, match):
    with pytest.raises(InputError, match=match) as info:
        ds.parse_classes(raw, "--classes")
    assert str(info.value).startswith("--classes")


def test_manifest_keeps_colour_and_terminology(busi_dir, tmp_path):
    _busi_pair_copy(busi_dir, tmp_path, "benign_006.png")
    classes = [{"name": "lesion", "value": 255, "color": [1.0, 0.5, 0.0],
                "terminology": "SCT^49755003^Morphologically altered structure"}]
    path = _write_manifest(tmp_path, {
        "classes": classes,
        "labeled": [{"image": "images/benign_006.png", "label": "masks/benign_006.png"}]})
    m = ds.load_manifest(path)
    assert m.classes[0].color == (1.0, 0.5, 0.0) and m.classes[0].terminology.startswith("SCT")
    ds.save_manifest(m, tmp_path / "saved.json")
    assert json.loads((tmp_path / "saved.json").read_text())["classes"] == classes


# ------------------------------------------------------------------------------ split lists


def test_read_split_list_file_and_names(tmp_path):
    (tmp_path / "l.txt").write_text("# header\na.png\n\n  b.png  \n", encoding="utf-8")
    assert ds.read_split_list("l.txt", tmp_path) == (["a.png", "b.png"], str(tmp_path / "l.txt"))
    assert ds.read_split_list(["x.png"]) == (["x.png"], "given list")
    with pytest.raises(InputError, match="Split list not found"):
        ds.read_split_list("none.txt", tmp_path)


def test_split_lists_refuse_repeated_names(busi_dir, tmp_path):
    for n in ("benign_006.png", "benign_162.png"):
        _busi_pair_copy(busi_dir, tmp_path, n)
    (tmp_path / "train.txt").write_text("benign_006.png\nbenign_162.png\nbenign_162.png\n")
    (tmp_path / "lab.txt").write_text("benign_006.png\n")
    with pytest.raises(InputError, match=r"train.txt lists 'benign_162.png' 2 times"):
        ds.manifest_from_split_lists(tmp_path, "train.txt", "lab.txt")
    (tmp_path / "train.txt").write_text("benign_006.png\nbenign_162.png\n")
    (tmp_path / "lab.txt").write_text("benign_006.png\nbenign_006.png\nbenign_006.png\n")
    with pytest.raises(InputError, match=r"lab.txt lists 'benign_006.png' 3 times"):
        ds.manifest_from_split_lists(tmp_path, "train.txt", "lab.txt")
    (tmp_path / "lab.txt").write_text("benign_006.png\n")
    m = ds.manifest_from_split_lists(tmp_path, "train.txt", "lab.txt")
    assert (len(m.labeled), len(m.unlabeled)) == (1, 1)


def test_dataset_module_does_not_import_torch():
    import subprocess
    import sys

    code = ("import sys, CPCSAMLib.dataset, CPCSAMLib.io, CPCSAMLib.metrics; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ------------------------------------------------------------------------------ slicing axis

TWO = [ds.ClassInfo("anterior", 1), ds.ClassInfo("posterior", 2)]


def _volume_pair(folder: Path, label: np.ndarray, spacing=(1.0, 1.0, 1.0), name="v") -> tuple:
    """A real NRRD image/label pair with ``label`` ([z, y, x]) and ``spacing`` (x, y, z)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for kind, arr in (("image", rng.random(label.shape, dtype=np.float32) + label), ("label", label.astype(np.uint8))):
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing(spacing)
        paths.append(folder / f"{name}_{kind}.nrrd")
        sitk.WriteImage(img, str(paths[-1]))
    return tuple(paths)


def _stacked_along_z_and_y() -> np.ndarray:
    """Class 1 above class 2 along z and y, both over the same x range: only x slices hold both."""
    label = np.zeros((20, 20, 20), np.uint8)
    label[5:10, 5:10, 5:15] = 1
    label[10:15, 10:15, 5:15] = 2
    return label


def test_choose_axis_takes_the_axis_whose_slices_show_all_classes(tmp_path):
    pair = _volume_pair(tmp_path, _stacked_along_z_and_y())
    assert io.default_axis(sitk.ReadImage(str(pair[0]))) == 2
    axis, reason = ds.choose_axis([pair], TWO)
    assert axis == 0 and "x 100%" in reason and "z 0%" in reason


def test_choose_axis_keeps_the_largest_spacing_when_it_is_a_rule_not_a_tie(tmp_path):
    pair = _volume_pair(tmp_path, _stacked_along_z_and_y(), spacing=(1.0, 1.0, 3.0))
    assert ds.choose_axis([pair], TWO) == (None, "anisotropic spacing: largest spacing")


def test_choose_axis_keeps_the_default_without_a_clear_gain(tmp_path):
    side_by_side = np.zeros((20, 20, 20), np.uint8)
    side_by_side[5:15, 5:15, 5:10] = 1  # z and y slices hold both classes, as many as x slices could
    side_by_side[5:15, 5:15, 10:15] = 2
    axis, reason = ds.choose_axis([_volume_pair(tmp_path, side_by_side)], TWO)
    assert axis is None and "largest spacing kept" in reason


def test_choose_axis_needs_two_classes(tmp_path):
    label = _stacked_along_z_and_y()
    assert ds.choose_axis([_volume_pair(tmp_path, label)], [ds.ClassInfo("a", 1), ds.ClassInfo("b", 2)])[0] == 0
    one_present = np.where(label == 2, 0, label)
    assert ds.choose_axis([_volume_pair(tmp_path, one_present, name="one")], TWO)[0] is None
    assert ds.choose_axis([_volume_pair(tmp_path, (label > 0).astype(np.uint8), name="fg")],
                          [ds.ClassInfo("fg", 1)]) == (None, "one class: largest spacing")


def test_choose_axis_on_real_volumes(shared_data_dir, nrrd3d_dir):
    hip = shared_data_dir / "hippocampus"
    names = (hip / "labeled_3.txt").read_text().split()
    axis, reason = ds.choose_axis([(hip / "images" / n, hip / "labels" / n) for n in names], TWO)
    assert axis == 0, reason  # MSD Hippocampus: 1 mm isotropic; x slices show both classes
    prostate = [(nrrd3d_dir / "prostate_phantom_subvolume.nrrd", nrrd3d_dir / "prostate_phantom_subvolume-label.nrrd")]
    assert ds.choose_axis(prostate, [ds.ClassInfo(str(v), v) for v in (1, 7, 8, 9)])[0] is None  # 0.5 x 0.5 x 3 mm
    busi = sorted((shared_data_dir / "busi" / "images").glob("*.png"))[:1]
    two_values = [ds.ClassInfo("lesion", 255), ds.ClassInfo("other", 128)]
    assert ds.choose_axis([(busi[0], shared_data_dir / "busi" / "masks" / busi[0].name)], two_values) == (None, "2D images")
