"""End to end on real BUSI images and the real LiteMedSAM weights, through the real CLI subprocess."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from CPCSAMLib.events import read_events

ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}


def _cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "CPCSAMLib", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=ENV)


def _write_manifest(path: Path, busi: Path, labeled, unlabeled, validation, classes=None) -> Path:
    data = {
        "classes": classes or [{"name": "lesion", "value": 255}],
        "labeled": [{"image": str(busi / "images" / n), "label": str(busi / "masks" / n)} for n in labeled],
        "unlabeled": [str(busi / "images" / n) for n in unlabeled],
        "validation": [{"image": str(busi / "images" / n), "label": str(busi / "masks" / n)} for n in validation],
    }
    path.write_text(json.dumps(data))
    return path


@pytest.fixture(scope="module")
def small_manifest(tmp_path_factory, busi_dir):
    labeled = (busi_dir / "labeled_10.txt").read_text().split()[:2]
    train = [n for n in (busi_dir / "train.txt").read_text().split() if n not in labeled]
    val = (busi_dir / "val.txt").read_text().split()[:2]
    return _write_manifest(tmp_path_factory.mktemp("job") / "manifest.json", busi_dir, labeled, train[:2], val)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, small_manifest):
    out = tmp_path_factory.mktemp("run") / "out"
    events = out.parent / "events.jsonl"
    r = _cli("train", "--manifest", small_manifest, "--output", out, "--events", events, "--iterations", 2,
             "--batch-size", 2, "--val-every", 2, "--save-every", 1, "--no-progress", "--warmup-iters", 1)
    assert r.returncode == 0, r.stderr
    return out, events


def test_training_writes_events_checkpoints_and_curve(trained):
    out, events_path = trained
    events = read_events(events_path)
    kinds = [e["event"] for e in events]
    assert kinds[0] == "started" and kinds[-1] == "finished"
    its = [e for e in events if e["event"] == "iteration"]
    assert [e["iteration"] for e in its] == [1, 2]
    for e in its:
        assert all(np.isfinite(e[k]) for k in ("loss", "loss_s", "loss_cross", "loss_c", "lr"))
        assert e["loss_cross"] > 0 and e["loss_c"] > 0  # unlabeled images took part
    val = [e for e in events if e["event"] == "validation"]
    assert val and 0.0 <= val[0]["dice"] <= 1.0 and "lesion" in val[0]["dice_per_class"]
    assert events[-1]["status"] == "completed"
    for name in ("model_best.pt", "model_last.pt", "config.json", "training_curve.png"):
        assert (out / name).is_file(), name
    payload = torch.load(out / "model_best.pt", weights_only=True)  # no code execution needed
    card = json.loads(payload["model_card"])
    assert card["backbone"] == "litemedsam" and card["classes"] == [{"name": "lesion", "value": 255}]
    assert card["lora_rank"] == 4 and card["input_size"] == 256 and "torch" in card["versions"]
    assert any(".lora_" in k for k in payload["state_dict"])
    assert not any(k.startswith("image_encoder") and ".lora_" not in k for k in payload["state_dict"])


def test_resume_continues_from_last_checkpoint(trained, small_manifest, tmp_path):
    out, _ = trained
    copy = tmp_path / "out"
    copy.mkdir()
    for f in out.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    r = _cli("train", "--manifest", small_manifest, "--output", copy, "--iterations", 3, "--batch-size", 2,
             "--val-every", 100, "--no-progress", "--resume")
    assert r.returncode == 0, r.stderr
    events = read_events(copy / "events.jsonl")
    started = [e for e in events if e["event"] == "started"][-1]
    assert started["start_iteration"] == 2
    assert [e["iteration"] for e in events if e["event"] == "iteration"][-1:] == [3]
    # resuming with another --tune-neck setting is refused, saying which
    r = _cli("train", "--manifest", small_manifest, "--output", copy, "--iterations", 4, "--batch-size", 2,
             "--val-every", 100, "--no-progress", "--resume", "--tune-neck")
    assert r.returncode == 2 and "trained without --tune-neck" in r.stderr, r.stderr


def test_predict_and_evaluate_cli(trained, busi_dir, tmp_path):
    out, _ = trained
    names = (busi_dir / "val.txt").read_text().split()[:2]
    images = [busi_dir / "images" / n for n in names]
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    r = _cli("predict", "--model", out / "model_best.pt", "--input", *images, "--output", pred_dir)
    assert r.returncode == 0, r.stderr
    preds = sorted(pred_dir.iterdir())
    assert len(preds) == 2
    for img, pred in zip(images, [pred_dir / (Path(n).stem + "_cpcsam.png") for n in names]):
        a = sitk.GetArrayFromImage(sitk.ReadImage(str(pred)))
        ref = sitk.ReadImage(str(img))
        assert a.shape == (ref.GetHeight(), ref.GetWidth())
        assert set(np.unique(a)) <= {0, 255}
    # never overwrite silently
    r = _cli("predict", "--model", out / "model_best.pt", "--input", *images, "--output", pred_dir)
    assert r.returncode == 2 and "--overwrite" in r.stderr
    preds = [pred_dir / (Path(n).stem + "_cpcsam.png") for n in names]
    r = _cli("evaluate", "--pred", *preds, "--gt", *[busi_dir / "masks" / n for n in names],
             "--output", tmp_path / "metrics")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "metrics" / "metrics.csv").is_file() and "DSC" in r.stdout.upper()


def test_predict_on_3d_volume_keeps_geometry(trained, nrrd3d_dir, tmp_path):
    out, _ = trained
    from CPCSAMLib.infer import Predictor

    p = Predictor.from_checkpoint(out / "model_best.pt", "cpu")
    src = nrrd3d_dir / "breast1_image.nrrd"
    dst = p.predict_file(src, tmp_path / "breast1_pred.nrrd")
    a, b = sitk.ReadImage(str(src)), sitk.ReadImage(str(dst))
    assert a.GetSize() == b.GetSize() and a.GetSpacing() == b.GetSpacing()
    assert a.GetOrigin() == b.GetOrigin() and a.GetDirection() == b.GetDirection()
    vol = sitk.GetArrayFromImage(a).astype(np.float32)
    base = p.encoder_calls  # the volume's slices, each encoded once
    assert base == vol.shape[0]
    mask = p.predict_slice_with_points(vol[10], [(20, 60, 1), (5, 5, 0)])
    assert mask.shape == (120, 45) and mask.max() <= 1
    # more clicks on the same slice reuse its embedding; another slice is encoded
    assert p.encoder_calls == base + 1
    again = p.predict_slice_with_points(vol[10], [(20, 60, 1), (5, 5, 0)])
    p.predict_slice_with_points(vol[10], [(20, 60, 1), (30, 80, 1)])
    assert p.encoder_calls == base + 1 and np.array_equal(mask, again)
    p.predict_slice_with_points(vol[11], [(20, 60, 1)])
    assert p.encoder_calls == base + 2


def test_wrong_checkpoints_are_refused(trained, tmp_path):
    out, _ = trained
    from CPCSAMLib.errors import CheckpointError
    from CPCSAMLib.infer import Predictor

    with pytest.raises(CheckpointError, match="classes"):
        Predictor.from_checkpoint(out / "model_best.pt", "cpu", expected_classes=["tumor", "cyst"])
    with pytest.raises(CheckpointError, match="backbone"):
        Predictor.from_checkpoint(out / "model_best.pt", "cpu", expected_backbone="sam_vit_b")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    r = _cli("predict", "--model", junk, "--input", "x.png", "--output", tmp_path / "o.png")
    assert r.returncode == 2 and "junk.pt" in r.stderr
    assert not (tmp_path / "o.png").exists()


def test_bad_input_gives_specific_error_and_writes_nothing(busi_dir, tmp_path):
    names = (busi_dir / "labeled_10.txt").read_text().split()[:2]
    manifest = _write_manifest(tmp_path / "m.json", busi_dir, names, [names[0].replace("benign", "malignant")], [])
    # a label from another image: sizes differ
    data = json.loads(manifest.read_text())
    data["labeled"][0]["label"] = str(busi_dir / "masks" / names[1])
    manifest.write_text(json.dumps(data))
    out = tmp_path / "out"
    events = tmp_path / "events.jsonl"
    r = _cli("train", "--manifest", manifest, "--output", out, "--events", events, "--iterations", 1)
    assert r.returncode == 2
    assert names[1] in r.stderr
    assert not out.exists()
    err = read_events(events)[-1]
    assert err["event"] == "error" and err["type"] == "InputError"


def test_sigterm_stops_cleanly_after_saving(small_manifest, tmp_path):
    out = tmp_path / "out"
    events = tmp_path / "events.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "CPCSAMLib", "train", "--manifest", str(small_manifest),
                             "--output", str(out), "--events", str(events), "--iterations", "1000", "--batch-size",
                             "2", "--no-progress", "--val-every", "1000", "--save-every", "1000"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.time() + 300
    while time.time() < deadline:
        if events.exists() and any(e["event"] == "iteration" for e in read_events(events)):
            break
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(timeout=300)
    assert rc == 3
    final = read_events(events)
    finished = [e for e in final if e["event"] == "finished"]
    assert finished and finished[-1]["status"] == "cancelled"
    assert (out / "model_last.pt").is_file()
    assert torch.load(out / "model_last.pt", weights_only=True)["iteration"] >= 1


def test_sequential_update_runs_three_rounds_per_iteration(small_manifest, tmp_path):
    """--update sequential (the official code's loop): one iteration = three optimiser rounds."""
    out = tmp_path / "out"
    r = _cli("train", "--manifest", small_manifest, "--output", out, "--iterations", 1, "--batch-size", 2,
             "--val-every", 100, "--no-progress", "--update", "sequential", "--warmup-iters", 1)
    assert r.returncode == 0, r.stderr
    events = read_events(out / "events.jsonl")
    it = [e for e in events if e["event"] == "iteration"]
    assert len(it) == 1 and np.isfinite(it[0]["loss_s"]) and it[0]["loss_cross"] > 0
    assert it[0]["loss"] == pytest.approx(it[0]["loss_s"] + it[0]["loss_cross"], rel=1e-5)
    state = torch.load(out / "model_last.pt", weights_only=True)["optimizer"]["state"]
    assert max(int(v["step"]) for v in state.values()) == 3  # three optimiser steps in the one iteration


def test_frozen_encoder_mode_caches_embeddings_and_predicts(small_manifest, tmp_path, busi_dir):
    out = tmp_path / "out"
    r = _cli("train", "--manifest", small_manifest, "--output", out, "--iterations", 5, "--batch-size", 2,
             "--val-every", 5, "--no-progress", "--freeze-encoder", "--cache-views", 2, "--decoder-init", "pretrained",
             "--max-minutes", 60)
    assert r.returncode == 0, r.stderr
    events = read_events(out / "events.jsonl")
    cached = [e for e in events if e["event"] == "cached"]
    assert cached and cached[0]["slices"] == 4 and cached[0]["views"] == 2
    assert events[-1]["event"] == "finished" and events[-1]["iteration"] == 5
    # with --max-minutes the schedule's horizon is measured after a few iterations (all 5 fit in 60 min)
    horizon = [e for e in events if e["event"] == "horizon"]
    assert len(horizon) == 1 and horizon[0]["iteration"] == 4 and horizon[0]["horizon"] == 5
    assert horizon[0]["seconds_per_iteration"] > 0
    lrs = [e["lr"] for e in events if e["event"] == "iteration"]
    assert lrs == sorted(lrs, reverse=True) and lrs[0] == pytest.approx(1e-3)  # no warm-up at 5 % of 5, poly
    payload = torch.load(out / "model_best.pt", weights_only=True)
    card = json.loads(payload["model_card"])
    assert card["freeze_encoder"] is True and card["decoder_init"] == "pretrained"
    lora = {k: v for k, v in payload["state_dict"].items() if ".lora_b_" in k}
    assert lora and all(torch.count_nonzero(v) == 0 for v in lora.values())  # LoRA untouched: identity
    from CPCSAMLib.infer import Predictor

    p = Predictor.from_checkpoint(out / "model_best.pt", "cpu")
    name = (busi_dir / "val.txt").read_text().split()[0]
    dst = p.predict_file(busi_dir / "images" / name, tmp_path / "pred.png")
    assert dst.is_file()


def test_time_limited_run_with_a_warm_up_times_the_unlabeled_step_first(small_manifest, tmp_path):
    out = tmp_path / "out"
    r = _cli("train", "--manifest", small_manifest, "--output", out, "--iterations", 6, "--batch-size", 2,
             "--val-every", 6, "--no-progress", "--freeze-encoder", "--cache-views", 2, "--max-minutes", 60,
             "--supervised-warmup", 0.5)
    assert r.returncode == 0, r.stderr
    events = read_events(out / "events.jsonl")
    kinds = [e["event"] for e in events]
    assert kinds.count("step_cost") == 1 and kinds.index("cached") < kinds.index("step_cost") < kinds.index("iteration")
    cost = events[kinds.index("step_cost")]
    assert cost["labeled_only_seconds"] > 0 and cost["with_unlabeled_seconds"] > 0
    assert events[-1]["event"] == "finished" and events[-1]["iteration"] == 6
    its = [e for e in events if e["event"] == "iteration"]
    assert [e["loss_cross"] == 0 for e in its][:3] == [True] * 3 and all(e["loss_cross"] > 0 for e in its[3:])
    # a fixed-length run has no time budget to fit: nothing is timed
    r = _cli("train", "--manifest", small_manifest, "--output", tmp_path / "fixed", "--iterations", 2, "--batch-size",
             2, "--val-every", 2, "--no-progress", "--freeze-encoder", "--cache-views", 2, "--supervised-warmup", 0.5)
    assert r.returncode == 0, r.stderr
    assert "step_cost" not in [e["event"] for e in read_events(tmp_path / "fixed" / "events.jsonl")]


def test_embedding_store_lets_a_second_run_skip_the_encoder(small_manifest, tmp_path):
    store = tmp_path / "store"
    runs = []
    for name in ("a", "b"):
        out = tmp_path / name
        r = _cli("train", "--manifest", small_manifest, "--output", out, "--iterations", 1, "--batch-size", 2,
                 "--val-every", 100, "--no-progress", "--freeze-encoder", "--cache-views", 2,
                 "--cache-views-unlabeled", 1, "--embedding-store", store, "--decoder-init", "pretrained")
        assert r.returncode == 0, r.stderr
        runs.append(read_events(out / "events.jsonl"))
    first = [e for e in runs[0] if e["event"] == "cached"][0]
    second = [e for e in runs[1] if e["event"] == "cached"][0]
    # 2 labeled x 2 views + 2 unlabeled x 1 view
    assert first["views_unlabeled"] == 1 and (first["store_hits"], first["store_misses"]) == (0, 6)
    assert (second["store_hits"], second["store_misses"]) == (6, 0)
    assert len(list(store.rglob("*.pt"))) == 6 and not list(store.rglob("*.tmp"))
    loss = [[e["loss"] for e in ev if e["event"] == "iteration"] for ev in runs]
    assert loss[0] == pytest.approx(loss[1], rel=1e-5)  # the stored embeddings are the computed ones


def test_tune_neck_trains_the_neck_and_predicts_with_it(small_manifest, tmp_path, busi_dir):
    """--freeze-encoder --tune-neck: the store keeps the features before the neck (their own key),
    the trained neck is saved and loaded, and a store-backed prediction equals a plain one."""
    from CPCSAMLib.infer import Predictor
    from CPCSAMLib.modeling.backbones import build_backbone
    from CPCSAMLib.training.embeddings import EmbeddingStore

    store = tmp_path / "store"
    out = tmp_path / "out"
    r = _cli("train", "--manifest", small_manifest, "--output", out, "--iterations", 3, "--batch-size", 2,
             "--val-every", 100, "--no-progress", "--freeze-encoder", "--cache-views", 1, "--tune-neck",
             "--embedding-store", store, "--lr", 1e-2)
    assert r.returncode == 0, r.stderr
    stored = list(store.rglob("*.pt"))
    assert len(stored) == 4 and all(torch.load(f, weights_only=True).shape == (320, 64, 64) for f in stored)
    payload = torch.load(out / "model_best.pt", weights_only=True)
    assert json.loads(payload["model_card"])["tune_neck"] is True
    original = build_backbone("litemedsam").image_encoder.neck.state_dict()
    trained_neck = {k[len("image_encoder.neck."):]: v for k, v in payload["state_dict"].items()
                    if k.startswith("image_encoder.neck.")}
    assert set(trained_neck) == set(original)
    assert all(not torch.equal(trained_neck[k].float(), original[k].float()) for k in original)
    # --neck-lr-scale scales the neck's steps only
    r = _cli("train", "--manifest", small_manifest, "--output", tmp_path / "slow", "--iterations", 3, "--batch-size",
             2, "--val-every", 100, "--no-progress", "--freeze-encoder", "--cache-views", 1, "--tune-neck",
             "--embedding-store", store, "--lr", 1e-2, "--neck-lr-scale", 1e-6)
    assert r.returncode == 0, r.stderr
    slow = torch.load(tmp_path / "slow" / "model_best.pt", weights_only=True)["state_dict"]
    step = {k: (trained_neck[k].float() - original[k].float()).abs().max() for k in original}
    slow_step = {k: (slow["image_encoder.neck." + k].float() - original[k].float()).abs().max() for k in original}
    assert all(slow_step[k] < 1e-3 * step[k] for k in original)
    p = Predictor.from_checkpoint(out / "model_best.pt", "cpu")
    assert torch.equal(p.model.image_encoder.neck[0].weight.float(), trained_neck["0.weight"].float())
    name = (busi_dir / "val.txt").read_text().split()[0]
    image = sitk.ReadImage(str(busi_dir / "images" / name))
    expected = sitk.GetArrayFromImage(p.predict_image(image, self_prompt=False))
    p.embedding_store = EmbeddingStore(tmp_path / "pred_store", p.model, p.amp_dtype)
    for _ in range(2):  # computed, then read back: the trained neck runs after the store both times
        assert np.array_equal(sitk.GetArrayFromImage(p.predict_image(image, self_prompt=False)), expected)
    assert p.embedding_store.hits == 1 and p.embedding_store.misses == 1
    # the predictor stores what training stores: the features before the neck (its key says so)
    assert [torch.load(f, weights_only=True).shape for f in p.embedding_store.folder.glob("*.pt")] == [(320, 64, 64)]


def test_embedding_store_recomputes_a_damaged_file(tmp_path):
    from CPCSAMLib.training.embeddings import EmbeddingStore

    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(3))

    model = torch.nn.Module()
    model.image_encoder, model.input_size = Encoder(), 8
    store = EmbeddingStore(tmp_path, model, torch.bfloat16)
    img = np.random.default_rng(0).random((8, 8), dtype=np.float32)
    assert store.get(img) is None
    store.put(img, torch.arange(4.0))
    assert torch.equal(store.get(img), torch.arange(4.0))
    assert store.get(img + 1e-3) is None  # another image, another key
    path = next(store.folder.glob("*.pt"))
    path.write_bytes(b"not a tensor")
    assert store.get(img) is None and store.misses == 3
    # temporary files of interrupted writes: those of dead processes go when a store is opened
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (store.folder / f"abc.{dead.pid}.tmp").write_bytes(b"partial")
    (store.folder / f"def.{os.getpid()}.tmp").write_bytes(b"being written")
    reopened = EmbeddingStore(tmp_path, model, torch.bfloat16)
    assert reopened.removed_stale == 1 and sorted(p.name for p in store.folder.glob("*.tmp")) == [f"def.{os.getpid()}.tmp"]
    with torch.no_grad():
        model.image_encoder.w.mul_(2)
    assert EmbeddingStore(tmp_path, model, torch.bfloat16).folder != store.folder  # other weights, other folder


def test_embedding_store_write_failure_does_not_stop_training_and_bad_folder_is_refused(tmp_path, monkeypatch):
    from CPCSAMLib.errors import InputError
    from CPCSAMLib.training.embeddings import EmbeddingStore

    model = torch.nn.Module()
    model.image_encoder, model.input_size = torch.nn.Linear(2, 2), 8
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="embedding-store"):
        EmbeddingStore(tmp_path / "file" / "store", model, None)
    store = EmbeddingStore(tmp_path / "store", model, None)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    img = np.zeros((8, 8), np.float32)
    store.put(img, torch.zeros(3))  # reported once on stderr, not raised
    assert store.write_errors == 1 and store.get(img) is None and not list(store.folder.iterdir())


def test_torchrun_ddp_two_cpu_processes(small_manifest, tmp_path):
    """Several processes through PyTorch DDP (gloo on CPU here, NCCL on GPUs): rank 0 writes."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "CPCSAMLib",
           "train", "--manifest", str(small_manifest), "--output", str(out), "--iterations", "1", "--batch-size", "2",
           "--val-every", "100", "--no-progress", "--threads", "1"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=ENV)
    assert r.returncode == 0, r.stderr[-3000:]
    events = read_events(out / "events.jsonl")
    started = [e for e in events if e["event"] == "started"]
    assert len(started) == 1 and started[0]["world_size"] == 2  # only rank 0 reports
    assert events[-1]["event"] == "finished" and (out / "model_last.pt").is_file()


def test_predict_reads_embeddings_from_a_store(trained, busi_dir, tmp_path):
    """The benchmark's test-slice store: a second prediction of the same image skips the encoder and
    gives the same labels as a predictor without a store."""
    out, _ = trained
    from CPCSAMLib.infer import Predictor
    from CPCSAMLib.training.embeddings import EmbeddingStore

    name = (busi_dir / "val.txt").read_text().split()[0]
    image = sitk.ReadImage(str(busi_dir / "images" / name))
    plain = Predictor.from_checkpoint(out / "model_best.pt", "cpu")
    expected = sitk.GetArrayFromImage(plain.predict_image(image))
    p = Predictor.from_checkpoint(out / "model_best.pt", "cpu")
    p.embedding_store = EmbeddingStore(tmp_path / "store", p.model, p.amp_dtype)
    first = sitk.GetArrayFromImage(p.predict_image(image))
    assert p.encoder_calls == 1 and p.embedding_store.misses == 1 and len(list(p.embedding_store.folder.glob("*.pt"))) == 1
    second = sitk.GetArrayFromImage(p.predict_image(image, self_prompt=False))
    assert p.encoder_calls == 1 and p.embedding_store.hits == 1
    assert np.array_equal(first, expected) and second.shape == expected.shape
    mirrored = sitk.GetArrayFromImage(p.predict_image(image, mirror=True))
    assert p.encoder_calls == 2 and p.embedding_store.hits == 2  # only the mirrored slice is new
    assert mirrored.shape == expected.shape and set(np.unique(mirrored)) <= set(np.unique(expected)) | {0}
