"""Tests of CPCSAMLib.dataset: manifests, split lists, folder convention, slices, augmentation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from CPCSAMLib import dataset as ds
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


def test_train_slices_dataset(busi_dir):
    s = _busi_slice(busi_dir, size=48)
    d = ds.TrainSlices(s, augment=True)
    assert isinstance(d, torch.utils.data.Dataset) and len(d) == 1
    item = d[0]
    assert item["image"].shape == (1, 48, 48) and item["image"].dtype == torch.float32
    assert item["label"].shape == (48, 48) and item["label"].dtype == torch.int64
    torch.manual_seed(3)
    first = ds.TrainSlices(s, augment=True)[0]["image"]
    torch.manual_seed(3)
    second = ds.TrainSlices(s, augment=True)[0]["image"]
    assert torch.equal(first, second)
    plain = ds.TrainSlices(ds.SliceSet(s.images, None, s.source))[0]
    assert "label" not in plain and torch.equal(plain["image"][0], torch.from_numpy(s.images[0]))
