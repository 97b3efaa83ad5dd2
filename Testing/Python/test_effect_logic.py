"""Qt-free logic of the Segment Editor effect, on real volumes and labels (breast1, prostate).

The model is replaced by an injected "oracle" predict function that answers from the real
ground-truth label: the connected region of the label under a foreground click (what a perfect
model would return), so the propagation loop, the slice bookkeeping and the orientation
conventions are tested on real anatomy without torch.
"""

from __future__ import annotations

import types

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from CPCSAMLib import InputError, io
from CPCSAMLib.slicer import effect_logic as el
from CPCSAMLib.slicer.mrml import ijk_to_ras_from_sitk
from CPCSAMLib.prompts import center_point, largest_component


@pytest.fixture(scope="module")
def breast(nrrd3d_dir):
    image = sitk.ReadImage(str(nrrd3d_dir / "breast1_image.nrrd"))
    label = sitk.ReadImage(str(nrrd3d_dir / "breast1_label.nrrd"))
    return image, sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(label)


class Oracle:
    """predict(slice2d, points) -> class indices, from the ground truth of the matching slice."""

    NEAR = 3.0

    def __init__(self, volume, label, axis, class_index=1):
        self.volume, self.label, self.axis, self.class_index = volume, label, axis, class_index
        self.calls = []

    def _index_of(self, slice2d):
        size = self.volume.shape[2 - self.axis]
        for index in range(size):
            if np.array_equal(el.extract_slice(self.volume, self.axis, index).astype(np.float32), slice2d):
                return index
        raise AssertionError("unknown slice")

    def __call__(self, slice2d, points):
        index = self._index_of(slice2d)
        self.calls.append((index, list(points)))
        truth = el.extract_slice(self.label, self.axis, index) > 0
        regions, _ = ndimage.label(truth, structure=np.ones((3, 3)))
        # the region under the click, or the nearest one within NEAR pixels (a model does not
        # need the click exactly inside a ring-shaped or thin structure)
        distance, (rows, cols) = ndimage.distance_transform_edt(regions == 0, return_indices=True)
        out = np.zeros(truth.shape, np.uint8)

        def region_at(x, y):
            if distance[y, x] > self.NEAR:
                return 0
            return regions[rows[y, x], cols[y, x]]

        for x, y, c in points:
            if c > 0 and region_at(x, y):
                out[regions == region_at(x, y)] = self.class_index
        for x, y, c in points:  # background clicks remove their region
            if c == 0 and region_at(x, y):
                out[regions == region_at(x, y)] = 0
        return out


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_slices_match_the_engine_slicing(breast, axis):
    image, volume, _ = breast
    engine_slices, used = io.to_slices(image, axis)  # SimpleITK axis a == IJK axis a
    assert used == axis
    for index in range(engine_slices.shape[0]):
        np.testing.assert_array_equal(el.extract_slice(volume, axis, index), engine_slices[index])
    assert el.slice_shape(volume.shape, axis) == engine_slices.shape[1:]


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_point_conventions(breast, axis):
    _, volume, _ = breast
    rng = np.random.default_rng(axis)
    for _ in range(20):
        i, j, k = (int(rng.integers(n)) for n in volume.shape[::-1])
        x, y = el.ijk_to_xy((i, j, k), axis)
        index = (i, j, k)[axis]
        # (x, y) = (column, row) in the slice
        assert el.extract_slice(volume, axis, index)[y, x] == volume[k, j, i]
        assert el.xy_to_ijk(x, y, axis, index) == (i, j, k)


def test_view_axis_and_slice_index_from_real_geometry(breast):
    image, volume, _ = breast
    ijk_to_ras = ijk_to_ras_from_sitk(image)  # LPS file -> RAS, flipped I and J
    assert el.closest_ijk_axis(ijk_to_ras, [0, 0, 1]) == 2  # axial view
    assert el.closest_ijk_axis(ijk_to_ras, [1, 0, 0]) == 0  # sagittal
    assert el.closest_ijk_axis(ijk_to_ras, [0, 1, 0]) == 1  # coronal
    assert el.axis_alignment(ijk_to_ras, [0, 0, -1]) == pytest.approx(0.0)
    tilt = np.radians(20)
    oblique = [0, np.sin(tilt), np.cos(tilt)]
    assert el.closest_ijk_axis(ijk_to_ras, oblique) == 2
    assert el.axis_alignment(ijk_to_ras, oblique) == pytest.approx(20.0)
    # the RAS centre of voxel (10, 50, 9) lies on K slice 9; a point 0.4 voxel off still does
    centre = (ijk_to_ras @ np.array([10, 50, 9, 1.0]))[:3]
    spacing_k = image.GetSpacing()[2]
    axial = [0, 0, 1]
    assert el.locate_click(ijk_to_ras, centre, axial, volume.shape) == (2, 9, (10, 50))
    assert el.locate_click(ijk_to_ras, centre + [0, 0, 0.4 * spacing_k], axial, volume.shape) == (2, 9, (10, 50))
    assert el.locate_click(ijk_to_ras, centre + [0, 0, 0.6 * spacing_k], axial, volume.shape)[:2] == (2, 10)
    assert el.locate_click(ijk_to_ras, centre + [0, 0, 100.0], axial, volume.shape) is None
    # a sagittal view: the I slice 10, pixel (j, k)
    assert el.locate_click(ijk_to_ras, centre, [1, 0, 0], volume.shape) == (0, 10, (50, 9))
    # an image whose extent starts at (2, 0, 4): indices relative to it
    assert el.locate_click(ijk_to_ras, centre, axial, volume.shape, origin=(2, 0, 4)) == (2, 5, (8, 50))
    assert el.locate_click(ijk_to_ras, centre, axial, volume.shape, origin=(11, 0, 0)) is None
    np.testing.assert_allclose(el.ras_to_ijk(ijk_to_ras, centre), [10, 50, 9], atol=1e-9)


def test_a_drag_on_real_geometry(breast):
    image, volume, _ = breast
    ijk_to_ras = ijk_to_ras_from_sitk(image)
    ras = lambda i, j, k: (ijk_to_ras @ np.array([i, j, k, 1.0]))[:3]  # noqa: E731
    axial = [0, 0, 1]
    # the slice comes from the press; the release is read on that slice (a hand drifts off it)
    assert el.locate_drag(ijk_to_ras, ras(10, 50, 9), ras(40, 70, 9.3), axial, volume.shape) == (2, 9, (10, 50), (40, 70))
    # released beyond the image: clipped to the slice's last column and row
    k, j, i = volume.shape
    assert el.locate_drag(ijk_to_ras, ras(10, 50, 9), ras(i + 30, j + 5, 9), axial, volume.shape) == (
        2, 9, (10, 50), (i - 1, j - 1))
    # pressed outside the volume: no drag
    assert el.locate_drag(ijk_to_ras, ras(-5, 50, 9), ras(40, 70, 9), axial, volume.shape) is None


def test_write_slice_and_extent(breast):
    _, volume, label = breast
    labelmap = np.zeros(volume.shape, np.uint8)
    labelmap[3] = 1  # another slice stays as it is
    mask = el.extract_slice(label, 2, 9) > 0
    el.write_slice(labelmap, 2, 9, mask, value=1)
    np.testing.assert_array_equal(labelmap[9], mask)
    assert labelmap[3].all()
    el.write_slice(labelmap, 2, 9, np.zeros_like(mask))  # replaces, never merges
    assert not labelmap[9].any()
    mask_j = el.extract_slice(label, 1, 60) > 0
    el.write_slice(labelmap, 1, 60, mask_j, value=2)
    np.testing.assert_array_equal(labelmap[:, 60, :] == 2, mask_j)
    with pytest.raises(InputError, match="does not fit"):
        el.write_slice(labelmap, 0, 1, mask)
    assert el.slice_extent(volume.shape, 2, 9) == (0, 44, 0, 119, 9, 9)
    assert el.slice_extent(volume.shape, 0, 12, 10) == (10, 12, 0, 119, 0, 20)
    assert el.slice_extent(volume.shape, 1, 5, origin=(1, 2, 3)) == (1, 45, 7, 7, 3, 23)
    with pytest.raises(InputError, match="outside"):
        el.extract_slice(volume, 2, 21)


def test_click_then_propagate_on_the_real_tumour(breast):
    _, volume, label = breast
    oracle = Oracle(volume, label, axis=2)
    truth9 = label[9] > 0
    x, y = center_point(largest_component(truth9))
    masks = el.segment_with_points(oracle, volume, 2, 9, [(x, y, 1)], class_index=1, propagate_slices=5)
    # the tumour spans slices 8..10: propagation finds both neighbours and stops at empty ones
    assert sorted(masks) == [8, 9, 10]
    for index in (8, 9, 10):
        assert masks[index].any()
        assert not (masks[index] & ~(label[index] > 0)).any()  # inside the real tumour
    # each neighbour was prompted with the centre point of the previous slice's result
    prompted = {index: points for index, points in oracle.calls}
    assert prompted[10] == [(*center_point(largest_component(masks[9])), 1)]
    assert prompted[8] == [(*center_point(largest_component(masks[9])), 1)]
    # slices 7 and 11 were tried (empty there) and nothing beyond
    assert sorted(prompted) == [7, 8, 9, 10, 11]
    modifier, first, last = el.modifier_for_slices(volume.shape, 2, masks)
    assert (first, last) == (8, 10) and modifier.shape == (3,) + volume.shape[1:]
    assert modifier.sum() == sum(m.sum() for m in masks.values())
    np.testing.assert_array_equal(modifier[1], masks[9])


def test_propagation_limits(breast):
    _, volume, label = breast
    oracle = Oracle(volume, label, axis=2)
    start = label[9] > 0
    assert sorted(el.propagate(oracle, volume, 2, 9, start, 1, max_slices=1)) == [8, 10]
    assert el.propagate(oracle, volume, 2, 9, start, 1, max_slices=0) == {}
    assert sorted(el.propagate(oracle, volume, 2, 9, start, 1, max_slices=5, directions=(1,))) == [10]
    # an empty start stops at once, without calling the model
    oracle.calls.clear()
    assert el.propagate(oracle, volume, 2, 9, np.zeros_like(start), 1, max_slices=5) == {}
    assert oracle.calls == []


def test_propagation_stops_at_the_volume_border(nrrd3d_dir):
    image = sitk.ReadImage(str(nrrd3d_dir / "prostate_phantom_subvolume.nrrd"))
    volume = sitk.GetArrayFromImage(image)
    label = (sitk.GetArrayFromImage(sitk.ReadImage(str(nrrd3d_dir / "prostate_phantom_subvolume-label.nrrd"))) == 9)
    label = label.astype(np.uint8)
    occupied = [k for k in range(label.shape[0]) if label[k].any()]
    last = occupied[-1]
    oracle = Oracle(volume, label, axis=2)
    found = el.propagate(oracle, volume, 2, last, label[last] > 0, 1, max_slices=50)
    assert max(found) < volume.shape[0] and min(found) >= 0
    assert all(0 <= i < volume.shape[0] for i, _ in oracle.calls)


def test_background_click_and_session(breast):
    _, volume, label = breast
    oracle = Oracle(volume, label, axis=2)
    session = el.PointPromptSession()
    x, y = center_point(largest_component(label[9] > 0))
    points = session.add(("seg", "S1", 2, 9), x, y, 1, foreground=True)
    assert points == [(x, y, 1)]
    first = el.segment_with_points(oracle, volume, 2, 9, points, 1)[9]
    assert first.any()
    points = session.add(("seg", "S1", 2, 9), x, y, 1, foreground=False)  # Shift+click: label 0
    assert points == [(x, y, 1), (x, y, 0)]
    assert not el.segment_with_points(oracle, volume, 2, 9, points, 1)[9].any()
    assert session.has_foreground()
    # another slice starts a new prompt
    assert session.add(("seg", "S1", 2, 10), 1, 2, 1) == [(1, 2, 1)]
    session.reset()
    assert session.points == [] and session.key is None
    with pytest.raises(InputError, match="at least one point"):
        el.segment_with_points(oracle, volume, 2, 9, [], 1)


def test_predict_mask_checks_shape(breast):
    _, volume, _ = breast
    with pytest.raises(InputError, match="prediction has shape"):
        el.predict_mask(lambda s, p: np.zeros((3, 3)), el.extract_slice(volume, 2, 0), [(0, 0, 1)], 1)


# ---------------------------------------------------------------------------- writing to a segment
# The effect writes through the Segment Editor's modification API. slicer-core has its real
# implementation (vtkSlicerSegmentEditorLogic.ModifySegmentByLabelmap, what
# qSlicerSegmentEditorAbstractEffect.modifySelectedSegmentByLabelmap calls), so the write is
# checked here on a real segmentation node.

@pytest.fixture()
def editor(breast):
    slicer = pytest.importorskip("slicer")
    from CPCSAMLib.slicer import mrml

    image, volume, _ = breast
    scene = slicer.vtkMRMLScene()
    seg_logic = slicer.vtkSlicerSegmentationsModuleLogic()
    seg_logic.SetMRMLScene(scene)
    volume_node = mrml.add_volume_from_sitk(scene, image, "breast")
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    segmentation.CreateDefaultDisplayNodes()
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
    segment_id = segmentation.GetSegmentation().AddEmptySegment("tumour")
    editor_node = scene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
    logic = slicer.vtkSlicerSegmentEditorLogic()
    logic.SetMRMLScene(scene)
    logic.SetSegmentEditorNode(editor_node)
    editor_node.SetAndObserveSegmentationNode(segmentation)
    editor_node.SetAndObserveSourceVolumeNode(volume_node)
    editor_node.SetSelectedSegmentID(segment_id)
    import vtk

    ijk_to_ras = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(ijk_to_ras)

    def modify(modifier, mode, extent):
        logic.ModifySegmentByLabelmap(segmentation, segment_id, modifier, mode, extent, True, False)

    def segment_array():
        with mrml._TemporaryNodes(scene):
            labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
            assert seg_logic.ExportSegmentsToLabelmapNode(segmentation, [segment_id], labelmap, volume_node,
                                                          slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY)
            return mrml.volume_array(labelmap) > 0

    def write(masks, axis=2):
        return el.write_slices_to_segment(modify, logic.ModificationModeRemove, logic.ModificationModeAdd,
                                          volume.shape, axis, masks, (0, 0, 0), ijk_to_ras)

    yield types.SimpleNamespace(logic=logic, modify=modify, segment_array=segment_array, write=write,
                                ijk_to_ras=ijk_to_ras, shape=volume.shape)
    scene.Clear(1)


def _disk(shape2d, centre, radius):
    yy, xx = np.mgrid[0:shape2d[0], 0:shape2d[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 < radius ** 2


def test_a_new_slice_keeps_earlier_results_and_painting(editor):
    shape2d = editor.shape[1:]
    # "manual painting" on slice 1, the way Paint writes (Add within its extent)
    painted = np.zeros(editor.shape, np.uint8)
    painted[1][_disk(shape2d, (60, 20), 8)] = 1
    extent = list(el.slice_extent(editor.shape, 2, 1))
    editor.modify(el._oriented_image(painted[1:2], extent, editor.ijk_to_ras), editor.logic.ModificationModeAdd,
                  extent)
    result3, result6 = _disk(shape2d, (50, 25), 10), _disk(shape2d, (70, 15), 6)
    editor.write({3: result3})
    editor.write({6: result6})
    segment = editor.segment_array()
    np.testing.assert_array_equal(segment[3], result3)  # the slice-3 result survived the slice-6 write
    np.testing.assert_array_equal(segment[6], result6)
    np.testing.assert_array_equal(segment[1], painted[1] > 0)  # manual painting survived
    others = [k for k in range(editor.shape[0]) if k not in (1, 3, 6)]
    assert not segment[others].any()


def test_rewriting_a_slice_replaces_it_and_propagated_slices_are_written(editor):
    shape2d = editor.shape[1:]
    editor.write({3: _disk(shape2d, (50, 25), 10)})
    smaller = _disk(shape2d, (50, 25), 4)
    editor.write({2: smaller, 3: smaller, 4: _disk(shape2d, (52, 25), 3)})  # a click plus propagation
    segment = editor.segment_array()
    np.testing.assert_array_equal(segment[3], smaller)  # replaced, not merged with the larger disk
    np.testing.assert_array_equal(segment[2], smaller)
    assert segment[4].sum() == _disk(shape2d, (52, 25), 3).sum()
    editor.write({3: np.zeros(shape2d, bool)})  # an empty result empties its slice only
    segment = editor.segment_array()
    assert not segment[3].any() and segment[2].any() and segment[4].any()


def test_other_axes_write_only_their_slices(editor):
    k, j, i = editor.shape
    editor.write({3: _disk((j, i), (50, 25), 10)})
    sagittal = np.zeros((k, j), bool)
    sagittal[5:15, 40:80] = True
    editor.write({30: sagittal}, axis=0)  # I slice 30: [K, J]
    segment = editor.segment_array()
    np.testing.assert_array_equal(segment[:, :, 30], sagittal)
    expected3 = _disk((j, i), (50, 25), 10)
    expected3[:, 30] = sagittal[3]  # slice 3 changed only where it crosses I = 30
    np.testing.assert_array_equal(segment[3], expected3)


def test_the_set_mode_would_erase_earlier_slices(editor):
    """Why the effect does not use ModificationModeSet: Set clears the segment outside the extent."""
    shape2d = editor.shape[1:]
    editor.write({3: _disk(shape2d, (50, 25), 10)})
    array, first, _ = el.modifier_for_slices(editor.shape, 2, {6: _disk(shape2d, (70, 15), 6)})
    extent = list(el.slice_extent(editor.shape, 2, first))
    editor.modify(el._oriented_image(array, extent, editor.ijk_to_ras), editor.logic.ModificationModeSet, extent)
    segment = editor.segment_array()
    assert segment[6].any() and not segment[3].any()


def test_propagation_steps_can_be_stopped(breast):
    _, volume, label = breast
    oracle = Oracle(volume, label, axis=2)
    steps = el.propagation_steps(oracle, volume, 2, 9, label[9] > 0, 1, max_slices=5)
    index, mask = next(steps)  # one model call per step: the effect's timer does one per tick
    assert index == 10 and mask.any() and len(oracle.calls) == 1
    steps.close()  # Stop: no further model call
    assert len(oracle.calls) == 1
    assert sorted(dict(el.propagation_steps(oracle, volume, 2, 9, label[9] > 0, 1, 5))) == [8, 10]


def test_the_effect_picks_the_latest_trained_model(tmp_path):
    import os

    old, new = tmp_path / "old.pt", tmp_path / "new.pt"
    old.write_bytes(b"x")
    new.write_bytes(b"y")
    os.utime(old, (1_000_000, 1_000_000))
    os.utime(new, (2_000_000, 2_000_000))
    history = [str(new), str(old)]  # most recent first, as ctkPathLineEdit keeps it
    assert el.pick_model("", history) == str(new)
    assert el.pick_model(str(tmp_path / "deleted.pt"), history) == str(new)
    assert el.pick_model(str(old), history) == str(new)  # a newer model was trained since
    chosen = tmp_path / "chosen.pt"
    chosen.write_bytes(b"z")  # newest file: the user's own choice stays
    assert el.pick_model(str(chosen), history) == str(chosen)
    assert el.pick_model(str(old), [str(tmp_path / "gone.pt")]) == str(old)
    assert el.pick_model("", []) is None


class BoxOracle(Oracle):
    """predict(slice2d, box) -> class indices: the ground-truth regions that overlap the box, cut
    to it (what a perfect box-prompted model would return)."""

    def __call__(self, slice2d, box):
        index = self._index_of(slice2d)
        self.calls.append((index, tuple(box)))
        truth = el.extract_slice(self.label, self.axis, index) > 0
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        inside = np.zeros_like(truth)
        inside[max(0, y0):y1 + 1, max(0, x0):x1 + 1] = True
        return (truth & inside).astype(np.uint8) * self.class_index


def test_drag_box_then_propagate_with_boxes_on_the_real_tumour(breast):
    _, volume, label = breast
    oracle = BoxOracle(volume, label, axis=2)
    tumour = largest_component(label[9] > 0)
    rows, cols = np.nonzero(tumour)
    # a drag from the lower right to the upper left corner: the same box
    box = el.box_from_corners((cols.max() + 2, rows.max() + 2), (cols.min() - 2, rows.min() - 2))
    assert box == (cols.min() - 2, rows.min() - 2, cols.max() + 2, rows.max() + 2)
    masks = el.segment_with_box(oracle, volume, 2, 9, box, class_index=1, propagate_slices=5)
    assert sorted(masks) == [8, 9, 10]
    np.testing.assert_array_equal(masks[9], tumour)
    prompted = dict(oracle.calls)
    # each neighbour was prompted with the box (10 % margin) of the previous slice's result
    assert prompted[10] == el.box_prompt(largest_component(masks[9]), 1)
    assert prompted[8] == el.box_prompt(largest_component(masks[9]), 1)
    assert sorted(prompted) == [7, 8, 9, 10, 11]
    x0, y0, x1, y1 = prompted[10]
    w, h = cols.max() - cols.min() + 1, rows.max() - rows.min() + 1
    assert x0 < cols.min() and x1 > cols.max() and (x1 - x0) <= 1.3 * w + 2 and (y1 - y0) <= 1.3 * h + 2
    with pytest.raises(InputError, match="a box is"):
        el.segment_with_box(oracle, volume, 2, 9, (1, 2, 3), 1)


def test_a_short_drag_is_a_click_and_a_click_boxes_the_component_under_it(breast):
    _, _, label = breast
    assert el.box_from_corners((10, 10), (12, 11)) is None  # under MIN_DRAG_PIXELS on both axes
    assert el.box_from_corners((10, 10), (10, 10 + el.MIN_DRAG_PIXELS)) == (10, 10, 10, 10 + el.MIN_DRAG_PIXELS)
    labels = (label[9] > 0).astype(np.uint8)
    tumour = largest_component(labels > 0)
    x, y = center_point(tumour)
    box = el.box_at_click(labels, x, y, 1)
    assert box == el.box_prompt(tumour, 1)
    # just outside the component still selects it; far away or another class does not
    rows, cols = np.nonzero(tumour)
    edge_row = rows[np.argmin(cols)]
    assert el.box_at_click(labels, int(cols.min()) - 2, int(edge_row), 1) == box
    assert el.box_at_click(labels, 0, 0, 1) is None
    assert el.box_at_click(labels, x, y, 2) is None
    with pytest.raises(InputError, match="outside"):
        el.box_at_click(labels, labels.shape[1], 0, 1)
