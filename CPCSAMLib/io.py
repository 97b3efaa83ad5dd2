"""Reading, validating, slicing and writing images and label maps (SimpleITK based).

Every problem with an input file raises :class:`CPCSAMLib.errors.InputError` with a message that
names the file, says what is wrong and what to do about it.

Conventions
-----------
- Images are returned as float32 scalar SimpleITK images (2D or 3D) with their geometry.
- Label images keep their raw values (e.g. 0/255 or 0, 1, 7, 8, 9); :func:`label_to_index`
  maps them to the engine's class indices ``0..C``.
- Axes are numbered in SimpleITK's (x, y, z) order; ``sitk.GetArrayFromImage`` gives arrays in
  [z, y, x] order, so SimpleITK axis ``a`` is numpy axis ``ndim - 1 - a``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator, Sequence, Union

import numpy as np
import SimpleITK as sitk

from .errors import InputError

PathLike = Union[str, "os.PathLike[str]"]

#: File name endings the engine reads (2D formats first, then 3D formats).
IMAGE_2D_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
IMAGE_3D_EXTENSIONS = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")
IMAGE_EXTENSIONS = IMAGE_2D_EXTENSIONS + IMAGE_3D_EXTENSIONS + (".tif", ".tiff")

#: Relative tolerance used when comparing the geometry of a label with its image.
GEOMETRY_TOLERANCE = 1e-3

_COLOUR_COMPONENT_TYPES = (sitk.sitkUInt8, sitk.sitkUInt16)

#: Weights of R, G, B in a grey value: ITU-R BT.601, as PIL's "L" conversion. The one place the
#: engine (and the Slicer side) turns colour into grey: use :func:`luminance`.
LUMINANCE_WEIGHTS = (0.299, 0.587, 0.114)


def luminance(rgb: np.ndarray) -> np.ndarray:
    """Grey values (float32) of an array whose last axis holds R, G, B (further channels, such as
    alpha, are ignored)."""
    rgb = np.asarray(rgb)
    grey = rgb[..., :3].astype(np.float64) @ np.asarray(LUMINANCE_WEIGHTS, np.float64)
    return grey.astype(np.float32)


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------


def extension(path: PathLike) -> str:
    """Return the lower-case file extension, including double ones such as ``.nii.gz``."""
    name = Path(path).name.lower()
    for double in (".nii.gz", ".nrrd.gz", ".mha.gz"):
        if name.endswith(double):
            return double
    return Path(name).suffix


def _sitk_reason(exc: BaseException) -> str:
    """The informative line of a SimpleITK exception (its ``sitk::ERROR:`` line if any)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "ERROR:" in ln:
            return ln.split("ERROR:", 1)[1].strip()[:200]
    return (lines[-1] if lines else type(exc).__name__)[:200]


def _read(path: PathLike, what: str) -> sitk.Image:
    """Read ``path`` with SimpleITK, turning every failure into an InputError."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{what} file not found: {p}. Check the path.")
    if not p.is_file():
        raise InputError(f"{what} path is not a file: {p}. Give the path of an image file.")
    try:
        image = sitk.ReadImage(str(p))
    except RuntimeError as exc:
        raise InputError(
            f"Cannot read {what.lower()} file {p}: the file is damaged or not in a supported "
            f"format ({_sitk_reason(exc)}). Use PNG/JPG/BMP for 2D or NRRD/NIfTI/MHA for 3D."
        ) from exc
    return image


def _squeeze_4d(image: sitk.Image, path: Path, what: str) -> sitk.Image:
    """Drop a trivial 4th dimension (size 1); reject real 4D images."""
    dim = image.GetDimension()
    if dim == 4:
        size = image.GetSize()
        if size[3] != 1:
            raise InputError(
                f"{what} file {path} is 4D (size {size}); only 2D images and 3D volumes are "
                f"supported. Extract one 3D volume (e.g. one time point) and save it as NRRD/NIfTI."
            )
        image = sitk.Extract(image, [size[0], size[1], size[2], 0], [0, 0, 0, 0],
                             sitk.ExtractImageFilter.DIRECTIONCOLLAPSETOSUBMATRIX)
    elif dim not in (2, 3):
        raise InputError(f"{what} file {path} has {dim} dimensions; only 2D images and 3D "
                         f"volumes are supported.")
    return image


def _colour_to_array(image: sitk.Image, path: Path, what: str, allow_luminance: bool) -> np.ndarray:
    """Reduce an RGB(A) image to one channel as a numpy array ([z,] y, x)."""
    ncomp = image.GetNumberOfComponentsPerPixel()
    component_id = _component_type(image)
    if ncomp not in (3, 4) or component_id not in _COLOUR_COMPONENT_TYPES:
        raise InputError(
            f"{what} file {path} has {ncomp} components per pixel "
            f"({image.GetPixelIDTypeAsString()}); only scalar images and RGB/RGBA colour images "
            f"are supported. Save a single-channel (grayscale) image."
        )
    arr = sitk.GetArrayViewFromImage(image)[..., :3]
    r, g, b = arr[..., 0], arr[..., 1], arr[..., 2]
    if np.array_equal(r, g) and np.array_equal(r, b):
        return np.array(r)
    if not allow_luminance:
        raise InputError(
            f"{what} file {path} is a colour image whose channels differ; a label map must have "
            f"one value per pixel. Save the label map as a single-channel (grayscale) image."
        )
    return luminance(arr)


def _component_type(image: sitk.Image) -> int:
    """Pixel id of one component of ``image`` (the pixel id itself for scalar images)."""
    if image.GetNumberOfComponentsPerPixel() == 1:
        return image.GetPixelID()
    probe = sitk.VectorIndexSelectionCast(image, 0)
    return probe.GetPixelID()


def _scalar_array(image: sitk.Image, path: Path, what: str, allow_luminance: bool) -> np.ndarray:
    """Numpy array ([z,] y, x) of a scalar or RGB(A) image, reduced to one channel."""
    if image.GetNumberOfComponentsPerPixel() > 1:
        return _colour_to_array(image, path, what, allow_luminance)
    return sitk.GetArrayFromImage(image)


def _array_to_image(arr: np.ndarray, like: sitk.Image) -> sitk.Image:
    out = sitk.GetImageFromArray(arr, isVector=False)
    out.SetSpacing(like.GetSpacing())
    out.SetOrigin(like.GetOrigin())
    out.SetDirection(like.GetDirection())
    return out


def load_image(path: PathLike) -> sitk.Image:
    """Read a 2D image (PNG/JPG/BMP) or 3D volume (NRRD/NIfTI/MHA) as a float32 scalar image.

    RGB(A) images become one channel: the first channel when all are equal, else luminance
    (0.299 R + 0.587 G + 0.114 B; alpha is ignored). Geometry is kept. Raises InputError for a
    missing/unreadable file, a 4D or non-colour vector image, NaN/Inf voxels, a constant image.
    """
    p = Path(path)
    image = _squeeze_4d(_read(p, "Image"), p, "Image")
    arr = _scalar_array(image, p, "Image", allow_luminance=True).astype(np.float32, copy=False)
    bad = ~np.isfinite(arr)
    if bad.any():
        raise InputError(f"Image file {p} contains {int(bad.sum())} NaN/Inf voxels. Replace them "
                         f"with finite values (e.g. 0) before using the image.")
    lo, hi = float(arr.min()), float(arr.max())
    if lo == hi:
        raise InputError(f"Image file {p} is constant (every voxel is {lo:g}); there is nothing "
                         f"to segment. Check that the right file was given.")
    return _array_to_image(arr, image)


def _read_label_image(path: PathLike, what: str = "Label") -> sitk.Image:
    """Read a label map as a scalar integer image with its raw values (no checks vs an image).

    ``what`` names the file's role in messages (``"Label"``, ``"Prediction"``, ``"Reference"``).
    """
    p = Path(path)
    image = _squeeze_4d(_read(p, what), p, what)
    arr = _scalar_array(image, p, what, allow_luminance=False)
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.isfinite(arr).all() or not np.array_equal(arr, np.round(arr)):
            raise InputError(f"{what} file {p} contains non-integer values (pixel type "
                             f"{image.GetPixelIDTypeAsString()}). A label map must hold whole "
                             f"numbers (0 = background); save it with an integer pixel type.")
        arr = arr.astype(np.int32)
    if arr.dtype in (np.uint32, np.int64, np.uint64):
        if arr.size and (arr.max() > np.iinfo(np.int32).max or arr.min() < np.iinfo(np.int32).min):
            raise InputError(f"{what} file {p} has values outside the 32-bit range.")
        arr = arr.astype(np.int32)
    return _array_to_image(arr, image)


def _is_default_geometry(image: sitk.Image) -> bool:
    dim = image.GetDimension()
    return (np.allclose(image.GetSpacing(), 1.0) and np.allclose(image.GetOrigin(), 0.0)
            and np.allclose(image.GetDirection(), np.eye(dim).ravel()))


def _plain(values: np.ndarray, digits: int) -> tuple[float, ...]:
    """Rounded values as plain Python floats (printed ``0.5``, never ``np.float64(0.5)``)."""
    return tuple(float(v) for v in np.round(np.asarray(values, dtype=float), digits))


def _geometry_problem(label: sitk.Image, reference: sitk.Image,
                      reference_what: str = "image") -> str | None:
    """Describe how the geometry of ``label`` differs from ``reference`` (None if it matches)."""
    tol = GEOMETRY_TOLERANCE
    sl, sr = np.array(label.GetSpacing()), np.array(reference.GetSpacing())
    if np.any(np.abs(sl - sr) > tol * np.maximum(np.abs(sl), np.abs(sr))):
        return f"spacing {_plain(sl, 6)} != {reference_what} spacing {_plain(sr, 6)}"
    # origin: tolerance relative to the voxel size
    ol, orr = np.array(label.GetOrigin()), np.array(reference.GetOrigin())
    if np.any(np.abs(ol - orr) > tol * float(np.mean(sr))):
        return f"origin {_plain(ol, 6)} != {reference_what} origin {_plain(orr, 6)}"
    dl, dr = np.array(label.GetDirection()), np.array(reference.GetDirection())
    if np.any(np.abs(dl - dr) > tol):
        return f"direction {_plain(dl, 4)} != {reference_what} direction {_plain(dr, 4)}"
    return None


#: Wording of :func:`check_label` for a training label checked against its image.
TRAINING_WORDING = {
    "what": "Label",
    "reference": "image",
    "pairing": "check that image and label are paired correctly",
    "resample": "Resample the label onto the image (e.g. in Slicer: export the segmentation "
                "with the image as reference geometry).",
    "values": "Add these values as classes in the manifest, or fix the label map.",
}

#: Wording of :func:`check_label` for a prediction checked against its reference label map.
EVALUATION_WORDING = {
    "what": "Prediction",
    "reference": "reference",
    "pairing": "check that --pred and --gt list the files in the same order",
    "resample": "Give a prediction made on the reference's image (same grid).",
    "values": "Give these values as classes (--classes NAME=VALUE), or check that the "
              "prediction was made with this class list.",
}


def check_label(label: sitk.Image, path: PathLike, reference: sitk.Image,
                label_values: Sequence[int], wording: dict | None = None) -> None:
    """Check size, geometry and values of a label image against its reference (raises InputError).

    ``wording``: :data:`TRAINING_WORDING` (default: a label against its image) or
    :data:`EVALUATION_WORDING` (a prediction against its reference label map).
    """
    w = wording or TRAINING_WORDING
    what, ref = w["what"], w["reference"]
    p = Path(path)
    if label.GetDimension() != reference.GetDimension() or label.GetSize() != reference.GetSize():
        raise InputError(
            f"{what} file {p} has size {label.GetSize()} but its {ref} has size "
            f"{reference.GetSize()}. The {what.lower()} must have exactly the {ref}'s size; "
            f"{w['pairing']}."
        )
    # 2D images from PNG/JPG/BMP carry no real geometry: the size check is enough there.
    skip = label.GetDimension() == 2 and (_is_default_geometry(label)
                                          or _is_default_geometry(reference))
    if not skip:
        problem = _geometry_problem(label, reference, ref)
        if problem:
            raise InputError(
                f"{what} file {p} does not lie on its {ref}'s voxel grid: {problem} (tolerance "
                f"{GEOMETRY_TOLERANCE:g} relative). {w['resample']}"
            )
    values = np.unique(sitk.GetArrayViewFromImage(label))
    allowed = {0} | {int(v) for v in label_values}
    unexpected = [int(v) for v in values if int(v) not in allowed]
    if unexpected:
        shown = ", ".join(str(v) for v in unexpected[:20]) + (" ..." if len(unexpected) > 20 else "")
        raise InputError(
            f"{what} file {p} contains values not in the class list: {shown}. Allowed values are "
            f"0 (background) and {sorted(allowed - {0})}. {w['values']}"
        )


def load_label(path: PathLike, reference: sitk.Image, label_values: Sequence[int],
               wording: dict | None = None) -> sitk.Image:
    """Read a label map and check it against ``reference`` (its image) and the class values.

    RGB masks with equal channels are reduced to one channel. Checks: same dimension and size as
    the reference; same spacing/origin/direction within 1e-3 relative (skipped for 2D images
    without geometry, e.g. PNG); every value in {0} ∪ ``label_values``. Returns an integer image
    with the raw values. ``wording``: see :func:`check_label`.
    """
    label = _read_label_image(path, (wording or TRAINING_WORDING)["what"])
    check_label(label, path, reference, label_values, wording)
    return label


# --------------------------------------------------------------------------------------------
# values <-> class indices
# --------------------------------------------------------------------------------------------


def label_to_index(arr: np.ndarray, label_values: Sequence[int]) -> np.ndarray:
    """Map raw label values to class indices (0 = background, value ``label_values[i]`` -> i+1).

    ``label_values`` come from a validated class list (:func:`CPCSAMLib.dataset.parse_classes`).
    Raises InputError when ``arr`` holds a value outside {0} ∪ ``label_values``.
    """
    values = [int(v) for v in label_values]
    arr = np.asarray(arr)
    out = np.zeros(arr.shape, dtype=np.uint8)
    known = arr == 0
    for index, value in enumerate(values, start=1):
        hit = arr == value
        out[hit] = index
        known |= hit
    if not known.all():
        extra = np.unique(arr[~known])[:20].tolist()
        raise InputError(f"Label map contains values not in the class list {values}: {extra}.")
    return out


def index_to_label(arr: np.ndarray, label_values: Sequence[int]) -> np.ndarray:
    """Map class indices ``0..C`` back to the raw label values (inverse of label_to_index).

    ``label_values`` come from a validated class list (:func:`CPCSAMLib.dataset.parse_classes`).
    """
    values = [int(v) for v in label_values]
    arr = np.asarray(arr)
    lo, hi = min(values + [0]), max(values + [0])
    for dtype in (np.uint8, np.uint16, np.int16, np.int32):
        if np.iinfo(dtype).min <= lo and hi <= np.iinfo(dtype).max:
            break
    lut = np.array([0] + values, dtype=dtype)
    if arr.size and (arr.min() < 0 or arr.max() > len(values)):
        raise InputError(f"Class index map holds indices outside 0..{len(values)}.")
    return lut[arr.astype(np.intp, copy=False)]


# --------------------------------------------------------------------------------------------
# slicing
# --------------------------------------------------------------------------------------------


def default_axis(image: sitk.Image) -> int:
    """Slicing axis in SimpleITK (x, y, z) order: the axis of largest spacing.

    Ties go to the highest axis (so to z whenever z is among the largest). A 3D volume with
    exactly one axis of size 1 (a single slice stored as a volume) is sliced along that axis.
    2D images return 2 (one slice).
    """
    if image.GetDimension() == 2:
        return 2
    size = image.GetSize()
    singleton = [a for a in range(3) if size[a] == 1]
    if len(singleton) == 1:
        return singleton[0]
    spacing = np.asarray(image.GetSpacing(), dtype=float)
    largest = spacing.max()
    ties = [a for a in range(3) if spacing[a] >= largest * (1 - 1e-6)]
    return max(ties)


def _check_axis(axis: int | None, image: sitk.Image) -> int:
    if image.GetDimension() == 2:
        return 2
    if axis is None:
        return default_axis(image)
    if isinstance(axis, bool) or int(axis) != axis or axis not in (0, 1, 2):
        raise InputError(f"Slicing axis must be 0, 1, 2 (x, y, z) or None, got {axis!r}.")
    return int(axis)


def to_slices(image: sitk.Image, axis: int | None = None) -> tuple[np.ndarray, int]:
    """Cut an image into 2D slices perpendicular to ``axis`` (SimpleITK order; None = default).

    Returns ``(slices [S, H, W], axis)`` with the image's pixel type. Slice layout: axis z ->
    [z, y, x]; axis y -> [y, z, x]; axis x -> [x, z, y]. A 2D image gives S = 1 and axis 2.
    """
    axis = _check_axis(axis, image)
    arr = sitk.GetArrayFromImage(image)
    if image.GetDimension() == 2:
        return arr[None], 2
    return np.ascontiguousarray(np.moveaxis(arr, 2 - axis, 0)), axis


def from_slices(slices: np.ndarray, reference: sitk.Image, axis: int) -> sitk.Image:
    """Inverse of :func:`to_slices`: stack slices into an image with ``reference``'s geometry."""
    slices = np.asarray(slices)
    if reference.GetDimension() == 2:
        arr = slices[0] if slices.ndim == 3 else slices
        if slices.ndim == 3 and slices.shape[0] != 1:
            raise InputError(f"A 2D reference takes one slice, got {slices.shape[0]}.")
    else:
        axis = _check_axis(axis, reference)
        arr = np.moveaxis(slices, 0, 2 - axis)
    expected = tuple(reversed(reference.GetSize()))
    if arr.shape != expected:
        raise InputError(f"Slices of shape {slices.shape} do not fit the reference image of "
                         f"size {reference.GetSize()} along axis {axis}.")
    out = sitk.GetImageFromArray(np.ascontiguousarray(arr), isVector=False)
    out.CopyInformation(reference)
    return out


# --------------------------------------------------------------------------------------------
# intensity and size
# --------------------------------------------------------------------------------------------


def intensity_window(arr: np.ndarray, percentiles: tuple[float, float] | None = None) -> tuple[float, float]:
    """``(low, high)`` that :func:`normalize` maps to 0 and 1: the minimum and maximum of ``arr``, or
    with ``percentiles=(lo, hi)`` (e.g. (0.5, 99.5)) those percentiles. ``(0.0, 0.0)`` when empty."""
    a = np.asarray(arr)
    if a.size == 0:
        return 0.0, 0.0
    if percentiles is not None:
        p_lo, p_hi = percentiles
        if not 0 <= p_lo < p_hi <= 100:
            raise InputError(f"Percentiles must satisfy 0 <= low < high <= 100, got {percentiles}.")
        lo, hi = (float(v) for v in np.percentile(a, [p_lo, p_hi]))
        return lo, hi
    return float(a.min()), float(a.max())


def normalize(arr: np.ndarray, percentiles: tuple[float, float] | None = None,
              window: tuple[float, float] | None = None) -> np.ndarray:
    """Min-max scale ``arr`` (as one unit) to [0, 1] as float32.

    With ``percentiles=(lo, hi)`` (e.g. (0.5, 99.5)) values are first clipped to those
    percentiles. ``window``: the ``(low, high)`` of :func:`intensity_window` computed on a larger
    array (a slice scaled as its whole volume is); it replaces ``percentiles``. A constant input
    (or window) gives zeros.
    """
    a = np.asarray(arr, dtype=np.float32)
    if a.size == 0:
        return a.copy()
    lo, hi = (float(v) for v in window) if window is not None else intensity_window(a, percentiles)
    if not hi > lo:
        return np.zeros(a.shape, dtype=np.float32)
    out = (np.clip(a, lo, hi) - lo) / (hi - lo)
    return out.astype(np.float32, copy=False)


def _shape2(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    h, w = size
    return int(h), int(w)


def resize(arr2d: np.ndarray, size: int | Sequence[int], is_label: bool) -> np.ndarray:
    """Resize a 2D array to ``size`` (int = square, or (H, W)).

    Images: bilinear, anti-aliased when shrinking, float32 out. Labels: nearest neighbour, no
    anti-aliasing, values and dtype preserved.
    """
    from skimage.transform import resize as _sk_resize

    arr2d = np.asarray(arr2d)
    shape = _shape2(size)
    if arr2d.shape == shape:
        return arr2d.copy() if is_label else arr2d.astype(np.float32)
    if is_label:
        out = _sk_resize(arr2d, shape, order=0, preserve_range=True, anti_aliasing=False,
                         mode="edge")
        return out.astype(arr2d.dtype)
    out = _sk_resize(arr2d.astype(np.float32, copy=False), shape, order=1, preserve_range=True,
                     anti_aliasing=bool(shape[0] < arr2d.shape[0] or shape[1] < arr2d.shape[1]),
                     mode="edge")
    return out.astype(np.float32, copy=False)


# --------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------


def process_umask() -> int:
    """The process's umask, read without changing it where the system allows (Linux)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (not thread-safe for that instant)
    os.umask(mask)
    return mask


def _temp_pattern(target: Path) -> tuple[str, str]:
    """Prefix and suffix of the temporary files of writes to ``target``."""
    return f".{target.name}.", f".tmp{extension(target)}"


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX; a no-op where folders cannot be opened)."""
    try:
        fd = os.open(str(folder), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder; on success it replaces ``path`` atomically.

    THE atomic writer of the package: the caller writes the whole file to the yielded path (any
    writer: ``open``, ``torch.save``, ``sitk.WriteImage``; the temporary name ends with
    ``path``'s extension, e.g. ``.model.pt.k2j3.tmp.pt``). When the block ends without error the
    file is flushed to disk (fsync), given the mode a new file gets under the process umask
    (0644 under umask 022; ``mkstemp`` alone gives 0600), and renamed onto ``path`` with
    ``os.replace``. On any error (or KeyboardInterrupt) the temporary file is removed and
    ``path`` is left as it was. The folder is created if needed.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    prefix, suffix = _temp_pattern(target)
    fd, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=str(target.parent))
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "r+b") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~process_umask())
        os.replace(tmp, target)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
    _fsync_folder(target.parent)


def remove_temp_files(path: PathLike) -> list[Path]:
    """Remove temporary files left by interrupted :func:`atomic_path` writes to ``path``.

    Only files named like the writer's temporaries for this exact target are touched. Call it
    while no other writer targets ``path`` (e.g. under the output folder's lock). Returns the
    removed files.
    """
    target = Path(path)
    prefix, suffix = _temp_pattern(target)
    removed = []
    if target.parent.is_dir():
        for p in target.parent.iterdir():
            if p.name.startswith(prefix) and p.name.endswith(suffix) and p.is_file():
                try:
                    p.unlink()
                    removed.append(p)
                except OSError:
                    pass
    return removed


def write_bytes_atomic(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`). Returns ``path``."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
    return Path(path)


def write_text_atomic(path: PathLike, data: Union[str, bytes]) -> Path:
    """Write ``data`` (str as UTF-8, or bytes) to ``path`` atomically (see :func:`atomic_path`)."""
    return write_bytes_atomic(path, data.encode("utf-8") if isinstance(data, str) else data)


def write_image_atomic(image: sitk.Image, path: PathLike) -> None:
    """Write ``image`` to ``path`` atomically (compressed), through :func:`atomic_path`.

    On failure ``path`` is left as it was, no temporary file remains, and InputError is raised.
    ``.mhd``/``.hdr`` (header + separate data file) cannot be written atomically: use
    ``.mha``/``.nii.gz``.
    """
    target = Path(path)
    ext = extension(target)
    if ext in (".mhd", ".hdr", ".img", ".nhdr"):
        raise InputError(f"Cannot write {target} atomically: '{ext}' stores the data in a "
                         f"separate file. Use a single-file format (.nrrd, .nii.gz, .mha).")
    if not ext:
        raise InputError(f"Output file {target} has no extension; add one (e.g. .nrrd, .png) so "
                         f"the writer can be chosen.")
    try:
        with atomic_path(target) as tmp:
            sitk.WriteImage(image, str(tmp), True)
    except (RuntimeError, OSError) as exc:
        raise InputError(f"Cannot write {target}: {_sitk_reason(exc)}. Check that the folder is "
                         f"writable and that the format supports this pixel type "
                         f"({image.GetPixelIDTypeAsString()}).") from exc
