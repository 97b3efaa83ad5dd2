"""End to end, as the Slicer module does it, with the real engine (LiteMedSAM, CPU).

The module's logic class (``CPCSAM/CPCSAM.py``: ``CPCSAMLogic``) is loaded outside Slicer with
stand-ins for the GUI-only modules (``qt``, ``ctk``, ``slicer.ScriptedLoadableModule``), on a real
MRML scene from slicer-core: export 2 BUSI pairs + 1 unlabeled image, train 2 iterations in a
real background process (``python -m CPCSAMLib train``), apply the model (``predict`` in a
background process) and load the result into a segmentation node; then cancel a real training
run and check that no process of its tree is left.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer")

from CPCSAMLib import InputError  # noqa: E402
from CPCSAMLib.slicer import effect_logic, mrml  # noqa: E402

pytestmark = pytest.mark.skipif(os.name == "nt", reason="process-group checks use /proc")

CASES_LABELED = ("benign_001", "malignant_001")
CASE_UNLABELED = "benign_002"


# --------------------------------------------------------------------------------------------
# the module's logic outside Slicer
# --------------------------------------------------------------------------------------------

@pytest.fixture()
def cpcsam_module(monkeypatch, repo_root):
    """``CPCSAM/CPCSAM.py`` imported with stand-ins for the modules only the Slicer app has."""
    qt = types.ModuleType("qt")
    ctk = types.ModuleType("ctk")
    slm = types.ModuleType("slicer.ScriptedLoadableModule")

    class ScriptedLoadableModule:
        def __init__(self, parent):
            self.parent = parent

    class ScriptedLoadableModuleWidget:
        def __init__(self, parent=None):
            self.parent = parent

    class ScriptedLoadableModuleLogic:
        def __init__(self, parent=None):
            pass

    class ScriptedLoadableModuleTest:
        pass

    for cls in (ScriptedLoadableModule, ScriptedLoadableModuleWidget, ScriptedLoadableModuleLogic,
                ScriptedLoadableModuleTest):
        setattr(slm, cls.__name__, cls)
    monkeypatch.setitem(sys.modules, "qt", qt)
    monkeypatch.setitem(sys.modules, "ctk", ctk)
    monkeypatch.setitem(sys.modules, "slicer.ScriptedLoadableModule", slm)
    monkeypatch.setattr(slicer, "ScriptedLoadableModule", slm, raising=False)
    spec = importlib.util.spec_from_file_location("CPCSAM_under_test", repo_root / "CPCSAM" / "CPCSAM.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.ENGINE_PARENT_DIR == str(repo_root)  # CPCSAMLib found at the top level
    return module


@pytest.fixture()
def scene():
    s = slicer.vtkMRMLScene()
    logic = slicer.vtkSlicerSegmentationsModuleLogic()
    logic.SetMRMLScene(s)
    s._cpcsam_seg_logic = logic
    yield s
    s.Clear(1)


@pytest.fixture()
def logic(cpcsam_module, scene):
    return cpcsam_module.CPCSAMLogic(scene=scene, segmentationsLogic=scene._cpcsam_seg_logic,
                                     pythonExecutable=sys.executable)


def busi_volume(scene, busi_dir, case):
    return mrml.add_volume_from_sitk(scene, sitk.ReadImage(str(busi_dir / "images" / f"{case}.png")), case)


def busi_pair(scene, busi_dir, case, color=(0.9, 0.2, 0.1)):
    volume = busi_volume(scene, busi_dir, case)
    mask = mrml.add_volume_from_sitk(scene, sitk.ReadImage(str(busi_dir / "masks" / f"{case}.png")),
                                     f"{case} mask", labelmap=True)
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{case} segmentation")
    seg.CreateDefaultDisplayNodes()
    assert scene._cpcsam_seg_logic.ImportLabelmapToSegmentationNode(mask, seg)
    segment = seg.GetSegmentation().GetNthSegment(0)
    segment.SetName("lesion")
    segment.SetColor(*color)
    scene.RemoveNode(mask)
    return volume, seg


def segment_mask(scene, seg, volume):
    with mrml._TemporaryNodes(scene):
        lm = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
        segment_id = seg.GetSegmentation().GetNthSegmentID(0)
        assert scene._cpcsam_seg_logic.ExportSegmentsToLabelmapNode(
            seg, [segment_id], lm, volume, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY)
        return mrml.volume_array(lm) > 0


def group_members(pgid: int):
    """Live (not zombie) processes whose process group is ``pgid``."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(entry))
    return members


# --------------------------------------------------------------------------------------------
# tests
# --------------------------------------------------------------------------------------------

def test_train_apply_and_point_prompts(logic, scene, busi_dir, tmp_path):
    pairs = [busi_pair(scene, busi_dir, case) for case in CASES_LABELED]
    unlabeled = busi_volume(scene, busi_dir, CASE_UNLABELED)
    job = tmp_path / "job"
    items = []
    t0 = time.time()
    model = logic.train(pairs, [unlabeled], outputDir=job, iterations=2, batch_size=2, val_every=2,
                        device="cpu", progressCallback=items.append)
    train_seconds = time.time() - t0
    assert Path(model) == job / "model" / "model_best.pt" and Path(model).is_file()
    assert logic.run.process.returncode == 0 and logic.run.process.error_message is None
    assert logic.latestModelPath == model
    # the engine got the options as a job file of TrainConfig names with JSON types
    options = json.loads((job / "train_options.json").read_text())
    assert options["iterations"] == 2 and options["batch_size"] == 2 and options["device"] == "cpu"
    assert "--config" in logic.run.process.args
    exports = [i for i in items if i.get("event") == "export"]
    assert [e["phase"] for e in exports].count("writing") == 3  # one step per volume: the GUI timer's unit

    events = [i for i in items if i.get("event") != "log"]
    started = next(e for e in events if e["event"] == "started")
    assert started["classes"] == ["lesion"] and started["num_labeled"] == 2 and started["num_unlabeled"] == 1
    assert started["device"] == "cpu"
    iterations = [e for e in events if e["event"] == "iteration"]
    assert [e["iteration"] for e in iterations] == [1, 2]
    assert all(np.isfinite(e["loss"]) for e in iterations)
    assert events[-1]["event"] == "finished" and events[-1]["status"] == "completed"
    manifest = json.loads((job / "manifest.json").read_text())
    assert len(manifest["labeled"]) == 2 and len(manifest["unlabeled"]) == 1

    # Apply: a background `predict`, loaded into a NEW segmentation node next to the volume
    before = scene.GetNumberOfNodes()
    t0 = time.time()
    seg = logic.apply(model, unlabeled, device="cpu")
    apply_seconds = time.time() - t0
    assert scene.GetNumberOfNodes() > before
    assert seg.IsA("vtkMRMLSegmentationNode") and seg.GetName() == f"{CASE_UNLABELED} CPC-SAM"
    segmentation = seg.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 1
    assert segmentation.GetNthSegment(0).GetName() == "lesion"
    assert segmentation.GetNthSegment(0).GetColor() == pytest.approx((0.9, 0.2, 0.1))  # from job.json

    # the segment holds exactly what the engine's Predictor says for that image
    from CPCSAMLib.infer import Predictor

    t0 = time.time()
    predictor = Predictor.from_checkpoint(model, device="cpu")
    expected = sitk.GetArrayFromImage(predictor.predict_image(mrml.sitk_image_from_volume(unlabeled))) == 1
    predictor_seconds = time.time() - t0
    got = segment_mask(scene, seg, unlabeled)
    assert got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)

    # a rerun reuses the volume's previous result: no new node
    count = scene.GetNumberOfNodes()
    assert logic.apply(model, unlabeled, device="cpu") is seg
    assert scene.GetNumberOfNodes() == count and seg.GetSegmentation().GetNumberOfSegments() == 1

    # never overwrite: a segmentation with segments is refused, unchanged
    t0 = time.time()
    with pytest.raises(InputError, match="never overwrites"):
        logic.apply(model, unlabeled, segmentationNode=pairs[0][1], device="cpu")
    assert time.time() - t0 < 5  # refused before any prediction runs
    assert pairs[0][1].GetSegmentation().GetNthSegment(0).GetName() == "lesion"

    # the Segment Editor effect's path: a click on the slice -> the real model's point-prompted mask
    volume = mrml.volume_array(unlabeled)
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(busi_dir / "masks" / f"{CASE_UNLABELED}.png"))) > 0
    from CPCSAMLib.prompts import center_point, largest_component

    x, y = center_point(largest_component(truth))
    masks = effect_logic.segment_with_points(predictor.predict_slice_with_points, volume, 2, 0, [(x, y, 1)],
                                             class_index=1, propagate_slices=3)
    assert list(masks) == [0]  # a single-slice volume: nothing to propagate to
    assert masks[0].shape == truth.shape and masks[0].dtype == bool
    modifier, first, last = effect_logic.modifier_for_slices(volume.shape, 2, masks)
    assert (first, last) == (0, 0) and modifier.sum() == masks[0].sum()
    # box models (LiteMedSAM, the default): a box dragged around the lesion gives its mask
    assert predictor.prompt_type == "box" and mrml.model_prompt_type(model) == "box"
    alone = tmp_path / "alone" / "model.pt"  # without its config.json: read from the checkpoint
    alone.parent.mkdir()
    alone.write_bytes(Path(model).read_bytes())
    assert mrml.model_prompt_type(alone) == "box"
    rows, cols = np.nonzero(largest_component(truth))
    box = effect_logic.box_from_corners((cols.max(), rows.max()), (cols.min(), rows.min()))
    boxed = effect_logic.segment_with_box(lambda s, b: predictor.predict_slice_with_box(s, b, 1), volume, 2, 0,
                                          box, class_index=1, propagate_slices=3)
    assert list(boxed) == [0]
    dice = 2 * (boxed[0] & truth).sum() / (boxed[0].sum() + truth.sum())
    assert dice > 0.75, dice
    # the click path's unprompted prediction of one slice is the engine's prediction of the image
    np.testing.assert_array_equal(predictor.predict_slice(volume[0]) == 1, expected[0])
    # on a 3D volume the effect scales each slice by the whole volume's window, as training does
    # (Predictor.intensity_window): each slice is then predicted as Apply predicts it. A volume of
    # the image at three intensity scales: scaled alone, its slices would all look the same
    stack = np.stack([volume[0] * f for f in (1.0, 0.3, 0.1)]).astype(np.float32)
    image3d = sitk.GetImageFromArray(stack)
    applied = sitk.GetArrayFromImage(predictor.predict_image(image3d, axis=2)) > 0
    # Apply encodes the three slices in one batch, the effect one at a time: on CPUs with bf16 the
    # two round differently, so a few boundary pixels may flip (a wrong window changes far more)
    tolerance = stack[0].size // 10000
    assert max(int((applied[k] != applied[0]).sum()) for k in (1, 2)) > 10 * tolerance
    window = predictor.intensity_window(stack)
    for k in range(3):
        for got, want in ((predictor.predict_slice(stack[k], window=window) > 0, applied[k]),
                          (predictor.predict_slice(stack[k]) > 0, applied[0])):  # each alone: slice 0
            assert got.shape == want.shape and int((got != want).sum()) <= tolerance, (k, int((got != want).sum()))
    print(f"\ntrain 2 iterations (with process start-up) {train_seconds:.1f} s, apply {apply_seconds:.1f} s, "
          f"in-process Predictor load + predict {predictor_seconds:.1f} s")


def test_engine_input_error_reaches_the_console_api(logic, scene, busi_dir, tmp_path):
    pair = busi_pair(scene, busi_dir, CASES_LABELED[0])
    unlabeled = busi_volume(scene, busi_dir, CASE_UNLABELED)
    with pytest.raises(InputError, match="batch"):  # refused by the options schema before any export
        logic.train([pair], [unlabeled], outputDir=tmp_path / "job", iterations=2, batch_size=1, device="cpu")
    assert not (tmp_path / "job").exists()
    with pytest.raises(InputError, match="epochs"):
        logic.train([pair], [unlabeled], outputDir=tmp_path / "job", epochs=2)
    # an error found by the engine itself (here: a folder that holds a run) reaches the caller
    (tmp_path / "job2" / "model").mkdir(parents=True)
    (tmp_path / "job2" / "model" / "model_last.pt").write_bytes(b"x")
    with pytest.raises(RuntimeError, match="failed"):
        logic.train([pair], [unlabeled], outputDir=tmp_path / "job2", iterations=2, batch_size=2, device="cpu")
    assert logic.run.process.returncode == 2
    assert logic.run.process.last_error_event["type"] == "InputError"


def test_cancel_a_real_training_run_after_the_scene_was_closed(logic, scene, busi_dir, tmp_path):
    pairs = [busi_pair(scene, busi_dir, case) for case in CASES_LABELED]
    unlabeled = busi_volume(scene, busi_dir, CASE_UNLABELED)
    run = logic.train(pairs, [unlabeled], outputDir=tmp_path / "job", waitForCompletion=False,
                      iterations=1000, batch_size=2, val_every=1000, device="cpu")
    process = None
    try:
        deadline = time.time() + 240
        seen = []
        while time.time() < deadline and not any(i.get("event") == "iteration" for i in seen):
            seen += run.step()
            assert not run.done, f"the run stopped: {run.error}"
            time.sleep(0.05)
        process = run.process
        assert any(i.get("event") == "iteration" for i in seen), "no 'iteration' event"
        assert process.pid in group_members(process.pid)  # its own process group
        scene.Clear(0)  # the user closes the scene while training: the run does not need it
        run.cancel(timeout=180.0)
        cancelled_at = time.time()
        while not run.done and time.time() - cancelled_at < 200:
            run.step()
            time.sleep(0.1)
    finally:
        if process is not None and process.is_running():
            process.cancel(timeout=5.0)
    code = process.returncode
    assert code == 3, code  # the engine stopped between iterations (cancel file and SIGTERM)
    assert run.done and run.cancelled and not run.succeeded
    assert group_members(process.pid) == []  # nothing of the tree is left
    finished = [e for e in process.events if e["event"] == "finished"]
    assert finished and finished[-1]["status"] == "cancelled"
    assert run.last_checkpoint == tmp_path / "job" / "model" / "model_last.pt"
    assert run.last_checkpoint.is_file()  # the trained model's path survives the closed scene


def test_a_model_trained_before_the_scene_closed_is_kept(logic, scene):
    """Closing the scene replaces the parameter node: the new one gets the model the logic kept."""
    logic.latestModelPath = "/data/job/model/model_best.pt"
    fresh = scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode", "CPCSAM")
    logic.setDefaultParameters(fresh)
    assert fresh.GetParameter("ModelPath") == "/data/job/model/model_best.pt"
    assert fresh.GetParameter("FastCPUMode") == "false" and fresh.GetParameter("MaxMinutes") == "0"
    fresh.SetParameter("ModelPath", "/other.pt")  # a user's choice is never replaced
    logic.setDefaultParameters(fresh)
    assert fresh.GetParameter("ModelPath") == "/other.pt"


def test_eta_from_the_engine_events():
    from CPCSAMLib.slicer.runs import Eta, format_duration

    eta = Eta()
    eta.update({"event": "started", "iterations": 1000})
    assert eta.seconds_left() is None  # no pace yet
    eta.update({"event": "iteration", "iteration": 1, "iterations": 1000, "seconds": 10.0})
    eta.update({"event": "iteration", "iteration": 11, "iterations": 1000, "seconds": 30.0})
    assert eta.seconds_left() == pytest.approx(989 * 2.0)
    eta.update({"event": "horizon", "iteration": 11, "horizon": 111, "seconds_per_iteration": 2.0})
    assert eta.seconds_left() == pytest.approx(100 * 2.0)  # the time limit caps the run
    assert eta.text() == "about 3 min 20 s left"
    assert format_duration(7300) == "2 h 01 min" and format_duration(None) == "-"
