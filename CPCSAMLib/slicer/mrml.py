"""MRML side of the Slicer module, without Qt: export a training job, load a result.

Everything here takes the MRML ``scene`` and the segmentations module logic
(``vtkSlicerSegmentationsModuleLogic``) as arguments, so it runs inside 3D Slicer
(``slicer.mrmlScene``, ``slicer.modules.segmentations.logic()``) and in plain Python with the
``slicer-core`` wheel (a ``vtkMRMLScene`` and a ``vtkSlicerSegmentationsModuleLogic`` whose
``SetMRMLScene`` was called), which is how the tests exercise it.

Geometry: MRML volumes hold an IJK-to-RAS matrix; files (NRRD through SimpleITK) hold LPS
origin/spacing/direction. :func:`sitk_image_from_volume` and :func:`ijk_to_ras_from_sitk` convert
between the two, so a volume written by :func:`export_job` and a label written by the engine on
that volume's geometry come back voxel for voxel on the same grid.

Two entry points:

* :func:`export_job` writes ``images/*.nrrd``, ``labels/*.nrrd`` (labelmaps exported from the
  segmentations **on their volume's geometry**, classes ``1..C`` named after the segments),
  ``manifest.json`` (see ``docs/ENGINE_API.md``) and ``job.json`` (the configuration, the class
  names and colors, where each file came from). Every input is validated before anything is
  written; on error it raises :class:`~CPCSAMLib.errors.InputError` and leaves the scene as it
  was (temporary nodes are removed in ``finally``).
* :func:`load_result` loads a label image into a segmentation node, one named, colored segment
  per class, with the reference geometry of the volume. It never overwrites segments silently.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..errors import InputError

__all__ = [
    "export_job",
    "load_result",
    "check_target_segmentation",
    "validate_volume",
    "volume_array",
    "volume_ijk_to_ras",
    "sitk_image_from_volume",
    "ijk_to_ras_from_sitk",
    "write_volume",
    "add_volume_from_sitk",
    "export_volume",
    "model_classes",
    "export_job_steps",
    "segment_terminology",
    "set_segment_terminology",
    "remember_result",
    "previous_result",
    "RESULT_ROLE",
    "DEFAULT_COLORS",
    "MANIFEST_NAME",
    "JOB_NAME",
]

MANIFEST_NAME = "manifest.json"
JOB_NAME = "job.json"

#: Colors given to classes that come without one (Slicer's first generic anatomy colors).
DEFAULT_COLORS = [
    (0.5, 0.68, 0.5),
    (0.95, 0.84, 0.57),
    (0.69, 0.48, 0.4),
    (0.44, 0.74, 0.84),
    (0.85, 0.4, 0.4),
    (0.57, 0.51, 0.8),
    (0.87, 0.65, 0.2),
    (0.2, 0.6, 0.6),
]

_LPS_FLIP = np.diag([-1.0, -1.0, 1.0])

#: Volume classes (and their subclasses) that hold several values per voxel in a way the
#: engine cannot use. (vtkMRMLVectorVolumeNode, used for RGB, derives from
#: vtkMRMLTensorVolumeNode, so the plain tensor class is matched exactly, in _is_four_d.)
_FOUR_D_CLASSES = (
    "vtkMRMLMultiVolumeNode",
    "vtkMRMLDiffusionWeightedVolumeNode",
    "vtkMRMLDiffusionTensorVolumeNode",
)


def _is_four_d(volume_node) -> bool:
    name = volume_node.GetClassName()
    if name == "vtkMRMLTensorVolumeNode":
        return True
    return any(name == cls or volume_node.IsA(cls) for cls in _FOUR_D_CLASSES)


# --------------------------------------------------------------------------------------------
# Volumes: arrays, geometry, SimpleITK images
# --------------------------------------------------------------------------------------------

def _name(node) -> str:
    if node is None:
        return "<none>"
    return node.GetName() or node.GetID() or node.GetClassName()


def volume_ijk_to_ras(volume_node) -> np.ndarray:
    """The volume's IJK-to-RAS matrix as a 4x4 numpy array (its own frame, no parent transform)."""
    import vtk

    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def _vtk_image_to_array(image_data) -> np.ndarray:
    """``[K, J, I]`` (or ``[K, J, I, C]``) copy of a ``vtkImageData``'s scalars."""
    from vtk.util import numpy_support

    scalars = image_data.GetPointData().GetScalars()
    dims = image_data.GetDimensions()
    comps = scalars.GetNumberOfComponents()
    array = numpy_support.vtk_to_numpy(scalars)
    shape = (dims[2], dims[1], dims[0]) + ((comps,) if comps > 1 else ())
    return np.array(array.reshape(shape), copy=True)


def volume_array(volume_node) -> np.ndarray:
    """Voxels of a volume node as ``[K, J, I]`` (``[K, J, I, C]`` for vector volumes), a copy."""
    image = volume_node.GetImageData() if volume_node is not None else None
    if image is None or image.GetPointData() is None or image.GetPointData().GetScalars() is None:
        raise InputError(f"Volume '{_name(volume_node)}' has no image data; load or select a volume "
                         "that holds voxels.")
    return _vtk_image_to_array(image)


def _is_rgb(image_data) -> bool:
    import vtk

    comps = image_data.GetNumberOfScalarComponents()
    return comps in (3, 4) and image_data.GetScalarType() == vtk.VTK_UNSIGNED_CHAR


def validate_volume(volume_node, role: str = "volume") -> None:
    """Raise :class:`InputError` unless ``volume_node`` is a 3D (or 2D) scalar or RGB volume."""
    if volume_node is None:
        raise InputError(f"No {role} was selected.")
    if not volume_node.IsA("vtkMRMLVolumeNode") or volume_node.IsA("vtkMRMLSegmentationNode"):
        raise InputError(f"{role.capitalize()} '{_name(volume_node)}' is a "
                         f"{volume_node.GetClassName()}, not an image volume.")
    if _is_four_d(volume_node):
        raise InputError(
            f"{role.capitalize()} '{_name(volume_node)}' is a 4D volume ({volume_node.GetClassName()}); "
            "CPC-SAM takes 3D or 2D images: extract one frame first (e.g. with the Sequences or "
            "MultiVolumeExplorer module).")
    image = volume_node.GetImageData()
    if image is None or image.GetPointData() is None or image.GetPointData().GetScalars() is None:
        raise InputError(f"{role.capitalize()} '{_name(volume_node)}' has no image data.")
    dims = image.GetDimensions()
    if min(dims) < 1 or int(np.prod(dims)) == 0:
        raise InputError(f"{role.capitalize()} '{_name(volume_node)}' is empty (dimensions {dims}).")
    comps = image.GetNumberOfScalarComponents()
    if comps > 1 and not _is_rgb(image):
        raise InputError(
            f"{role.capitalize()} '{_name(volume_node)}' has {comps} values per voxel: it is a 4D "
            "(multi-frame or multi-channel) volume. CPC-SAM takes 3D or 2D scalar or RGB images: "
            "extract one frame or channel first.")


def _grayscale(array: np.ndarray) -> np.ndarray:
    """RGB(A) ``[..., C]`` uint8 -> luminance uint8 (ITU-R BT.601 weights)."""
    rgb = array[..., :3].astype(np.float32)
    gray = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return np.clip(np.rint(gray), 0, 255).astype(np.uint8)


def _scalar_volume_array(volume_node) -> np.ndarray:
    """``[K, J, I]`` scalars of a validated volume (RGB converted to gray)."""
    array = volume_array(volume_node)
    if array.ndim == 4:
        array = _grayscale(array)
    return array


def _sitk_geometry_from_ijk_to_ras(ijk_to_ras: np.ndarray):
    """``(origin, spacing, direction)`` in LPS from a 4x4 IJK-to-RAS matrix."""
    m = np.asarray(ijk_to_ras, dtype=float)[:3, :3]
    spacing = np.linalg.norm(m, axis=0)
    if np.any(spacing <= 0):
        raise InputError(f"degenerate IJK-to-RAS matrix (spacing {spacing.tolist()})")
    direction = _LPS_FLIP @ (m / spacing)
    origin = _LPS_FLIP @ np.asarray(ijk_to_ras, dtype=float)[:3, 3]
    return origin, spacing, direction


def sitk_image_from_array(array: np.ndarray, ijk_to_ras: np.ndarray):
    """SimpleITK 3D image of a ``[K, J, I]`` array placed with an IJK-to-RAS matrix (LPS file frame)."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    origin, spacing, direction = _sitk_geometry_from_ijk_to_ras(ijk_to_ras)
    image.SetOrigin([float(v) for v in origin])
    image.SetSpacing([float(v) for v in spacing])
    image.SetDirection([float(v) for v in direction.ravel()])
    return image


def sitk_image_from_volume(volume_node, array: Optional[np.ndarray] = None):
    """The volume (or ``array`` on its grid) as a SimpleITK image with the volume's geometry."""
    if array is None:
        array = _scalar_volume_array(volume_node)
    return sitk_image_from_array(array, volume_ijk_to_ras(volume_node))


def ijk_to_ras_from_sitk(image) -> np.ndarray:
    """4x4 IJK-to-RAS matrix of a 3D (or 2D, placed at z = 0) SimpleITK image."""
    dim = image.GetDimension()
    direction = np.eye(3)
    spacing = np.ones(3)
    origin = np.zeros(3)
    direction[:dim, :dim] = np.asarray(image.GetDirection(), dtype=float).reshape(dim, dim)
    spacing[:dim] = image.GetSpacing()
    origin[:dim] = image.GetOrigin()
    matrix = np.eye(4)
    matrix[:3, :3] = _LPS_FLIP @ direction @ np.diag(spacing)
    matrix[:3, 3] = _LPS_FLIP @ origin
    return matrix


def add_volume_from_sitk(scene, image, name: str = "", labelmap: bool = False):
    """Add a volume node holding a SimpleITK image (geometry converted from LPS to RAS).

    2D images become single-slice volumes, as Slicer loads PNG files. Returns the node.
    """
    import SimpleITK as sitk
    import vtk
    from vtk.util import numpy_support

    if image.GetDimension() not in (2, 3):
        raise InputError(f"Only 2D and 3D images can be added, got {image.GetDimension()}D")
    array = sitk.GetArrayFromImage(image)
    comps = image.GetNumberOfComponentsPerPixel()
    if image.GetDimension() == 2:
        array = array[None]
    array = np.ascontiguousarray(array)
    if labelmap:
        cls = "vtkMRMLLabelMapVolumeNode"
    elif comps > 1:
        cls = "vtkMRMLVectorVolumeNode"
    else:
        cls = "vtkMRMLScalarVolumeNode"
    image_data = vtk.vtkImageData()
    image_data.SetDimensions(array.shape[2], array.shape[1], array.shape[0])
    flat = array.reshape(-1, comps) if comps > 1 else array.ravel()
    vtk_array = numpy_support.numpy_to_vtk(flat, deep=True,
                                           array_type=numpy_support.get_vtk_array_type(array.dtype))
    vtk_array.SetNumberOfComponents(comps)
    image_data.GetPointData().SetScalars(vtk_array)
    node = scene.AddNewNodeByClass(cls, name or "")
    node.SetIJKToRASMatrix(_matrix_to_vtk(ijk_to_ras_from_sitk(image)))
    node.SetAndObserveImageData(image_data)
    return node


def write_volume(image, path: Path, compress: bool = True) -> None:
    """Write a SimpleITK image atomically (temporary file in the same folder, then rename).

    ``compress=False`` for the training job's copies: several times faster to write, read once.
    """
    import SimpleITK as sitk

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=path.suffix or ".nrrd", dir=str(path.parent))
    os.close(fd)
    try:
        sitk.WriteImage(image, tmp, bool(compress))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _write_json(data, path: Path) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=".json", dir=str(path.parent))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _matrix_to_vtk(matrix: np.ndarray):
    import vtk

    out = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            out.SetElement(r, c, float(matrix[r][c]))
    return out


# --------------------------------------------------------------------------------------------
# Temporary nodes
# --------------------------------------------------------------------------------------------

class _TemporaryNodes:
    """Remove, on exit, every node added to the scene inside the ``with`` block.

    Exporting a labelmap adds display and color-table nodes besides the labelmap node itself;
    comparing the node IDs before and after catches all of them.
    """

    def __init__(self, scene):
        self.scene = scene
        self.before = set()

    def __enter__(self):
        self.before = _node_ids(self.scene)
        return self

    def __exit__(self, *exc):
        added = [node_id for node_id in _node_ids(self.scene) if node_id not in self.before]
        for node_id in added:
            node = self.scene.GetNodeByID(node_id)
            if node is not None:
                self.scene.RemoveNode(node)
        return False


def _node_ids(scene) -> List[str]:
    ids = []
    for i in range(scene.GetNumberOfNodes()):
        node = scene.GetNthNode(i)
        if node is not None and node.GetID():
            ids.append(node.GetID())
    return ids


# --------------------------------------------------------------------------------------------
# Segmentations -> labelmaps
# --------------------------------------------------------------------------------------------

def _segment_table(segmentation_node) -> List[Tuple[str, str, Tuple[float, float, float]]]:
    segmentation = segmentation_node.GetSegmentation()
    rows = []
    for i in range(segmentation.GetNumberOfSegments()):
        segment_id = segmentation.GetNthSegmentID(i)
        segment = segmentation.GetSegment(segment_id)
        rows.append((segment_id, segment.GetName(), tuple(float(c) for c in segment.GetColor())))
    return rows


def segment_terminology(segment) -> Optional[str]:
    """The segment's terminology entry (the ``TerminologyEntry`` tag, Slicer >= 5.8), or None."""
    import vtk

    if segment is None:
        return None
    value = vtk.reference("")
    if segment.GetTag(segment.GetTerminologyEntryTagName(), value) and str(value):
        return str(value)
    return None


def set_segment_terminology(segment, entry: Optional[str]) -> None:
    if entry:
        segment.SetTag(segment.GetTerminologyEntryTagName(), str(entry))


def _check_segmentation(segmentation_node, segment_ids, volume_node):
    """Validated ``[(segment_id, name, color)]`` of the chosen segments of a labeled pair."""
    if segmentation_node is None:
        raise InputError(f"Volume '{_name(volume_node)}' has no segmentation: choose the "
                         "segmentation that holds its annotation.")
    if not segmentation_node.IsA("vtkMRMLSegmentationNode"):
        raise InputError(f"'{_name(segmentation_node)}' is a {segmentation_node.GetClassName()}, "
                         "not a segmentation node; import it into a segmentation first "
                         "(Data module: right-click > Convert labelmap to segmentation node).")
    table = _segment_table(segmentation_node)
    if not table:
        raise InputError(f"Segmentation '{_name(segmentation_node)}' is empty: it has no segments "
                         "(and no reference geometry to export). Paint the classes in the Segment "
                         "Editor first.")
    by_id = {row[0]: row for row in table}
    if segment_ids is None:
        chosen = table
    else:
        segment_ids = list(segment_ids)
        if not segment_ids:
            raise InputError(f"No segment of segmentation '{_name(segmentation_node)}' was chosen.")
        unknown = [s for s in segment_ids if s not in by_id]
        if unknown:
            raise InputError(f"Segmentation '{_name(segmentation_node)}' has no segment with ID(s) "
                             f"{unknown}; its segments are {[row[0] for row in table]}.")
        chosen = [by_id[s] for s in segment_ids]
    names = [row[1] for row in chosen]
    if any(not n or not n.strip() for n in names):
        raise InputError(f"Segmentation '{_name(segmentation_node)}' has a segment without a name; "
                         "classes are matched by segment name: name every segment.")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InputError(f"Segmentation '{_name(segmentation_node)}' has several segments named "
                         f"{duplicates}; classes are matched by name: rename them.")
    return chosen


def _bounds_overlap(a: Sequence[float], b: Sequence[float]) -> bool:
    for axis in range(3):
        lo_a, hi_a = a[2 * axis], a[2 * axis + 1]
        lo_b, hi_b = b[2 * axis], b[2 * axis + 1]
        if lo_a > hi_a or lo_b > hi_b:  # invalid (empty) bounds
            return False
        if hi_a < lo_b or hi_b < lo_a:
            return False
    return True


def _segment_is_empty(segmentation_node, segment_id) -> Optional[bool]:
    """True/False when the segment's binary labelmap can be inspected, None otherwise."""
    segmentation = segmentation_node.GetSegmentation()
    name = "Binary labelmap"
    if not segmentation.ContainsRepresentation(name):
        return None
    segment = segmentation.GetSegment(segment_id)
    labelmap = segment.GetRepresentation(name) if segment is not None else None
    if labelmap is None or labelmap.GetPointData() is None or labelmap.GetPointData().GetScalars() is None:
        return True
    array = _vtk_image_to_array(labelmap)
    return not np.any(array == segment.GetLabelValue())


def _export_labelmap(scene, seg_logic, segmentation_node, segment_ids: List[str], volume_node) -> np.ndarray:
    """``[K, J, I]`` labelmap of ``segment_ids`` (values 1..n in that order) on the volume's grid."""
    import vtk

    with _TemporaryNodes(scene):
        labelmap_node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__CPCSAM_export__")
        ids = vtk.vtkStringArray()
        for segment_id in segment_ids:
            ids.InsertNextValue(segment_id)
        import slicer

        extent_mode = slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY
        ok = seg_logic.ExportSegmentsToLabelmapNode(segmentation_node, ids, labelmap_node, volume_node,
                                                    extent_mode)
        if not ok or labelmap_node.GetImageData() is None:
            raise InputError(f"Could not export segmentation '{_name(segmentation_node)}' onto the "
                             f"geometry of volume '{_name(volume_node)}'.")
        array = volume_array(labelmap_node)
        if not np.allclose(volume_ijk_to_ras(labelmap_node), volume_ijk_to_ras(volume_node), atol=1e-4) \
                or array.shape != _scalar_volume_array_shape(volume_node):
            raise InputError(f"Exporting segmentation '{_name(segmentation_node)}' did not give a "
                             f"labelmap on the grid of volume '{_name(volume_node)}'.")
    return array


def _scalar_volume_array_shape(volume_node) -> Tuple[int, int, int]:
    dims = volume_node.GetImageData().GetDimensions()
    return (dims[2], dims[1], dims[0])


def _safe_stem(name: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name or "volume").strip("._")
    return stem[:60] or "volume"


def _unpack_pair(pair):
    if isinstance(pair, dict):
        return pair.get("volume"), pair.get("segmentation"), pair.get("segment_ids")
    pair = tuple(pair)
    if len(pair) == 2:
        return pair[0], pair[1], None
    if len(pair) == 3:
        return pair[0], pair[1], pair[2]
    raise InputError(f"A labeled pair is (volume, segmentation[, segment_ids]); got {len(pair)} items.")


def export_job(scene, seg_logic, labeled, unlabeled=(), job_dir=None, config: Optional[dict] = None,
               validation=None) -> Path:
    """Write a training job folder from MRML nodes; return the path of its ``manifest.json``.

    All of :func:`export_job_steps` at once (see there).
    """
    steps = export_job_steps(scene, seg_logic, labeled, unlabeled, job_dir, config, validation)
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            return stop.value


def export_job_steps(scene, seg_logic, labeled, unlabeled=(), job_dir=None, config: Optional[dict] = None,
                     validation=None):
    """:func:`export_job` one volume at a time: a generator for a GUI timer (one step per tick).

    Yields ``{"phase": "segmentations" | "checking" | "writing", "done": i, "total": n, "name"}``
    after each labelmap export, volume check and volume write; its return value (``StopIteration.value``) is the manifest path. Every
    input is checked (phase "checking") before the first file is written. Stopping early (closing
    the generator) during "writing" leaves a partial folder without ``manifest.json``.

    ``labeled``: ``[(volume_node, segmentation_node, segment_ids or None), ...]`` (``None`` = all
    segments, in their order); the chosen segments become the classes, values ``1..C`` in the
    order of the first pair, matched **by name** in the other pairs. ``unlabeled``: volume nodes.
    ``validation``: optional pairs like ``labeled``, written to the manifest's ``validation``.
    ``config``: training options, stored in ``job.json``; its ``axis`` (0, 1, 2 or None, the
    default: the engine slices each volume along its largest spacing, and single-slice volumes
    along their single slice) goes to the manifest.

    Nothing is written, and the scene is left as it was, when an input is invalid
    (:class:`InputError`).
    """
    if scene is None or seg_logic is None:
        raise InputError("export_job needs the MRML scene and the segmentations logic.")
    if job_dir is None:
        raise InputError("export_job needs a job folder.")
    config = dict(config or {})
    labeled = [_unpack_pair(p) for p in (labeled or [])]
    validation = [_unpack_pair(p) for p in (validation or [])]
    unlabeled = [v for v in (unlabeled or [])]
    if not labeled:
        raise InputError("No labeled pair: CPC-SAM needs at least one volume with its segmentation "
                         "(the labeled data); the unlabeled volumes come on top of it.")

    # ---------------- validation: nothing is written before this block ends ----------------
    classes: List[dict] = []
    labeled_ids = set()
    prepared = []  # (role, volume, segmentation, chosen rows, label array)
    for role, pairs in (("labeled", labeled), ("validation", validation)):
        for volume_node, segmentation_node, segment_ids in pairs:
            validate_volume(volume_node, f"{role} volume")
            chosen = _check_segmentation(segmentation_node, segment_ids, volume_node)
            names = [row[1] for row in chosen]
            if not classes:
                segmentation = segmentation_node.GetSegmentation()
                classes = [{"name": name, "value": i + 1, "color": [round(c, 4) for c in color]}
                           for i, (_, name, color) in enumerate(chosen)]
                for c, (segment_id, _, _) in zip(classes, chosen):
                    terminology = segment_terminology(segmentation.GetSegment(segment_id))
                    if terminology:
                        c["terminology"] = terminology
            else:
                expected = [c["name"] for c in classes]
                if sorted(names) != sorted(expected):
                    missing = sorted(set(expected) - set(names))
                    extra = sorted(set(names) - set(expected))
                    raise InputError(
                        f"Segment names of '{_name(segmentation_node)}' do not match the classes "
                        f"{expected} (taken from '{_name(labeled[0][1])}'): missing {missing}, "
                        f"unexpected {extra}. Classes are matched by segment name: rename the "
                        "segments or choose the same segments in every pair.")
            # Order this pair's segments like the classes, so value c is class c everywhere.
            by_name = {row[1]: row for row in chosen}
            ordered_ids = [by_name[c["name"]][0] for c in classes]

            emptiness = [_segment_is_empty(segmentation_node, sid) for sid in ordered_ids]
            if emptiness and all(e is True for e in emptiness):
                raise InputError(
                    f"Segmentation '{_name(segmentation_node)}' is empty: its segment(s) "
                    f"{[c['name'] for c in classes]} have no voxel. Paint them first.")
            seg_bounds = [0.0] * 6
            segmentation_node.GetRASBounds(seg_bounds)
            vol_bounds = [0.0] * 6
            volume_node.GetRASBounds(vol_bounds)
            if not _bounds_overlap(seg_bounds, vol_bounds):
                raise InputError(
                    f"Segmentation '{_name(segmentation_node)}' and volume '{_name(volume_node)}' do "
                    "not overlap in space: pair each volume with the segmentation drawn on it.")
            label = _export_labelmap(scene, seg_logic, segmentation_node, ordered_ids, volume_node)
            if not np.any(label):
                raise InputError(
                    f"Segmentation '{_name(segmentation_node)}' does not overlap volume "
                    f"'{_name(volume_node)}': no segmented voxel lies inside the volume. Pair each "
                    "volume with the segmentation drawn on it.")
            prepared.append((role, volume_node, segmentation_node, ordered_ids, label))
            yield {"phase": "segmentations", "done": len(prepared), "total": len(labeled) + len(validation),
                   "name": _name(segmentation_node)}
            if role == "labeled":
                labeled_ids.add(volume_node.GetID())

    for volume_node in unlabeled:
        validate_volume(volume_node, "unlabeled volume")
        if volume_node.GetID() in labeled_ids:
            raise InputError(f"Volume '{_name(volume_node)}' is both labeled and unlabeled: remove it "
                             "from the unlabeled volumes.")
    if len({v.GetID() for v in unlabeled}) != len(unlabeled):
        raise InputError("The same volume is listed twice among the unlabeled volumes.")

    all_volumes = [p[1] for p in prepared] + unlabeled
    total = len(all_volumes)
    axis = config.get("axis")
    if axis is not None and (isinstance(axis, bool) or axis not in (0, 1, 2)):
        raise InputError(f"axis must be 0, 1, 2 (x, y, z) or None, got {axis!r}")

    images = []
    for done, volume_node in enumerate(all_volumes, 1):
        image = _scalar_volume_array(volume_node)
        if image.size and image.min() == image.max():
            raise InputError(f"Volume '{_name(volume_node)}' is constant (every voxel is "
                             f"{image.flat[0]}); there is nothing to segment in it.")
        images.append(image)
        yield {"phase": "checking", "done": done, "total": total, "name": _name(volume_node)}

    # ---------------- writing ----------------
    job_dir = Path(job_dir)
    (job_dir / "images").mkdir(parents=True, exist_ok=True)
    (job_dir / "labels").mkdir(parents=True, exist_ok=True)
    label_dtype = np.uint8 if len(classes) < 256 else np.uint16

    manifest = {"classes": [{"name": c["name"], "value": c["value"]} for c in classes],
                "labeled": [], "unlabeled": [], "axis": axis}
    if validation:
        manifest["validation"] = []
    job = {"format": "cpcsam-slicer-job", "version": 1, "created": time.time(), "config": config,
           "classes": classes, "labeled": [], "validation": [], "unlabeled": [], "axis": axis}

    index = 0
    for (role, volume_node, segmentation_node, ordered_ids, label), image in zip(prepared, images):
        stem = f"{index:03d}_{_safe_stem(volume_node.GetName())}"
        index += 1
        image_rel = f"images/{stem}.nrrd"
        label_rel = f"labels/{stem}.nrrd"
        write_volume(sitk_image_from_volume(volume_node, image), job_dir / image_rel, compress=False)
        write_volume(sitk_image_from_volume(volume_node, label.astype(label_dtype)), job_dir / label_rel)
        manifest[role].append({"image": image_rel, "label": label_rel})
        job[role].append({"image": image_rel, "label": label_rel,
                          "volume": volume_node.GetName(), "volume_id": volume_node.GetID(),
                          "segmentation": segmentation_node.GetName(),
                          "segmentation_id": segmentation_node.GetID(),
                          "segment_ids": list(ordered_ids)})
        yield {"phase": "writing", "done": index, "total": total, "name": _name(volume_node)}
    for volume_node, image in zip(unlabeled, images[len(prepared):]):
        stem = f"{index:03d}_{_safe_stem(volume_node.GetName())}"
        index += 1
        image_rel = f"images/{stem}.nrrd"
        write_volume(sitk_image_from_volume(volume_node, image), job_dir / image_rel, compress=False)
        manifest["unlabeled"].append(image_rel)
        job["unlabeled"].append({"image": image_rel, "volume": volume_node.GetName(),
                                 "volume_id": volume_node.GetID()})
        yield {"phase": "writing", "done": index, "total": total, "name": _name(volume_node)}

    _write_json(job, job_dir / JOB_NAME)
    manifest_path = job_dir / MANIFEST_NAME
    _write_json(manifest, manifest_path)
    return manifest_path


def export_volume(volume_node, path) -> Path:
    """Write one volume (validated; RGB as gray) to ``path`` on its own geometry, for prediction."""
    validate_volume(volume_node, "target volume")
    path = Path(path)
    write_volume(sitk_image_from_volume(volume_node), path)
    return path


# --------------------------------------------------------------------------------------------
# Results -> segmentation
# --------------------------------------------------------------------------------------------

def _normalise_classes(classes) -> List[dict]:
    if not classes:
        raise InputError("No class was given: the result cannot be named.")
    out = []
    for i, c in enumerate(classes):
        if isinstance(c, str):
            c = {"name": c, "value": i + 1}
        try:
            name = str(c["name"])
            value = int(c["value"])
        except (KeyError, TypeError, ValueError):
            raise InputError(f"A class is {{'name', 'value'[, 'color']}}; got {c!r}") from None
        color = c.get("color") or DEFAULT_COLORS[i % len(DEFAULT_COLORS)]
        if len(color) < 3:
            raise InputError(f"Color of class '{name}' must be (r, g, b) in 0..1; got {color!r}")
        color = tuple(float(v) for v in color[:3])
        if max(color) > 1.0:  # 0..255 colors
            color = tuple(v / 255.0 for v in color)
        if value == 0:
            raise InputError(f"Class '{name}' has value 0, which is the background.")
        entry = {"name": name, "value": value, "color": color}
        if c.get("terminology"):
            entry["terminology"] = str(c["terminology"])
        out.append(entry)
    values = [c["value"] for c in out]
    if len(set(values)) != len(values):
        raise InputError(f"Two classes share a label value: {values}")
    return out


def _read_label(label_path):
    import SimpleITK as sitk

    label_path = Path(label_path)
    if not label_path.is_file():
        raise InputError(f"Result '{label_path}' does not exist.")
    try:
        image = sitk.ReadImage(str(label_path))
    except RuntimeError as exc:
        raise InputError(f"Cannot read result '{label_path}': {exc}") from None
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"Result '{label_path}' is not a label image (it has "
                         f"{image.GetNumberOfComponentsPerPixel()} components per pixel).")
    if image.GetDimension() not in (2, 3):
        raise InputError(f"Result '{label_path}' is {image.GetDimension()}D; expected 2D or 3D.")
    return image


def _oriented_binary(mask_kji: np.ndarray, ijk_to_ras: np.ndarray):
    """``vtkOrientedImageData`` (uint8 0/1) of a ``[K, J, I]`` mask with an IJK-to-RAS matrix."""
    import slicer
    import vtk
    from vtk.util import numpy_support

    mask = np.ascontiguousarray(mask_kji, dtype=np.uint8)
    image = slicer.vtkOrientedImageData()
    image.SetDimensions(mask.shape[2], mask.shape[1], mask.shape[0])
    scalars = numpy_support.numpy_to_vtk(mask.ravel(), deep=True, array_type=vtk.VTK_UNSIGNED_CHAR)
    image.GetPointData().SetScalars(scalars)
    image.SetImageToWorldMatrix(_matrix_to_vtk(ijk_to_ras))
    return image


def _place_in_subject_hierarchy(scene, node, reference) -> None:
    """Put ``node`` under the same subject hierarchy parent as ``reference`` (when both have items)."""
    try:
        sh = scene.GetSubjectHierarchyNode()
    except AttributeError:
        sh = None
    if sh is None:
        return
    invalid = 0
    ref_item = sh.GetItemByDataNode(reference)
    if ref_item == invalid:
        return
    parent = sh.GetItemParent(ref_item)
    item = sh.GetItemByDataNode(node)
    if item == invalid:
        sh.CreateItem(parent, node)
    else:
        sh.SetItemParent(item, parent)


#: Node reference role from a volume to the segmentation CPC-SAM last wrote for it.
RESULT_ROLE = "CPCSAMResult"


def remember_result(volume_node, segmentation_node) -> None:
    """Record ``segmentation_node`` as the result of ``volume_node`` (saved with the scene)."""
    volume_node.SetNodeReferenceID(RESULT_ROLE, segmentation_node.GetID())


def previous_result(volume_node):
    """The segmentation CPC-SAM last wrote for ``volume_node`` if it still exists, else None.

    Apply reuses it on a rerun (its segments are replaced) instead of adding a new node.
    """
    node = volume_node.GetNodeReference(RESULT_ROLE) if volume_node is not None else None
    return node if node is not None and node.IsA("vtkMRMLSegmentationNode") else None


def check_target_segmentation(segmentation_node, overwrite: bool = False) -> None:
    """Raise :class:`InputError` unless a result may be written into ``segmentation_node``.

    ``None`` (a new node will be made) and an empty segmentation are fine; a segmentation that
    already holds segments only with ``overwrite=True``. Callers check this before running a
    prediction, so that nothing is computed for a result that would be refused.
    """
    if segmentation_node is None:
        return
    if not segmentation_node.IsA("vtkMRMLSegmentationNode"):
        raise InputError(f"'{_name(segmentation_node)}' is not a segmentation node.")
    if segmentation_node.GetSegmentation().GetNumberOfSegments() > 0 and not overwrite:
        raise InputError(
            f"Segmentation '{_name(segmentation_node)}' already has segments; CPC-SAM never "
            "overwrites them silently: choose a new segmentation or allow overwriting.")


def load_result(scene, seg_logic, label_path, reference_volume, classes, segmentation_node=None,
                overwrite: bool = False, name: Optional[str] = None):
    """Load a label image into a segmentation node and return the node.

    One segment per class (``classes``: ``[{"name", "value"[, "color"]}]``, colors in 0..1), named
    and colored after it, holding the voxels whose value is the class value (empty when the
    class was not predicted). The segmentation's reference geometry is the volume's.

    Without ``segmentation_node`` a NEW node is added (named ``name`` or "<volume> CPC-SAM"),
    placed next to its volume in the subject hierarchy. A given ``segmentation_node`` that
    already holds segments is only replaced with ``overwrite=True``; otherwise
    :class:`InputError` is raised and nothing changes.
    """
    if scene is None or seg_logic is None:
        raise InputError("load_result needs the MRML scene and the segmentations logic.")
    validate_volume(reference_volume, "reference volume")
    classes = _normalise_classes(classes)
    check_target_segmentation(segmentation_node, overwrite)

    image = _read_label(label_path)
    import SimpleITK as sitk

    array = sitk.GetArrayFromImage(image)
    ref_dims = reference_volume.GetImageData().GetDimensions()
    if image.GetDimension() == 2:
        if ref_dims[2] == 1 and array.shape == (ref_dims[1], ref_dims[0]):
            ijk_to_ras = volume_ijk_to_ras(reference_volume)  # a 2D result of a single-slice volume
        else:
            ijk_to_ras = ijk_to_ras_from_sitk(image)
        array = array[None]
    else:
        ijk_to_ras = ijk_to_ras_from_sitk(image)
    values = set(int(v) for v in np.unique(array)) - {0}
    unknown = sorted(values - {c["value"] for c in classes})
    if unknown:
        raise InputError(f"Result '{label_path}' holds label value(s) {unknown} that are not among the "
                         f"classes {[(c['name'], c['value']) for c in classes]}.")

    created = segmentation_node is None
    node = segmentation_node
    before = set(_node_ids(scene))
    try:
        if created:
            node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode",
                                           name or f"{reference_volume.GetName()} CPC-SAM")
            node.CreateDefaultDisplayNodes()
        else:
            node.GetSegmentation().RemoveAllSegments()
        node.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume)
        if reference_volume.GetTransformNodeID():
            node.SetAndObserveTransformNodeID(reference_volume.GetTransformNodeID())
        segmentation = node.GetSegmentation()
        mode = getattr(seg_logic, "MODE_REPLACE", 0)
        for c in classes:
            segment_id = segmentation.AddEmptySegment("", c["name"], list(c["color"]))
            set_segment_terminology(segmentation.GetSegment(segment_id), c.get("terminology"))
            mask = array == c["value"]
            if mask.any():
                oriented = _oriented_binary(mask, ijk_to_ras)
                if not seg_logic.SetBinaryLabelmapToSegment(oriented, node, segment_id, mode):
                    raise InputError(f"Could not set the voxels of class '{c['name']}' into "
                                     f"segmentation '{_name(node)}'.")
        if created:
            _place_in_subject_hierarchy(scene, node, reference_volume)
        remember_result(reference_volume, node)
    except BaseException:
        if created:
            for node_id in set(_node_ids(scene)) - before:
                extra = scene.GetNodeByID(node_id)
                if extra is not None:
                    scene.RemoveNode(extra)
        raise
    return node


# --------------------------------------------------------------------------------------------
# Model classes (names, values, colors) without importing torch
# --------------------------------------------------------------------------------------------

def model_classes(model_path) -> List[dict]:
    """Classes of a trained model: ``[{"name", "value", "color"}]``.

    Looked up next to the checkpoint without loading it: ``job.json`` (written by
    :func:`export_job`, has the colors) in the model's folder or its parents (2 levels), then
    ``config.json`` / ``manifest.json`` in the model's folder. Raises :class:`InputError` when
    none is found (the caller may then read the checkpoint's model card with the engine).
    """
    model_path = Path(model_path)
    folder = model_path.parent
    for candidate in (folder / JOB_NAME, folder.parent / JOB_NAME, folder.parent.parent / JOB_NAME):
        classes = _classes_from_json(candidate)
        if classes:
            return classes
    for candidate in (folder / "config.json", folder / MANIFEST_NAME):
        classes = _classes_from_json(candidate)
        if classes:
            return classes
    raise InputError(f"No class list found next to model '{model_path}' (job.json or config.json).")


def model_prompt_type(model_path) -> str:
    """``"box"`` or ``"point"``: the prompts a trained model takes (the Segment Editor effect draws
    boxes or takes clicks). Read from the ``config.json`` written beside the checkpoint, without
    loading it; else from the checkpoint's model card (loads it with torch)."""
    from ..config import TrainConfig, resolve_prompt_type

    config_path = Path(model_path).parent / "config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))["config"]
        return resolve_prompt_type(config.get("prompt_type", TrainConfig.prompt_type),
                                   config.get("backbone", TrainConfig.backbone))
    except (OSError, ValueError, KeyError, TypeError):
        from ..checkpoint import load_checkpoint

        return str(load_checkpoint(model_path)["model_card"]["prompt_type"])


def _classes_from_json(path: Path) -> Optional[List[dict]]:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    candidates = [data.get("classes") if isinstance(data, dict) else None]
    if isinstance(data, dict):
        for key in ("model_card", "card", "config", "manifest"):
            sub = data.get(key)
            if isinstance(sub, dict):
                candidates.append(sub.get("classes"))
    for classes in candidates:
        if isinstance(classes, list) and classes and all(isinstance(c, dict) and "name" in c for c in classes):
            out = []
            for i, c in enumerate(classes):
                entry = {"name": c["name"], "value": int(c.get("value", i + 1))}
                if c.get("color"):
                    entry["color"] = list(c["color"])
                if c.get("terminology"):
                    entry["terminology"] = str(c["terminology"])
                out.append(entry)
            return out
    return None
