"""Tests of CPCSAMLib.io on real files (BUSI PNGs, 3D NRRD volumes)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from CPCSAMLib import io
from CPCSAMLib.errors import InputError


def _arr(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(image)


def _geometry_equal(a: sitk.Image, b: sitk.Image) -> None:
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), rtol=0, atol=1e-9)
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), rtol=0, atol=1e-9)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), rtol=0, atol=1e-12)


# ------------------------------------------------------------------------------ reading


def test_load_busi_png_is_float32_2d(busi_dir):
    image = io.load_image(busi_dir / "images" / "benign_006.png")
    assert image.GetDimension() == 2
    assert image.GetPixelID() == sitk.sitkFloat32
    raw = sitk.ReadImage(str(busi_dir / "images" / "benign_006.png"))
    assert image.GetSize() == raw.GetSize()
    np.testing.assert_array_equal(_arr(image), _arr(raw).astype(np.float32))


def test_load_nrrd_keeps_geometry(nrrd3d_dir):
    path = nrrd3d_dir / "brain1_image.nrrd"
    image = io.load_image(path)
    raw = sitk.ReadImage(str(path))
    assert image.GetPixelID() == sitk.sitkFloat32
    _geometry_equal(image, raw)
    np.testing.assert_array_equal(_arr(image), _arr(raw).astype(np.float32))


def test_rgb_equal_channels_takes_one(busi_dir, tmp_path):
    gray = _arr(sitk.ReadImage(str(busi_dir / "images" / "benign_006.png")))
    rgb = sitk.GetImageFromArray(np.stack([gray] * 3, axis=-1), isVector=True)
    sitk.WriteImage(rgb, str(tmp_path / "rgb.png"))
    np.testing.assert_array_equal(_arr(io.load_image(tmp_path / "rgb.png")), gray)


def test_rgb_different_channels_gives_luminance(tmp_path):
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (12, 10, 4), dtype=np.uint8)
    sitk.WriteImage(sitk.GetImageFromArray(rgba, isVector=True), str(tmp_path / "c.png"))
    expected = rgba[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    np.testing.assert_allclose(_arr(io.load_image(tmp_path / "c.png")), expected, atol=1e-3)
    np.testing.assert_allclose(io.luminance(rgba), expected, atol=1e-3)
    assert io.luminance(rgba).dtype == np.float32


def test_load_label_values_and_geometry(nrrd3d_dir):
    image = io.load_image(nrrd3d_dir / "prostate_phantom_subvolume.nrrd")
    label = io.load_label(nrrd3d_dir / "prostate_phantom_subvolume-label.nrrd", image, [1, 7, 8, 9])
    assert set(np.unique(_arr(label))) == {0, 1, 7, 8, 9}
    assert np.issubdtype(_arr(label).dtype, np.integer)


def test_rgb_mask_reduced_to_one_channel(busi_dir, tmp_path):
    image = io.load_image(busi_dir / "images" / "benign_006.png")
    mask = _arr(sitk.ReadImage(str(busi_dir / "masks" / "benign_006.png")))
    sitk.WriteImage(sitk.GetImageFromArray(np.stack([mask] * 3, -1), isVector=True),
                    str(tmp_path / "m.png"))
    label = io.load_label(tmp_path / "m.png", image, [255])
    np.testing.assert_array_equal(_arr(label), mask)


# ------------------------------------------------------------------------------ bad inputs


def _raises_naming(fn, path, *args, match=None):
    with pytest.raises(InputError) as info:
        fn(path, *args)
    assert Path(path).name in str(info.value)
    if match:
        assert match in str(info.value)
    return str(info.value)


def test_missing_file(tmp_path):
    _raises_naming(io.load_image, tmp_path / "nothere.nrrd", match="not found")


def test_unreadable_png(tmp_path):
    bad = tmp_path / "garbage.png"
    bad.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    _raises_naming(io.load_image, bad, match="Cannot read")


def test_4d_image(tmp_path):
    arr = np.random.default_rng(2).random((3, 4, 5, 6)).astype(np.float32)  # t, z, y, x
    path = tmp_path / "four_d.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(arr, isVector=False), str(path))
    assert sitk.ReadImage(str(path)).GetDimension() == 4
    _raises_naming(io.load_image, path, match="4D")


def test_4d_with_trivial_fourth_dim_is_accepted(tmp_path):
    arr = np.random.default_rng(3).random((1, 4, 5, 6)).astype(np.float32)
    path = tmp_path / "t1.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(arr, isVector=False), str(path))
    image = io.load_image(path)
    assert image.GetDimension() == 3 and image.GetSize() == (6, 5, 4)


def test_non_colour_vector_image(tmp_path):
    arr = np.random.default_rng(4).random((4, 5, 6, 2)).astype(np.float32)
    path = tmp_path / "vec.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(arr, isVector=True), str(path))
    _raises_naming(io.load_image, path, match="components")


def test_nan_image(nrrd3d_dir, tmp_path):
    image = sitk.Cast(sitk.ReadImage(str(nrrd3d_dir / "breast1_image.nrrd")), sitk.sitkFloat32)
    arr = _arr(image)
    arr[3, 10, 10] = np.nan
    arr[4, 11, 11] = np.inf
    bad = sitk.GetImageFromArray(arr)
    bad.CopyInformation(image)
    path = tmp_path / "nan.nrrd"
    sitk.WriteImage(bad, str(path))
    msg = _raises_naming(io.load_image, path, match="NaN")
    assert "2 NaN/Inf" in msg


def test_constant_image(tmp_path):
    path = tmp_path / "flat.png"
    sitk.WriteImage(sitk.GetImageFromArray(np.full((20, 30), 7, np.uint8)), str(path))
    _raises_naming(io.load_image, path, match="constant")


def test_label_size_mismatch(busi_dir):
    image = io.load_image(busi_dir / "images" / "benign_006.png")
    other = busi_dir / "masks" / "benign_162.png"
    assert sitk.ReadImage(str(other)).GetSize() != image.GetSize()
    _raises_naming(io.load_label, other, image, [255], match="size")


def test_label_geometry_mismatch_3d(nrrd3d_dir, tmp_path):
    image = io.load_image(nrrd3d_dir / "brain1_image.nrrd")
    label = sitk.ReadImage(str(nrrd3d_dir / "brain1_label.nrrd"))
    origin = list(label.GetOrigin())
    origin[2] += 6.5  # one slice off
    label.SetOrigin(origin)
    path = tmp_path / "shifted_label.nrrd"
    sitk.WriteImage(label, str(path))
    msg = _raises_naming(io.load_label, path, image, [1], match="origin")
    assert "np.float64" not in msg and "image origin (" in msg


def test_label_spacing_mismatch_3d(nrrd3d_dir, tmp_path):
    image = io.load_image(nrrd3d_dir / "breast1_image.nrrd")
    label = sitk.ReadImage(str(nrrd3d_dir / "breast1_label.nrrd"))
    label.SetSpacing([s * 1.01 for s in label.GetSpacing()])
    path = tmp_path / "spaced_label.nrrd"
    sitk.WriteImage(label, str(path))
    msg = _raises_naming(io.load_label, path, image, [1], match="spacing")
    assert "np.float64" not in msg


def test_label_geometry_within_tolerance_is_accepted(nrrd3d_dir, tmp_path):
    image = io.load_image(nrrd3d_dir / "breast1_image.nrrd")
    label = sitk.ReadImage(str(nrrd3d_dir / "breast1_label.nrrd"))
    label.SetSpacing([s * (1 + 1e-5) for s in label.GetSpacing()])
    path = tmp_path / "nearly.nrrd"
    sitk.WriteImage(label, str(path))
    io.load_label(path, image, [1])


def test_label_values_not_in_class_list(nrrd3d_dir):
    image = io.load_image(nrrd3d_dir / "prostate_phantom_subvolume.nrrd")
    msg = _raises_naming(io.load_label, nrrd3d_dir / "prostate_phantom_subvolume-label.nrrd",
                         image, [1], match="7, 8, 9")
    assert "not in the class list" in msg


def test_label_colour_mask_rejected(busi_dir, tmp_path):
    image = io.load_image(busi_dir / "images" / "benign_006.png")
    mask = _arr(sitk.ReadImage(str(busi_dir / "masks" / "benign_006.png")))
    rgb = np.stack([mask, np.zeros_like(mask), np.zeros_like(mask)], -1)
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(tmp_path / "red.png"))
    _raises_naming(io.load_label, tmp_path / "red.png", image, [255], match="colour")


def test_label_non_integer(nrrd3d_dir, tmp_path):
    image = io.load_image(nrrd3d_dir / "breast1_image.nrrd")
    label = sitk.Cast(sitk.ReadImage(str(nrrd3d_dir / "breast1_label.nrrd")), sitk.sitkFloat32)
    label = label * 0.5
    sitk.WriteImage(label, str(tmp_path / "half.nrrd"))
    _raises_naming(io.load_label, tmp_path / "half.nrrd", image, [1], match="non-integer")


# ------------------------------------------------------------------------------ indices


def test_label_index_round_trip(nrrd3d_dir):
    arr = _arr(sitk.ReadImage(str(nrrd3d_dir / "prostate_phantom_subvolume-label.nrrd")))
    values = [7, 1, 9, 8]
    idx = io.label_to_index(arr, values)
    assert idx.dtype == np.uint8 and set(np.unique(idx)) == {0, 1, 2, 3, 4}
    assert np.array_equal(idx == 1, arr == 7)
    np.testing.assert_array_equal(io.index_to_label(idx, values), arr)
    with pytest.raises(InputError):
        io.label_to_index(arr, [1])
    assert io.index_to_label(np.array([0, 1]), [255]).dtype == np.uint8


# ------------------------------------------------------------------------------ slicing


def test_default_axis(nrrd3d_dir, busi_dir):
    brain = io.load_image(nrrd3d_dir / "brain1_image.nrrd")
    assert brain.GetSpacing()[2] == pytest.approx(6.5)
    assert io.default_axis(brain) == 2
    # a volume whose thick axis is x
    arr = np.zeros((4, 5, 6), np.float32)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((3.0, 1.0, 1.0))
    assert io.default_axis(img) == 0
    img.SetSpacing((1.0, 1.0, 1.0))
    assert io.default_axis(img) == 2  # ties go to z
    assert io.default_axis(io.load_image(busi_dir / "images" / "benign_006.png")) == 2


def test_to_slices_shapes(nrrd3d_dir, busi_dir):
    brain = io.load_image(nrrd3d_dir / "brain1_image.nrrd")
    s, axis = io.to_slices(brain)
    assert axis == 2 and s.shape == (25, 256, 256) and s.dtype == np.float32
    s0, _ = io.to_slices(brain, 0)
    assert s0.shape == (256, 25, 256)
    np.testing.assert_array_equal(s0[17], _arr(brain)[:, :, 17])
    png = io.load_image(busi_dir / "images" / "benign_006.png")
    s2, axis2 = io.to_slices(png)
    assert axis2 == 2 and s2.shape == (1, 467, 558)
    with pytest.raises(InputError):
        io.to_slices(brain, 3)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_slices_round_trip_write_reload(nrrd3d_dir, tmp_path, axis):
    path = nrrd3d_dir / "prostate_phantom_subvolume-label.nrrd"
    original = sitk.ReadImage(str(path))
    slices, used = io.to_slices(original, axis)
    rebuilt = io.from_slices(slices, original, used)
    out = tmp_path / "sub" / f"rebuilt_{axis}.nrrd"
    io.write_image_atomic(rebuilt, out)
    reloaded = sitk.ReadImage(str(out))
    _geometry_equal(reloaded, original)
    assert reloaded.GetPixelID() == original.GetPixelID()
    np.testing.assert_array_equal(_arr(reloaded), _arr(original))
    assert [p.name for p in out.parent.iterdir()] == [out.name]


def test_round_trip_real_image_volume(nrrd3d_dir, tmp_path):
    image = io.load_image(nrrd3d_dir / "brain1_image.nrrd")
    slices, axis = io.to_slices(image)
    out = tmp_path / "brain.nrrd"
    io.write_image_atomic(io.from_slices(slices, image, axis), out)
    reloaded = sitk.ReadImage(str(out))
    _geometry_equal(reloaded, image)
    np.testing.assert_array_equal(_arr(reloaded), _arr(image))


def test_round_trip_2d(busi_dir, tmp_path):
    mask = sitk.ReadImage(str(busi_dir / "masks" / "benign_006.png"))
    slices, axis = io.to_slices(mask)
    out = tmp_path / "mask.png"
    io.write_image_atomic(io.from_slices(slices, mask, axis), out)
    np.testing.assert_array_equal(_arr(sitk.ReadImage(str(out))), _arr(mask))


# ------------------------------------------------------------------------------ atomic writer


def test_atomic_writer_failure_keeps_target(tmp_path):
    target = tmp_path / "result.png"
    target.write_bytes(b"previous content")
    float_3d = sitk.GetImageFromArray(np.random.default_rng(5).random((3, 4, 5)))  # PNG can't
    with pytest.raises(InputError) as info:
        io.write_image_atomic(float_3d, target)
    assert "result.png" in str(info.value)
    assert target.read_bytes() == b"previous content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.png"]


def test_atomic_writer_replaces_existing(nrrd3d_dir, tmp_path):
    target = tmp_path / "label.nii.gz"
    target.write_bytes(b"old")
    label = sitk.ReadImage(str(nrrd3d_dir / "breast1_label.nrrd"))
    io.write_image_atomic(label, target)
    np.testing.assert_array_equal(_arr(sitk.ReadImage(str(target))), _arr(label))
    assert os.listdir(tmp_path) == ["label.nii.gz"]


def test_atomic_writer_rejects_two_file_formats(tmp_path):
    with pytest.raises(InputError, match="mha"):
        io.write_image_atomic(sitk.Image(3, 3, sitk.sitkUInt8), tmp_path / "x.mhd")
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------------------ intensities / sizes


def test_normalize():
    a = np.array([[2.0, 4.0], [6.0, 10.0]])
    np.testing.assert_allclose(io.normalize(a), [[0, 0.25], [0.5, 1.0]])
    assert io.normalize(a).dtype == np.float32
    np.testing.assert_array_equal(io.normalize(np.full((3, 3), 5.0)), np.zeros((3, 3)))
    b = np.arange(101, dtype=np.float32)
    n = io.normalize(b, (10, 90))
    assert n[:11].max() == 0 and n[90:].min() == 1
    np.testing.assert_allclose(n[50], 0.5, atol=1e-6)


def test_normalize_with_a_volume_window():
    """A slice scaled by its volume's window equals that slice of the scaled volume (what the
    Segment Editor effect relies on); without the window it is scaled on its own."""
    rng = np.random.default_rng(0)
    volume = rng.normal(100, 40, (4, 6, 5)).astype(np.float32)
    volume[2] *= 3  # one bright slice
    for percentiles in (None, (1, 99)):
        whole = io.normalize(volume, percentiles)
        window = io.intensity_window(volume, percentiles)
        assert window[0] < window[1]
        for k in range(4):
            np.testing.assert_allclose(io.normalize(volume[k], percentiles, window=window), whole[k], atol=1e-6)
        assert not np.allclose(io.normalize(volume[0], percentiles), whole[0], atol=1e-3)
    np.testing.assert_array_equal(io.normalize(volume[0], window=(5.0, 5.0)), 0)  # a constant window
    assert io.intensity_window(np.zeros((0, 3))) == (0.0, 0.0)
    with pytest.raises(InputError, match="Percentiles"):
        io.intensity_window(volume, (50, 10))


def test_resize_and_back(busi_dir):
    mask = _arr(sitk.ReadImage(str(busi_dir / "masks" / "benign_006.png")))
    small = io.resize(mask, 128, is_label=True)
    assert small.shape == (128, 128) and small.dtype == mask.dtype
    assert set(np.unique(small)) <= {0, 255}
    back = io.resize(small, mask.shape, is_label=True)
    assert back.shape == mask.shape and set(np.unique(back)) <= {0, 255}
    assert (back == mask).mean() > 0.98
    img = _arr(io.load_image(busi_dir / "images" / "benign_006.png"))
    r = io.resize(img, (100, 120), is_label=False)
    assert r.shape == (100, 120) and r.dtype == np.float32
    assert img.min() <= r.min() and r.max() <= img.max()


# ------------------------------------------------------------------------------ one atomic writer


class _umask:
    def __init__(self, mask: int) -> None:
        self.mask = mask

    def __enter__(self):
        self.old = os.umask(self.mask)

    def __exit__(self, *exc):
        os.umask(self.old)


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_atomic_writers_respect_umask(nrrd3d_dir, tmp_path):
    label = sitk.ReadImage(str(nrrd3d_dir / "breast1_label.nrrd"))
    with _umask(0o022):
        io.write_text_atomic(tmp_path / "a.json", "{}\n")
        io.write_bytes_atomic(tmp_path / "b.bin", b"\x00\x01")
        io.write_image_atomic(label, tmp_path / "c.nrrd")
        with io.atomic_path(tmp_path / "d.txt") as tmp:
            tmp.write_text("written by any writer")
    assert {p.name: _mode(p) for p in tmp_path.iterdir()} == {
        "a.json": 0o644, "b.bin": 0o644, "c.nrrd": 0o644, "d.txt": 0o644}
    assert (tmp_path / "d.txt").read_text() == "written by any writer"
    with _umask(0o077):
        io.write_text_atomic(tmp_path / "a.json", "{}\n")
    with _umask(0o002):
        io.write_text_atomic(tmp_path / "e.json", "{}\n")
    assert _mode(tmp_path / "a.json") == 0o600 and _mode(tmp_path / "e.json") == 0o664
    assert io.process_umask() == os.umask(os.umask(0o022))


def test_atomic_path_failure_keeps_target_and_removes_temp(tmp_path):
    target = tmp_path / "model.pt"
    target.write_bytes(b"good model")
    with pytest.raises(RuntimeError, match="disk went away"):
        with io.atomic_path(target) as tmp:
            assert tmp.parent == tmp_path and tmp.name.endswith(".tmp.pt")
            tmp.write_bytes(b"half a mod")
            raise RuntimeError("disk went away")
    assert target.read_bytes() == b"good model"
    assert os.listdir(tmp_path) == ["model.pt"]


def test_atomic_writer_unwritable_place(nrrd3d_dir, tmp_path):
    """The folder cannot be created (a file is in the way): the image writer says so as an
    InputError naming the target; nothing is left behind."""
    (tmp_path / "blocker").write_bytes(b"a file, not a folder")
    target = tmp_path / "blocker" / "x.nrrd"
    with pytest.raises(InputError, match="blocker/x.nrrd"):
        io.write_image_atomic(sitk.ReadImage(str(nrrd3d_dir / "breast1_label.nrrd")), target)
    with pytest.raises(OSError):
        io.write_text_atomic(tmp_path / "blocker" / "x.json", "{}")
    assert os.listdir(tmp_path) == ["blocker"]


def test_remove_temp_files_after_a_killed_writer(tmp_path):
    """A real process killed (SIGKILL) inside atomic_path leaves its temporary file; the target
    is untouched and remove_temp_files removes exactly that leftover."""
    import signal
    import subprocess
    import sys

    target = tmp_path / "model_last.pt"
    target.write_bytes(b"iteration 10")
    (tmp_path / "unrelated.tmp.pt").write_bytes(b"keep")
    code = ("import os, signal, sys; from CPCSAMLib import io\n"
            "with io.atomic_path(sys.argv[1]) as tmp:\n"
            "    tmp.write_bytes(b'partial')\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(target)], timeout=120)
    assert proc.returncode == -signal.SIGKILL
    left = [p for p in tmp_path.iterdir() if p.name.startswith(".model_last.pt.")]
    assert len(left) == 1 and left[0].read_bytes() == b"partial"
    assert target.read_bytes() == b"iteration 10"
    assert io.remove_temp_files(target) == left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model_last.pt", "unrelated.tmp.pt"]


def test_dead_code_is_gone():
    assert not hasattr(io, "resize_back") and not hasattr(io, "_check_values")
