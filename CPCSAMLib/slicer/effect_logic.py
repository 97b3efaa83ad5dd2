"""Qt-free pieces of the CPC-SAM Segment Editor effect (point prompts on a slice view).

Volumes are numpy arrays in VTK/Slicer's memory order ``[K, J, I]`` (what
``slicer.util.arrayFromVolume`` returns). ``axis`` is an **IJK axis**: 0 = I, 1 = J, 2 = K; a
slice perpendicular to it is cut like the engine cuts volumes (``io.to_slices``, SimpleITK axis
``a`` = IJK axis ``a``):

=========  =====================  ===================
axis       2D slice ``[rows, cols]``   point ``(x, y)``
=========  =====================  ===================
2 (K)      ``volume[k]`` = [J, I]  ``(i, j)``
1 (J)      ``volume[:, j]`` = [K, I]  ``(i, k)``
0 (I)      ``volume[:, :, i]`` = [K, J]  ``(j, k)``
=========  =====================  ===================

so a model trained slice-wise sees the slices the effect gives it in the same orientation.

The slice view's plane picks the axis: the IJK axis closest to the view's normal (slice views
are axis-aligned with the volume in the usual case; for an oblique view the closest IJK slice is
used), and the slice index is the IJK slice closest to the view's plane (:func:`locate_click`).

Writing the result (:func:`write_slices_to_segment`) replaces the segment on the modified slices
only: their voxels are first removed, then the new masks added, both restricted to the slices'
extent (the Segment Editor's "Set" mode would clear the whole segment first).

Prompts follow the model's prompt type. Point models (SAM ViT): clicks are points. Box models
(LiteMedSAM, trained with boxes only; a point gives it little): a drag draws a box
(:func:`box_from_corners`), and a click without a drag boxes the component of the class under it
in the slice's unprompted prediction (:func:`box_at_click`).

Propagation (:func:`propagate`) re-prompts each neighbouring slice from the largest component of
the previous slice's result: its centre point (:func:`point_prompt`, as the paper derives
prompts) or its box with a margin (:func:`box_prompt`, as self-prompted inference does), and
stops when a prediction is empty or after N slices in each direction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ..config import TrainConfig
from ..errors import InputError

__all__ = [
    "closest_ijk_axis",
    "axis_alignment",
    "ras_to_ijk",
    "locate_click",
    "locate_drag",
    "extract_slice",
    "slice_shape",
    "ijk_to_xy",
    "xy_to_ijk",
    "write_slice",
    "slice_extent",
    "PointPromptSession",
    "MIN_DRAG_PIXELS",
    "BOX_MARGIN",
    "box_from_corners",
    "box_at_click",
    "point_prompt",
    "box_prompt",
    "predict_mask",
    "propagate",
    "propagation_steps",
    "pick_model",
    "segment_with_points",
    "segment_with_box",
    "modifier_for_slices",
    "write_slices_to_segment",
]

# predict(slice2d, prompt) -> class indices [H, W]; the prompt is a list of (x, y, class index)
# points (Predictor.predict_slice_with_points) or a box (x0, y0, x1, y1) of the class being segmented
PredictFn = Callable[[np.ndarray, Any], np.ndarray]
Box = Tuple[float, float, float, float]

MIN_DRAG_PIXELS = 3  # a press and release closer than this (slice pixels) on both axes is a click
BOX_MARGIN = TrainConfig.box_margin  # default widening of a box made from a mask (the effect passes the model's)
CLICK_NEAR_PIXELS = 3.0  # a click this close to a predicted component selects it


def _check_axis(axis: int) -> int:
    if axis not in (0, 1, 2):
        raise InputError(f"axis must be 0 (I), 1 (J) or 2 (K), got {axis!r}")
    return int(axis)


def _check_volume(volume: np.ndarray) -> np.ndarray:
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise InputError(f"expected a [K, J, I] volume, got shape {volume.shape}")
    return volume


# ---------------------------------------------------------------------------- view geometry
def _unit_ijk_directions(ijk_to_ras) -> np.ndarray:
    m = np.asarray(ijk_to_ras, dtype=float)[:3, :3]
    norms = np.linalg.norm(m, axis=0)
    if np.any(norms == 0):
        raise InputError("degenerate IJK-to-RAS matrix")
    return m / norms


def closest_ijk_axis(ijk_to_ras, slice_normal_ras) -> int:
    """IJK axis (0, 1, 2) most parallel to the slice view's normal (RAS)."""
    normal = np.asarray(slice_normal_ras, dtype=float)[:3]
    if not np.linalg.norm(normal):
        raise InputError("the slice normal is zero")
    normal = normal / np.linalg.norm(normal)
    return int(np.argmax(np.abs(_unit_ijk_directions(ijk_to_ras).T @ normal)))


def axis_alignment(ijk_to_ras, slice_normal_ras) -> float:
    """Angle in degrees between the view normal and its closest IJK axis (0 = axis-aligned)."""
    normal = np.asarray(slice_normal_ras, dtype=float)[:3]
    normal = normal / np.linalg.norm(normal)
    cos = np.max(np.abs(_unit_ijk_directions(ijk_to_ras).T @ normal))
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))


def ras_to_ijk(ijk_to_ras, ras) -> np.ndarray:
    """Continuous IJK coordinates of a RAS point."""
    point = np.append(np.asarray(ras, dtype=float)[:3], 1.0)
    return (np.linalg.inv(np.asarray(ijk_to_ras, dtype=float)) @ point)[:3]


def locate_click(ijk_to_ras, ras_point, slice_normal_ras, shape_kji: Sequence[int],
                 origin: Sequence[int] = (0, 0, 0)) -> Optional[Tuple[int, int, Tuple[int, int]]]:
    """Where a click on a slice view falls in the volume: ``(axis, index, (x, y))`` or None.

    ``axis``: the IJK axis closest to the view's normal; ``index``: the IJK slice closest to the
    click along it; ``(x, y)``: the pixel in that slice (see :func:`ijk_to_xy`). ``origin``: the
    image's extent start ``(i0, j0, k0)`` (VTK images need not start at 0); indices are relative
    to it. None when the click lies outside the volume.
    """
    axis = closest_ijk_axis(ijk_to_ras, slice_normal_ras)
    ijk = ras_to_ijk(ijk_to_ras, ras_point) - np.asarray(origin, dtype=float)[:3]
    index = int(np.floor(ijk[axis] + 0.5))
    if not 0 <= index < int(shape_kji[2 - axis]):
        return None
    x, y = ijk_to_xy(ijk, axis)
    rows, cols = slice_shape(shape_kji, axis)
    if not (0 <= x < cols and 0 <= y < rows):
        return None
    return axis, index, (x, y)


def locate_drag(ijk_to_ras, ras_start, ras_end, slice_normal_ras, shape_kji: Sequence[int],
                origin: Sequence[int] = (0, 0, 0)):
    """Where a drag on a slice view falls: ``(axis, index, (x0, y0), (x1, y1))`` or None.

    The press picks the slice as :func:`locate_click` does (None when it lies outside the
    volume); the release point is taken on that slice and clipped to it, so a box may be dragged
    beyond the image's edge.
    """
    located = locate_click(ijk_to_ras, ras_start, slice_normal_ras, shape_kji, origin)
    if located is None:
        return None
    axis, index, start = located
    x, y = ijk_to_xy(ras_to_ijk(ijk_to_ras, ras_end) - np.asarray(origin, dtype=float)[:3], axis)
    rows, cols = slice_shape(shape_kji, axis)
    return axis, index, start, (int(np.clip(x, 0, cols - 1)), int(np.clip(y, 0, rows - 1)))


# ---------------------------------------------------------------------------- slices
def slice_shape(shape_kji: Sequence[int], axis: int) -> Tuple[int, int]:
    k, j, i = (int(s) for s in shape_kji)
    return {2: (j, i), 1: (k, i), 0: (k, j)}[_check_axis(axis)]


def extract_slice(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    """The 2D slice ``index`` perpendicular to IJK ``axis`` of a ``[K, J, I]`` volume (a view)."""
    volume = _check_volume(volume)
    axis = _check_axis(axis)
    size = volume.shape[2 - axis]
    if not 0 <= index < size:
        raise InputError(f"slice {index} is outside 0..{size - 1} along axis {'IJK'[axis]}")
    if axis == 2:
        return volume[index]
    if axis == 1:
        return volume[:, index, :]
    return volume[:, :, index]


def ijk_to_xy(ijk: Sequence[float], axis: int) -> Tuple[int, int]:
    """Pixel ``(x, y)`` = ``(column, row)`` in the slice of ``axis`` of a voxel ``(i, j, k)``."""
    i, j, k = (int(np.floor(float(v) + 0.5)) for v in ijk[:3])
    return {2: (i, j), 1: (i, k), 0: (j, k)}[_check_axis(axis)]


def xy_to_ijk(x: int, y: int, axis: int, index: int) -> Tuple[int, int, int]:
    """Inverse of :func:`ijk_to_xy` on slice ``index``."""
    return {2: (x, y, index), 1: (x, index, y), 0: (index, x, y)}[_check_axis(axis)]


def write_slice(labelmap: np.ndarray, axis: int, index: int, mask2d: np.ndarray, value: int = 1) -> None:
    """Replace slice ``index`` of a ``[K, J, I]`` labelmap by ``mask2d`` (``value`` inside, 0 outside)."""
    target = extract_slice(labelmap, axis, index)
    mask2d = np.asarray(mask2d, dtype=bool)
    if mask2d.shape != target.shape:
        raise InputError(f"mask of shape {mask2d.shape} does not fit a slice of shape {target.shape}")
    target[...] = np.where(mask2d, value, 0).astype(labelmap.dtype)


def slice_extent(shape_kji: Sequence[int], axis: int, first: int, last: Optional[int] = None,
                 origin: Sequence[int] = (0, 0, 0)) -> Tuple[int, int, int, int, int, int]:
    """VTK extent ``(i0, i1, j0, j1, k0, k1)`` of slices ``first..last`` along ``axis``.

    ``origin``: the image's extent start ``(i0, j0, k0)`` (VTK images need not start at 0).
    """
    axis = _check_axis(axis)
    last = first if last is None else last
    first, last = min(first, last), max(first, last)
    k, j, i = (int(s) for s in shape_kji)
    extent = [0, i - 1, 0, j - 1, 0, k - 1]
    extent[2 * axis] = first
    extent[2 * axis + 1] = last
    for a in range(3):
        extent[2 * a] += int(origin[a])
        extent[2 * a + 1] += int(origin[a])
    return tuple(extent)  # type: ignore[return-value]


# ---------------------------------------------------------------------------- clicks
@dataclass
class PointPromptSession:
    """Clicks accumulated on one slice for one segment/class; a new slice or class starts over.

    ``add(x, y, foreground)`` returns the points for ``Predictor.predict_slice_with_points``:
    ``(x, y, class_index)`` for foreground clicks and ``(x, y, 0)`` for background ones.
    """

    key: Optional[tuple] = None
    points: List[Tuple[int, int, int]] = field(default_factory=list)

    def add(self, key: tuple, x: int, y: int, class_index: int, foreground: bool = True):
        if key != self.key:
            self.key = key
            self.points = []
        self.points.append((int(x), int(y), int(class_index) if foreground else 0))
        return list(self.points)

    def has_foreground(self) -> bool:
        return any(c > 0 for _, _, c in self.points)

    def reset(self) -> None:
        self.key = None
        self.points = []


# ---------------------------------------------------------------------------- boxes
def box_from_corners(a: Sequence[float], b: Sequence[float], min_size: float = MIN_DRAG_PIXELS) -> Optional[Box]:
    """The box ``(x0, y0, x1, y1)`` spanned by a drag from slice pixel ``a`` to ``b``, or None when
    the drag is shorter than ``min_size`` pixels along both axes (a click)."""
    (xa, ya), (xb, yb) = a, b
    if abs(xb - xa) < min_size and abs(yb - ya) < min_size:
        return None
    return (float(min(xa, xb)), float(min(ya, yb)), float(max(xa, xb)), float(max(ya, yb)))


def box_at_click(labels: np.ndarray, x: int, y: int, class_index: int, margin: float = BOX_MARGIN,
                 near: float = CLICK_NEAR_PIXELS) -> Optional[Box]:
    """The box (widened by ``margin``) of the 8-connected component of ``class_index`` in
    ``labels`` (class indices ``[H, W]``, e.g. the slice's unprompted prediction) under the click,
    or the nearest one within ``near`` pixels; None when there is none."""
    from scipy import ndimage

    labels = np.asarray(labels)
    if not (0 <= y < labels.shape[0] and 0 <= x < labels.shape[1]):
        raise InputError(f"click ({x}, {y}) lies outside the {labels.shape[1]}x{labels.shape[0]} slice")
    regions, count = ndimage.label(labels == int(class_index), structure=np.ones((3, 3)))
    if count == 0:
        return None
    distance, (rows, cols) = ndimage.distance_transform_edt(regions == 0, return_indices=True)
    if distance[y, x] > near:
        return None
    return box_prompt(regions == regions[rows[y, x], cols[y, x]], class_index, margin)


def point_prompt(component: np.ndarray, class_index: int) -> List[Tuple[int, int, int]]:
    """Propagation prompt of point models: the centre point of ``component``."""
    from ..prompts import center_point

    x, y = center_point(component)
    return [(x, y, int(class_index))]


def box_prompt(component: np.ndarray, class_index: int, margin: float = BOX_MARGIN) -> Box:
    """Propagation prompt of box models: the box of ``component`` widened by ``margin``."""
    from ..prompts import component_box

    return tuple(float(v) for v in component_box(component, margin))  # type: ignore[return-value]


# ---------------------------------------------------------------------------- prediction
def predict_mask(predict: PredictFn, slice2d: np.ndarray, prompt, class_index: int) -> np.ndarray:
    """Boolean mask of ``class_index`` in ``predict(slice2d, prompt)`` (class indices [H, W])."""
    result = np.asarray(predict(np.asarray(slice2d, dtype=np.float32), prompt))
    if result.shape != np.asarray(slice2d).shape:
        raise InputError(f"the prediction has shape {result.shape}, the slice {np.asarray(slice2d).shape}")
    return result == int(class_index)


def propagation_steps(predict: PredictFn, volume: np.ndarray, axis: int, start_index: int,
                      start_mask: np.ndarray, class_index: int, max_slices: int,
                      directions: Iterable[int] = (1, -1),
                      prompt_from_mask: Callable[[np.ndarray, int], Any] = point_prompt
                      ) -> Iterator[Tuple[int, np.ndarray]]:
    """The propagation one slice at a time: yields ``(index, bool mask)`` for each new slice.

    For each direction, the next slice is prompted with ``prompt_from_mask`` of the largest
    8-connected component of the previous slice's mask (:func:`point_prompt` or
    :func:`box_prompt`); it stops at the first empty prediction, at the volume's border, or after
    ``max_slices`` slices. A caller (the effect's timer) may stop iterating at any time; each step
    is one model call.
    """
    from ..prompts import largest_component

    volume = _check_volume(volume)
    axis = _check_axis(axis)
    size = volume.shape[2 - axis]
    for step in directions:
        previous = np.asarray(start_mask, dtype=bool)
        for n in range(1, int(max_slices) + 1):
            index = start_index + step * n
            if not 0 <= index < size:
                break
            component = largest_component(previous)
            if not component.any():
                break
            prompt = prompt_from_mask(component, class_index)
            mask = predict_mask(predict, extract_slice(volume, axis, index), prompt, class_index)
            if not mask.any():
                break
            yield index, mask
            previous = mask


def propagate(predict: PredictFn, volume: np.ndarray, axis: int, start_index: int, start_mask: np.ndarray,
              class_index: int, max_slices: int, directions: Iterable[int] = (1, -1),
              prompt_from_mask: Callable[[np.ndarray, int], Any] = point_prompt) -> Dict[int, np.ndarray]:
    """All of :func:`propagation_steps` at once: ``{index: bool mask}`` (without the start slice)."""
    return dict(propagation_steps(predict, volume, axis, start_index, start_mask, class_index, max_slices,
                                  directions, prompt_from_mask))


def pick_model(current: Optional[str], history: Sequence[str]) -> Optional[str]:
    """The model the effect should use: the latest trained one unless the chosen one is newer.

    ``history``: the module's model path history, most recent first (``ctkPathLineEdit`` with
    setting key ``CPCSAM/Model``, to which the module adds each trained model). The first
    existing history entry replaces ``current`` when ``current`` is empty, missing, or older
    (file modification time) than it.
    """
    import os

    latest = next((p for p in history if p and os.path.isfile(p)), None)
    if latest is None:
        return current or None
    if not current or not os.path.isfile(current):
        return latest
    return latest if os.path.getmtime(latest) > os.path.getmtime(current) else current


def _segment(predict: PredictFn, volume: np.ndarray, axis: int, index: int, prompt, class_index: int,
             propagate_slices: int, prompt_from_mask) -> Dict[int, np.ndarray]:
    mask = predict_mask(predict, extract_slice(volume, axis, index), prompt, class_index)
    results = {int(index): mask}
    if propagate_slices > 0 and mask.any():
        results.update(propagate(predict, volume, axis, index, mask, class_index, propagate_slices,
                                 prompt_from_mask=prompt_from_mask))
    return results


def segment_with_points(predict: PredictFn, volume: np.ndarray, axis: int, index: int, points,
                        class_index: int, propagate_slices: int = 0) -> Dict[int, np.ndarray]:
    """Mask of ``class_index`` on slice ``index`` from the clicks, then (optionally) propagated.

    Returns ``{slice index: bool mask}``; the clicked slice is always in it (possibly empty).
    """
    volume = _check_volume(volume)
    if not points:
        raise InputError("at least one point is needed")
    return _segment(predict, volume, axis, index, list(points), class_index, propagate_slices, point_prompt)


def segment_with_box(predict: PredictFn, volume: np.ndarray, axis: int, index: int, box: Sequence[float],
                     class_index: int, propagate_slices: int = 0) -> Dict[int, np.ndarray]:
    """Mask of ``class_index`` on slice ``index`` from a box ``(x0, y0, x1, y1)`` in its pixels
    (``predict(slice2d, box)``, e.g. ``Predictor.predict_slice_with_box`` for that class), then
    (optionally) propagated with the box of each result. Returns ``{slice index: bool mask}``."""
    volume = _check_volume(volume)
    if len(box) != 4:
        raise InputError(f"a box is (x0, y0, x1, y1), got {box!r}")
    return _segment(predict, volume, axis, index, tuple(float(v) for v in box), class_index, propagate_slices,
                    box_prompt)


def modifier_for_slices(shape_kji: Sequence[int], axis: int, masks: Dict[int, np.ndarray]):
    """The modifier labelmap of ``masks``, cropped to the slices they cover.

    Returns ``(array, first, last)``: a uint8 ``[K, J, I]`` array spanning slices
    ``first..last`` along ``axis`` (the whole volume along the other axes), 1 inside the masks.
    """
    if not masks:
        raise InputError("no slice to write")
    axis = _check_axis(axis)
    first, last = min(masks), max(masks)
    shape = [int(s) for s in shape_kji]
    shape[2 - axis] = last - first + 1
    array = np.zeros(shape, dtype=np.uint8)
    for index, mask in masks.items():
        write_slice(array, axis, index - first, mask, 1)
    return array, first, last


def _oriented_image(array_kji: np.ndarray, extent, image_to_world):
    """A ``vtkOrientedImageData`` holding ``array_kji`` on ``extent`` with the given geometry."""
    import slicer
    import vtk
    from vtk.util import numpy_support

    image = slicer.vtkOrientedImageData()
    image.SetExtent(*[int(e) for e in extent])
    image.SetImageToWorldMatrix(image_to_world)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = np.ascontiguousarray(array_kji).ravel()
    image.Modified()
    return image


def write_slices_to_segment(modify: Callable, remove_mode: int, add_mode: int, shape_kji: Sequence[int],
                            axis: int, masks: Dict[int, np.ndarray], origin: Sequence[int], image_to_world):
    """Replace the selected segment on the slices of ``masks`` only; every other slice is kept.

    ``modify(modifier, mode, extent)`` applies a modifier labelmap to the segment: in the effect
    ``scriptedEffect.modifySelectedSegmentByLabelmap`` (with the effect's masking settings); in
    tests ``vtkSlicerSegmentEditorLogic.ModifySegmentByLabelmap``. ``remove_mode``/``add_mode``:
    that API's ``ModificationModeRemove``/``ModificationModeAdd``. ``origin``: the source image's
    extent start ``(i0, j0, k0)``; ``image_to_world``: its ``vtkMatrix4x4``.

    Two edits, both limited to the slices' extent: remove the segment's voxels on the modified
    slices, then add the new masks (an empty mask leaves its slice empty). Returns the extent.
    """
    array, first, last = modifier_for_slices(shape_kji, axis, masks)
    extent = list(slice_extent(shape_kji, axis, first, last, origin))
    eraser = np.zeros_like(array)
    for index in masks:
        write_slice(eraser, axis, index - first, np.ones(slice_shape(shape_kji, axis), bool), 1)
    modify(_oriented_image(eraser, extent, image_to_world), remove_mode, extent)
    if array.any():
        modify(_oriented_image(array, extent, image_to_world), add_mode, extent)
    return tuple(extent)
