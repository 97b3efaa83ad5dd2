"""CPCSAMLib.mrml against a real MRML scene (slicer-core): export a job, load a result.

Volumes come from real files: the 3D NRRD volumes are read by Slicer's own volume reader
(vtkMRMLVolumeArchetypeStorageNode); BUSI PNGs (which that reader cannot open without the Slicer
application) are read with SimpleITK and added with the same LPS->RAS placement Slicer uses.
Segmentations are made by Slicer's ImportLabelmapToSegmentationNode from the real label maps.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer")

from CPCSAMLib import InputError
from CPCSAMLib.errors import CheckpointError
from CPCSAMLib.slicer import mrml  # noqa: E402
from CPCSAMLib import dataset, io  # noqa: E402


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------

@pytest.fixture()
def scene():
    s = slicer.vtkMRMLScene()
    logic = slicer.vtkSlicerSegmentationsModuleLogic()
    logic.SetMRMLScene(s)  # must come before any segment is added
    s._cpcsam_seg_logic = logic  # keep it alive with the scene
    yield s
    s.Clear(1)


@pytest.fixture()
def seg_logic(scene):
    return scene._cpcsam_seg_logic


def read_nrrd(scene, path: Path, labelmap: bool = False, name: str = ""):
    """Read a NRRD with Slicer's volume reader into a new volume node."""
    node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode",
                                   name or path.stem)
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    assert storage.ReadData(node) == 1, f"Slicer could not read {path}"
    return node


def segmentation_from_labelmap(scene, seg_logic, labelmap_node, names=None, name="seg"):
    """Segmentation node made by Slicer from a labelmap node (one segment per label value)."""
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    seg.CreateDefaultDisplayNodes()
    assert seg_logic.ImportLabelmapToSegmentationNode(labelmap_node, seg)
    segmentation = seg.GetSegmentation()
    if names:
        for i, new in enumerate(names):
            segmentation.GetSegment(segmentation.GetNthSegmentID(i)).SetName(new)
    scene.RemoveNode(labelmap_node)
    return seg


def busi_pair(scene, seg_logic, busi_dir: Path, case: str, segment_name="lesion"):
    image = mrml.add_volume_from_sitk(scene, sitk.ReadImage(str(busi_dir / "images" / f"{case}.png")), case)
    mask = mrml.add_volume_from_sitk(scene, sitk.ReadImage(str(busi_dir / "masks" / f"{case}.png")),
                                     f"{case}_mask", labelmap=True)
    seg = segmentation_from_labelmap(scene, seg_logic, mask, [segment_name], name=f"{case} segmentation")
    return image, seg


def segment_ids(seg):
    s = seg.GetSegmentation()
    return [s.GetNthSegmentID(i) for i in range(s.GetNumberOfSegments())]


def segment_mask_on(seg_logic, scene, seg, segment_id, volume):
    """Voxels of one segment exported by Slicer onto ``volume``'s grid, as [K, J, I] bool."""
    with mrml._TemporaryNodes(scene):
        lm = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
        assert seg_logic.ExportSegmentsToLabelmapNode(seg, [segment_id], lm, volume,
                                                      slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY)
        return mrml.volume_array(lm) > 0


def node_count(scene):
    return scene.GetNumberOfNodes()


# --------------------------------------------------------------------------------------------
# export_job
# --------------------------------------------------------------------------------------------

def test_export_busi_job(scene, seg_logic, busi_dir, tmp_path):
    v1, s1 = busi_pair(scene, seg_logic, busi_dir, "benign_001")
    v2, s2 = busi_pair(scene, seg_logic, busi_dir, "malignant_001")
    u1 = mrml.add_volume_from_sitk(scene, sitk.ReadImage(str(busi_dir / "images" / "benign_002.png")),
                                   "benign_002")
    s1.GetSegmentation().GetSegment(segment_ids(s1)[0]).SetColor(0.9, 0.1, 0.2)
    before = node_count(scene)
    job = tmp_path / "job"
    config = {"iterations": 2, "batch_size": 2, "lr": 1e-3}
    manifest_path = mrml.export_job(scene, seg_logic, [(v1, s1, None), (v2, s2, None)], [u1], job, config)

    assert node_count(scene) == before  # temporary export nodes are gone
    assert manifest_path == job / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    assert manifest["classes"] == [{"name": "lesion", "value": 1}]
    assert len(manifest["labeled"]) == 2 and len(manifest["unlabeled"]) == 1
    assert manifest["axis"] is None
    # The engine's own manifest parser accepts it, every listed file exists.
    parsed = dataset.load_manifest(manifest_path)
    assert [c.name for c in parsed.classes] == ["lesion"] and len(parsed.labeled) == 2

    for (case, vol), pair in zip([("benign_001", v1), ("malignant_001", v2)], manifest["labeled"]):
        image = sitk.ReadImage(str(job / pair["image"]))
        label = sitk.ReadImage(str(job / pair["label"]))
        png = sitk.GetArrayFromImage(sitk.ReadImage(str(busi_dir / "images" / f"{case}.png")))
        mask = sitk.GetArrayFromImage(sitk.ReadImage(str(busi_dir / "masks" / f"{case}.png")))
        assert image.GetSize() == (png.shape[1], png.shape[0], 1)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(image)[0], png)
        lab = sitk.GetArrayFromImage(label)[0]
        assert set(np.unique(lab)) == {0, 1}
        np.testing.assert_array_equal(lab == 1, mask > 0)  # voxel for voxel
        # label on the image's grid, accepted by the engine's reader
        io.check_label(io._read_label_image(job / pair["label"]), job / pair["label"],
                       io.load_image(job / pair["image"]), [1])

    job_json = json.loads((job / "job.json").read_text())
    assert job_json["config"] == config
    assert job_json["classes"][0]["name"] == "lesion" and job_json["classes"][0]["value"] == 1
    assert job_json["classes"][0]["color"] == pytest.approx([0.9, 0.1, 0.2])
    assert job_json["labeled"][0]["volume"] == "benign_001"
    assert job_json["unlabeled"][0]["volume"] == "benign_002"


def test_export_3d_nrrd_keeps_geometry(scene, seg_logic, nrrd3d_dir, tmp_path):
    vol = read_nrrd(scene, nrrd3d_dir / "breast1_image.nrrd", name="breast1")
    lab = read_nrrd(scene, nrrd3d_dir / "breast1_label.nrrd", labelmap=True)
    seg = segmentation_from_labelmap(scene, seg_logic, lab, ["tumor"])
    before = node_count(scene)
    manifest_path = mrml.export_job(scene, seg_logic, [(vol, seg, None)], [], tmp_path / "job", {})
    assert node_count(scene) == before
    pair = json.loads(manifest_path.read_text())["labeled"][0]
    original = sitk.ReadImage(str(nrrd3d_dir / "breast1_image.nrrd"))
    written = sitk.ReadImage(str(tmp_path / "job" / pair["image"]))
    label = sitk.ReadImage(str(tmp_path / "job" / pair["label"]))
    original_label = sitk.GetArrayFromImage(sitk.ReadImage(str(nrrd3d_dir / "breast1_label.nrrd")))
    assert written.GetSize() == original.GetSize() == (45, 120, 21)
    for image in (written, label):
        np.testing.assert_allclose(image.GetOrigin(), original.GetOrigin(), atol=1e-4)
        np.testing.assert_allclose(image.GetSpacing(), original.GetSpacing(), atol=1e-6)
        np.testing.assert_allclose(image.GetDirection(), original.GetDirection(), atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), sitk.GetArrayFromImage(original))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(label) == 1, original_label == 1)
    # and the engine accepts the pair with its geometry check
    io.load_label(tmp_path / "job" / pair["label"], io.load_image(tmp_path / "job" / pair["image"]), [1])


def test_export_multilabel_order_and_selection(scene, seg_logic, nrrd3d_dir, tmp_path):
    vol = read_nrrd(scene, nrrd3d_dir / "prostate_phantom_subvolume.nrrd", name="prostate")
    lab = read_nrrd(scene, nrrd3d_dir / "prostate_phantom_subvolume-label.nrrd", labelmap=True)
    seg = segmentation_from_labelmap(scene, seg_logic, lab, ["one", "seven", "eight", "nine"])
    original = sitk.GetArrayFromImage(sitk.ReadImage(str(nrrd3d_dir / "prostate_phantom_subvolume-label.nrrd")))
    ids = segment_ids(seg)

    # all segments: classes 1..4 in segment order
    m = mrml.export_job(scene, seg_logic, [(vol, seg, None)], [], tmp_path / "all", {})
    manifest = json.loads(m.read_text())
    assert manifest["classes"] == [{"name": n, "value": i + 1}
                                   for i, n in enumerate(["one", "seven", "eight", "nine"])]
    exported = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "all" / manifest["labeled"][0]["label"])))
    for value, original_value in zip([1, 2, 3, 4], [1, 7, 8, 9]):
        np.testing.assert_array_equal(exported == value, original == original_value)

    # a selection of two segments, in the chosen order
    m = mrml.export_job(scene, seg_logic, [(vol, seg, [ids[3], ids[1]])], [], tmp_path / "two", {})
    manifest = json.loads(m.read_text())
    assert [c["name"] for c in manifest["classes"]] == ["nine", "seven"]
    exported = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "two" / manifest["labeled"][0]["label"])))
    assert set(np.unique(exported)) == {0, 1, 2}
    np.testing.assert_array_equal(exported == 1, original == 9)
    np.testing.assert_array_equal(exported == 2, original == 7)


def test_classes_are_matched_by_name_across_pairs(scene, seg_logic, nrrd3d_dir, tmp_path):
    vol = read_nrrd(scene, nrrd3d_dir / "prostate_phantom_subvolume.nrrd", name="p1")
    seg1 = segmentation_from_labelmap(
        scene, seg_logic, read_nrrd(scene, nrrd3d_dir / "prostate_phantom_subvolume-label.nrrd", True),
        ["a", "b", "c", "d"], name="seg1")
    seg2 = segmentation_from_labelmap(
        scene, seg_logic, read_nrrd(scene, nrrd3d_dir / "prostate_phantom_subvolume-label.nrrd", True),
        ["d", "c", "b", "a"], name="seg2")  # same voxels, names in the reverse order
    m = mrml.export_job(scene, seg_logic, [(vol, seg1, None), (vol, seg2, None)], [], tmp_path / "job", {})
    manifest = json.loads(m.read_text())
    first = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "job" / manifest["labeled"][0]["label"])))
    second = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "job" / manifest["labeled"][1]["label"])))
    # class "a" is value 1 in both files although it is the 4th segment of seg2
    np.testing.assert_array_equal(second == 1, first == 4)
    np.testing.assert_array_equal(second == 4, first == 1)


def test_rgb_volume_is_exported_as_gray(scene, seg_logic, busi_dir, tmp_path):
    gray = sitk.ReadImage(str(busi_dir / "images" / "benign_003.png"))
    arr = sitk.GetArrayFromImage(gray)
    rgb = sitk.GetImageFromArray(np.stack([arr, arr, arr], axis=-1), isVector=True)
    vol = mrml.add_volume_from_sitk(scene, rgb, "rgb")
    assert vol.IsA("vtkMRMLVectorVolumeNode") and vol.GetImageData().GetNumberOfScalarComponents() == 3
    mask = mrml.add_volume_from_sitk(scene, sitk.ReadImage(str(busi_dir / "masks" / "benign_003.png")),
                                     "m", labelmap=True)
    seg = segmentation_from_labelmap(scene, seg_logic, mask, ["lesion"])
    m = mrml.export_job(scene, seg_logic, [(vol, seg, None)], [], tmp_path / "job", {})
    image = sitk.ReadImage(str(tmp_path / "job" / json.loads(m.read_text())["labeled"][0]["image"]))
    assert image.GetNumberOfComponentsPerPixel() == 1
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image)[0], arr)


# --------------------------------------------------------------------------------------------
# bad inputs: a specific InputError, nothing written, scene unchanged
# --------------------------------------------------------------------------------------------

def _expect_input_error(scene, job_dir: Path, call, match: str):
    before = node_count(scene)
    ids_before = [scene.GetNthNode(i).GetID() for i in range(before)]
    with pytest.raises(InputError, match=match):
        call()
    assert node_count(scene) == before
    assert [scene.GetNthNode(i).GetID() for i in range(before)] == ids_before
    assert not job_dir.exists() or not any(job_dir.rglob("*")), "nothing may be written on error"


def test_no_labeled_pair(scene, seg_logic, busi_dir, tmp_path):
    u = mrml.add_volume_from_sitk(scene, sitk.ReadImage(str(busi_dir / "images" / "benign_002.png")), "u")
    job = tmp_path / "job"
    _expect_input_error(scene, job, lambda: mrml.export_job(scene, seg_logic, [], [u], job, {}),
                        "No labeled pair")


def test_empty_segmentation(scene, seg_logic, busi_dir, tmp_path):
    vol, _ = busi_pair(scene, seg_logic, busi_dir, "benign_001")
    empty = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "empty")
    job = tmp_path / "job"
    _expect_input_error(scene, job, lambda: mrml.export_job(scene, seg_logic, [(vol, empty, None)], [], job, {}),
                        r"'empty' is empty: it has no segments")
    # segments without any voxel (and so without reference geometry)
    blank = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "blank")
    blank.GetSegmentation().AddEmptySegment("", "lesion", [1.0, 0.0, 0.0])
    _expect_input_error(scene, job, lambda: mrml.export_job(scene, seg_logic, [(vol, blank, None)], [], job, {}),
                        r"'blank' is empty: its segment\(s\) \['lesion'\] have no voxel")


def test_volume_and_segmentation_do_not_overlap(scene, seg_logic, nrrd3d_dir, tmp_path):
    lab = read_nrrd(scene, nrrd3d_dir / "breast1_label.nrrd", labelmap=True)
    seg = segmentation_from_labelmap(scene, seg_logic, lab, ["tumor"])
    far_image = sitk.ReadImage(str(nrrd3d_dir / "breast1_image.nrrd"))
    far_image.SetOrigin([o + 1000.0 for o in far_image.GetOrigin()])
    far = mrml.add_volume_from_sitk(scene, far_image, "far")
    job = tmp_path / "job"
    _expect_input_error(scene, job, lambda: mrml.export_job(scene, seg_logic, [(far, seg, None)], [], job, {}),
                        "do not overlap")
    # bounding boxes overlap but no segmented voxel lies inside the volume: two voxels at
    # opposite corners of the breast grid, and a volume cropped from its middle
    grid = sitk.ReadImage(str(nrrd3d_dir / "breast1_image.nrrd"))
    corners = np.zeros(sitk.GetArrayFromImage(grid).shape, np.uint8)
    corners[0, 0, 0] = corners[-1, -1, -1] = 1
    corner_image = sitk.GetImageFromArray(corners)
    corner_image.CopyInformation(grid)
    corner_seg = segmentation_from_labelmap(
        scene, seg_logic, mrml.add_volume_from_sitk(scene, corner_image, "corners", labelmap=True),
        ["tumor"], name="corner seg")
    middle = mrml.add_volume_from_sitk(scene, grid[10:30, 40:80, 5:15], "middle")
    _expect_input_error(scene, job,
                        lambda: mrml.export_job(scene, seg_logic, [(middle, corner_seg, None)], [], job, {}),
                        "'corner seg' does not overlap volume 'middle': no segmented voxel")


def test_four_d_volumes_are_refused(scene, seg_logic, busi_dir, tmp_path):
    _, seg = busi_pair(scene, seg_logic, busi_dir, "benign_001")
    arr = sitk.GetArrayFromImage(sitk.ReadImage(str(busi_dir / "images" / "benign_001.png"))).astype(np.float32)
    frames = sitk.GetImageFromArray(np.stack([arr, arr * 0.5, arr * 0.25, arr], axis=-1), isVector=True)
    multi = mrml.add_volume_from_sitk(scene, frames, "frames")  # 4 float components per voxel
    job = tmp_path / "job"
    _expect_input_error(scene, job, lambda: mrml.export_job(scene, seg_logic, [(multi, seg, None)], [], job, {}),
                        "'frames' has 4 values per voxel: it is a 4D")
    # as an unlabeled volume too
    vol, seg2 = busi_pair(scene, seg_logic, busi_dir, "benign_003")
    _expect_input_error(scene, job, lambda: mrml.export_job(scene, seg_logic, [(vol, seg2, None)], [multi], job, {}),
                        "Unlabeled volume 'frames' has 4 values per voxel")
    dwi = scene.AddNewNodeByClass("vtkMRMLDiffusionWeightedVolumeNode", "dwi")
    dwi.SetAndObserveImageData(multi.GetImageData())
    _expect_input_error(scene, job, lambda: mrml.export_job(scene, seg_logic, [(vol, seg2, None)], [dwi], job, {}),
                        "'dwi' is a 4D volume")


def test_segment_names_must_match_across_pairs(scene, seg_logic, busi_dir, tmp_path):
    v1, s1 = busi_pair(scene, seg_logic, busi_dir, "benign_001", "lesion")
    v2, s2 = busi_pair(scene, seg_logic, busi_dir, "malignant_001", "tumour")
    job = tmp_path / "job"
    _expect_input_error(scene, job,
                        lambda: mrml.export_job(scene, seg_logic, [(v1, s1, None), (v2, s2, None)], [], job, {}),
                        r"do not match the classes \['lesion'\].*missing \['lesion'\], unexpected \['tumour'\]")


def test_duplicate_and_unknown_segments(scene, seg_logic, nrrd3d_dir, tmp_path):
    vol = read_nrrd(scene, nrrd3d_dir / "prostate_phantom_subvolume.nrrd", name="p")
    seg = segmentation_from_labelmap(
        scene, seg_logic, read_nrrd(scene, nrrd3d_dir / "prostate_phantom_subvolume-label.nrrd", True),
        ["a", "a", "b", "c"])
    job = tmp_path / "job"
    _expect_input_error(scene, job, lambda: mrml.export_job(scene, seg_logic, [(vol, seg, None)], [], job, {}),
                        r"several segments named \['a'\]")
    _expect_input_error(scene, job, lambda: mrml.export_job(scene, seg_logic, [(vol, seg, ["nope"])], [], job, {}),
                        r"no segment with ID\(s\) \['nope'\]")


def test_other_bad_inputs(scene, seg_logic, busi_dir, tmp_path):
    vol, seg = busi_pair(scene, seg_logic, busi_dir, "benign_001")
    job = tmp_path / "job"
    _expect_input_error(scene, job, lambda: mrml.export_job(scene, seg_logic, [(vol, seg, None)], [vol], job, {}),
                        "both labeled and unlabeled")
    _expect_input_error(scene, job, lambda: mrml.export_job(scene, seg_logic, [(vol, vol, None)], [], job, {}),
                        "not a segmentation node")
    _expect_input_error(scene, job, lambda: mrml.export_job(scene, seg_logic, [(None, seg, None)], [], job, {}),
                        "No labeled volume was selected")
    no_data = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "no data")
    _expect_input_error(scene, job, lambda: mrml.export_job(scene, seg_logic, [(no_data, seg, None)], [], job, {}),
                        "'no data' has no image data")
    _expect_input_error(scene, job, lambda: mrml.export_job(scene, seg_logic, [(vol, seg, None)], [], job, {"axis": 5}),
                        "axis must be")
    flat = mrml.add_volume_from_sitk(scene, sitk.Image(64, 64, sitk.sitkUInt8), "flat")
    _expect_input_error(scene, job, lambda: mrml.export_job(scene, seg_logic, [(vol, seg, None)], [flat], job, {}),
                        "'flat' is constant")


# --------------------------------------------------------------------------------------------
# load_result
# --------------------------------------------------------------------------------------------

def _geometry_of(segmentation_node):
    """Reference image geometry of a segmentation as (4x4 IJK-to-RAS, extent)."""
    param = segmentation_node.GetSegmentation().GetConversionParameter(
        slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName())
    image = slicer.vtkOrientedImageData()
    slicer.vtkSegmentationConverter.DeserializeImageGeometry(param, image, False)
    import vtk
    m = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)]), image.GetExtent()


def test_load_result_multilabel(scene, seg_logic, nrrd3d_dir):
    vol = read_nrrd(scene, nrrd3d_dir / "prostate_phantom_subvolume.nrrd", name="prostate")
    label_path = nrrd3d_dir / "prostate_phantom_subvolume-label.nrrd"
    original = sitk.GetArrayFromImage(sitk.ReadImage(str(label_path)))
    classes = [{"name": "one", "value": 1, "color": [1.0, 0.0, 0.0]},
               {"name": "seven", "value": 7, "color": [0.0, 1.0, 0.0]},
               {"name": "eight", "value": 8, "color": [0, 0, 255]},  # 0..255 colors are accepted
               {"name": "nine", "value": 9},
               {"name": "absent", "value": 20, "color": [0.5, 0.5, 0.5]}]
    before = node_count(scene)
    seg = mrml.load_result(scene, seg_logic, label_path, vol, classes)
    assert node_count(scene) > before and seg.GetName() == "prostate CPC-SAM"
    segmentation = seg.GetSegmentation()
    ids = segment_ids(seg)
    assert [segmentation.GetSegment(i).GetName() for i in ids] == ["one", "seven", "eight", "nine", "absent"]
    assert segmentation.GetSegment(ids[0]).GetColor() == pytest.approx((1.0, 0.0, 0.0))
    assert segmentation.GetSegment(ids[2]).GetColor() == pytest.approx((0.0, 0.0, 1.0))
    assert segmentation.GetSegment(ids[3]).GetColor() == pytest.approx(mrml.DEFAULT_COLORS[3])
    # reference geometry = the volume's
    ijk_to_ras, extent = _geometry_of(seg)
    np.testing.assert_allclose(ijk_to_ras, mrml.volume_ijk_to_ras(vol), atol=1e-6)
    dims = vol.GetImageData().GetDimensions()
    assert extent == (0, dims[0] - 1, 0, dims[1] - 1, 0, dims[2] - 1)
    # voxel counts, and voxels, per class
    for segment_id, value in zip(ids, [1, 7, 8, 9, 20]):
        mask = segment_mask_on(seg_logic, scene, seg, segment_id, vol)
        assert mask.sum() == (original == value).sum()
        np.testing.assert_array_equal(mask, original == value)
    assert segment_mask_on(seg_logic, scene, seg, ids[4], vol).sum() == 0


def test_load_result_round_trip_busi(scene, seg_logic, busi_dir, tmp_path):
    vol, seg = busi_pair(scene, seg_logic, busi_dir, "benign_001")
    m = mrml.export_job(scene, seg_logic, [(vol, seg, None)], [], tmp_path / "job", {})
    label = tmp_path / "job" / json.loads(m.read_text())["labeled"][0]["label"]
    result = mrml.load_result(scene, seg_logic, label, vol, [{"name": "lesion", "value": 1}], name="result")
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(busi_dir / "masks" / "benign_001.png"))) > 0
    got = segment_mask_on(seg_logic, scene, result, segment_ids(result)[0], vol)
    np.testing.assert_array_equal(got[0], mask)
    # a 2D label of the single-slice volume is placed on its slice too
    label2d = tmp_path / "label2d.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(mask.astype(np.uint8)), str(label2d))
    result2 = mrml.load_result(scene, seg_logic, label2d, vol, [{"name": "lesion", "value": 1}])
    np.testing.assert_array_equal(segment_mask_on(seg_logic, scene, result2, segment_ids(result2)[0], vol)[0], mask)


def test_load_result_never_overwrites(scene, seg_logic, busi_dir, tmp_path):
    vol, seg = busi_pair(scene, seg_logic, busi_dir, "benign_001")
    m = mrml.export_job(scene, seg_logic, [(vol, seg, None)], [], tmp_path / "job", {})
    label = tmp_path / "job" / json.loads(m.read_text())["labeled"][0]["label"]
    before_ids = segment_ids(seg)
    before = node_count(scene)
    with pytest.raises(InputError, match="already has segments; CPC-SAM never overwrites"):
        mrml.load_result(scene, seg_logic, label, vol, [{"name": "result", "value": 1}], segmentation_node=seg)
    assert segment_ids(seg) == before_ids and node_count(scene) == before
    assert seg.GetSegmentation().GetSegment(before_ids[0]).GetName() == "lesion"
    # explicit overwrite replaces the segments, in the same node
    out = mrml.load_result(scene, seg_logic, label, vol, [{"name": "result", "value": 1}],
                           segmentation_node=seg, overwrite=True)
    assert out is seg and node_count(scene) == before
    assert [seg.GetSegmentation().GetSegment(i).GetName() for i in segment_ids(seg)] == ["result"]
    # an empty given node is filled without asking
    empty = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "empty")
    assert mrml.load_result(scene, seg_logic, label, vol, [{"name": "x", "value": 1}],
                            segmentation_node=empty) is empty
    assert empty.GetSegmentation().GetNumberOfSegments() == 1


def test_load_result_bad_inputs_leave_scene_unchanged(scene, seg_logic, nrrd3d_dir, tmp_path):
    vol = read_nrrd(scene, nrrd3d_dir / "prostate_phantom_subvolume.nrrd", name="prostate")
    label_path = nrrd3d_dir / "prostate_phantom_subvolume-label.nrrd"
    before = node_count(scene)
    with pytest.raises(InputError, match=r"label value\(s\) \[7, 8, 9\] that are not among the classes"):
        mrml.load_result(scene, seg_logic, label_path, vol, [{"name": "one", "value": 1}])
    with pytest.raises(InputError, match="does not exist"):
        mrml.load_result(scene, seg_logic, tmp_path / "missing.nrrd", vol, [{"name": "one", "value": 1}])
    with pytest.raises(InputError, match="share a label value"):
        mrml.load_result(scene, seg_logic, label_path, vol, [{"name": "a", "value": 1}, {"name": "b", "value": 1}])
    assert node_count(scene) == before


def test_load_result_is_placed_next_to_its_volume(scene, seg_logic, nrrd3d_dir):
    vol = read_nrrd(scene, nrrd3d_dir / "prostate_phantom_subvolume.nrrd", name="prostate")
    sh = scene.GetSubjectHierarchyNode()
    study = sh.CreateStudyItem(sh.GetSceneItemID(), "Study 1")
    sh.CreateItem(study, vol)
    seg = mrml.load_result(scene, seg_logic, nrrd3d_dir / "prostate_phantom_subvolume-label.nrrd", vol,
                           [{"name": n, "value": v} for n, v in [("a", 1), ("b", 7), ("c", 8), ("d", 9)]])
    assert sh.GetItemParent(sh.GetItemByDataNode(seg)) == study


def test_model_classes_from_job_json(tmp_path):
    (tmp_path / "job.json").write_text(json.dumps({"classes": [{"name": "lesion", "value": 1, "color": [1, 0, 0]}]}))
    (tmp_path / "output").mkdir()
    assert mrml.model_classes(tmp_path / "output" / "model_best.pt") == [
        {"name": "lesion", "value": 1, "color": [1, 0, 0]}]
    with pytest.raises(InputError, match="No class list"):
        mrml.model_classes(tmp_path / "elsewhere" / "deep" / "x" / "model.pt")


def test_model_prompt_type_from_the_config_beside_the_checkpoint(tmp_path):
    """The effect draws boxes for box models and takes clicks for point models: the type comes from
    the training's config.json (the --prompt-type rule), without loading the checkpoint."""
    model = tmp_path / "model_best.pt"
    model.write_bytes(b"not read")
    for config, expected in [({"backbone": "litemedsam", "prompt_type": "auto"}, "box"),
                             ({"backbone": "sam_vit_b", "prompt_type": "auto"}, "point"),
                             ({"backbone": "litemedsam", "prompt_type": "point"}, "point"),
                             ({"backbone": "sam_vit_b", "prompt_type": "box"}, "box"),
                             ({}, "box")]:  # the defaults: LiteMedSAM, auto
        (tmp_path / "config.json").write_text(json.dumps({"config": config, "classes": []}))
        assert mrml.model_prompt_type(model) == expected, config
    # no config.json: the checkpoint's card is read (here: not a checkpoint, so its error)
    (tmp_path / "config.json").unlink()
    with pytest.raises(CheckpointError, match="not a readable CPC-SAM checkpoint"):
        mrml.model_prompt_type(model)


# --------------------------------------------------------------------------------------------
# panel expectations: terminology carried over, results reused, stepwise export, RGB volumes
# --------------------------------------------------------------------------------------------

TUMOR = ("Segmentation category and type - 3D Slicer General Anatomy list~SCT^49755003^Morphologically Altered "
         "Structure~SCT^108369006^Tumor~^^~Anatomic codes - DICOM master list~^^~^^")


def test_terminology_of_the_training_segments_reaches_the_result(scene, seg_logic, busi_dir, tmp_path):
    vol, seg = busi_pair(scene, seg_logic, busi_dir, "benign_001")
    segment = seg.GetSegmentation().GetSegment(segment_ids(seg)[0])
    mrml.set_segment_terminology(segment, TUMOR)
    m = mrml.export_job(scene, seg_logic, [(vol, seg, None)], [], tmp_path / "job" , {})
    job = json.loads((tmp_path / "job" / mrml.JOB_NAME).read_text())
    assert job["classes"][0]["terminology"] == TUMOR
    model = tmp_path / "job" / "model" / "model_best.pt"
    model.parent.mkdir()
    model.write_bytes(b"not read")
    classes = mrml.model_classes(model)
    assert classes[0]["terminology"] == TUMOR
    label = tmp_path / "job" / json.loads(m.read_text())["labeled"][0]["label"]
    result = mrml.load_result(scene, seg_logic, label, vol, classes)
    assert mrml.segment_terminology(result.GetSegmentation().GetNthSegment(0)) == TUMOR
    # Slicer gives an imported segment its default terminology: carried over exactly as it is
    vol2, seg2 = busi_pair(scene, seg_logic, busi_dir, "malignant_001")
    default = mrml.segment_terminology(seg2.GetSegmentation().GetNthSegment(0))
    assert default and default != TUMOR
    mrml.export_job(scene, seg_logic, [(vol2, seg2, None)], [], tmp_path / "job2", {})
    assert json.loads((tmp_path / "job2" / mrml.JOB_NAME).read_text())["classes"][0]["terminology"] == default


def test_a_rerun_reuses_the_previous_result(scene, seg_logic, busi_dir, tmp_path):
    vol, seg = busi_pair(scene, seg_logic, busi_dir, "benign_001")
    m = mrml.export_job(scene, seg_logic, [(vol, seg, None)], [], tmp_path / "job", {})
    label = tmp_path / "job" / json.loads(m.read_text())["labeled"][0]["label"]
    classes = [{"name": "lesion", "value": 1}]
    assert mrml.previous_result(vol) is None
    first = mrml.load_result(scene, seg_logic, label, vol, classes)
    assert mrml.previous_result(vol) is first
    count = node_count(scene)
    again = mrml.load_result(scene, seg_logic, label, vol, classes, segmentation_node=mrml.previous_result(vol),
                             overwrite=True)
    assert again is first and node_count(scene) == count  # no new node on a rerun
    assert first.GetSegmentation().GetNumberOfSegments() == 1
    scene.RemoveNode(first)
    assert mrml.previous_result(vol) is None  # deleted: the next run makes a new one


def test_export_steps_report_progress_and_write_only_after_checking(scene, seg_logic, busi_dir, tmp_path):
    v1, s1 = busi_pair(scene, seg_logic, busi_dir, "benign_001")
    u1 = mrml.add_volume_from_sitk(scene, sitk.ReadImage(str(busi_dir / "images" / "benign_002.png")), "u1")
    job = tmp_path / "job"
    steps = mrml.export_job_steps(scene, seg_logic, [(v1, s1, None)], [u1], job, {})
    seen = []
    for item in steps:
        seen.append((item["phase"], item["done"], item["total"]))
        if item["phase"] != "writing":
            assert not job.exists() or not any(job.rglob("*.nrrd"))
    assert seen == [("segmentations", 1, 1), ("checking", 1, 2), ("checking", 2, 2), ("writing", 1, 2),
                    ("writing", 2, 2)]
    assert (job / mrml.MANIFEST_NAME).is_file()


def test_colour_vector_volume_is_exported_as_luminance(scene, seg_logic, busi_dir, tmp_path):
    """A vtkMRMLVectorVolumeNode (colour PNG/JPG, ultrasound) with different R, G, B: BT.601 luminance."""
    gray = sitk.GetArrayFromImage(sitk.ReadImage(str(busi_dir / "images" / "benign_003.png")))
    r, g, b = gray, (255 - gray), (gray // 2)
    rgb = sitk.GetImageFromArray(np.stack([r, g, b], axis=-1).astype(np.uint8), isVector=True)
    vol = mrml.add_volume_from_sitk(scene, rgb, "colour")
    assert vol.GetClassName() == "vtkMRMLVectorVolumeNode"
    out = mrml.export_volume(vol, tmp_path / "colour.nrrd")
    image = sitk.ReadImage(str(out))
    assert image.GetNumberOfComponentsPerPixel() == 1
    expected = np.clip(np.rint(0.299 * r + 0.587 * g.astype(np.float32) + 0.114 * b), 0, 255)
    np.testing.assert_allclose(sitk.GetArrayFromImage(image)[0], expected, atol=1)
    assert np.abs(sitk.GetArrayFromImage(image)[0].astype(int) - r).max() > 50  # not just one channel
