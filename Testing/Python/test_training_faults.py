"""Never lose a trained model (issue 10, training side), with real BUSI images, the real LiteMedSAM
weights and real `cpcsam` subprocesses: existing runs, the folder lock, full disks, read-only
folders, /dev/full, cancel in every phase, stale temporary files, predict's output names."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from CPCSAMLib.events import read_events

ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}
FAST = ["--freeze-encoder", "--cache-views", "1", "--batch-size", "2", "--no-progress"]


def _cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "CPCSAMLib", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=ENV)


def _popen(*args):
    return subprocess.Popen([sys.executable, "-m", "CPCSAMLib", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV)


def _digest(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _wait_for(events: Path, kind: str, proc, timeout=300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if events.exists() and any(e["event"] == kind for e in read_events(events)):
            return
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.2)
    raise AssertionError(f"no {kind} event within {timeout} s")


@pytest.fixture(scope="module")
def manifests(tmp_path_factory, busi_dir):
    folder = tmp_path_factory.mktemp("manifests")
    labeled = (busi_dir / "labeled_10.txt").read_text().split()[:2]
    train = [n for n in (busi_dir / "train.txt").read_text().split() if n not in labeled][:2]
    val = (busi_dir / "val.txt").read_text().split()[:1]

    def write(name, validation):
        data = {"classes": [{"name": "lesion", "value": 255}],
                "labeled": [{"image": str(busi_dir / "images" / n), "label": str(busi_dir / "masks" / n)}
                            for n in labeled],
                "unlabeled": [str(busi_dir / "images" / n) for n in train],
                "validation": [{"image": str(busi_dir / "images" / n), "label": str(busi_dir / "masks" / n)}
                               for n in validation]}
        (folder / name).write_text(json.dumps(data))
        return folder / name

    return {"plain": write("plain.json", []), "val": write("val.json", val)}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, manifests):
    """A finished one-iteration run, started over a stale lock (dead pid) and stale temporary files."""
    out = tmp_path_factory.mktemp("run") / "out"
    out.mkdir()
    (out / ".cpcsam.lock").write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname(),
                                                  "started": "2026-01-01T00:00:00"}))
    (out / ".model_last.pt.k3j2.tmp").write_bytes(b"")  # an interrupted checkpoint save
    (out / ".training_curve.tmp.png").write_bytes(b"x" * 1000)
    r = _cli("train", "--manifest", manifests["plain"], "--output", out, "--iterations", 1, *FAST)
    assert r.returncode == 0, r.stderr
    return out


def test_stale_lock_is_taken_over_and_stale_temporaries_removed(finished_run):
    out = finished_run
    assert not (out / ".cpcsam.lock").exists()  # released at the end
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp.*"))
    started = [e for e in read_events(out / "events.jsonl") if e["event"] == "started"]
    assert len(started) == 1
    assert sorted(started[0]["removed_temporaries"]) == [".model_last.pt.k3j2.tmp", ".training_curve.tmp.png"]


def test_a_folder_holding_a_run_is_refused_without_resume_or_overwrite(finished_run, manifests):
    out = finished_run
    before = {p.name: _digest(p) for p in out.iterdir()}
    t0 = time.time()
    r = _cli("train", "--manifest", manifests["plain"], "--output", out, "--iterations", 1, *FAST)
    assert r.returncode == 2
    assert "holds a training run" in r.stderr and "--resume" in r.stderr and "--overwrite" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert time.time() - t0 < 60  # refused before the model is loaded
    assert {p.name: _digest(p) for p in out.iterdir()} == before


def test_overwrite_cancelled_during_caching_keeps_the_trained_models(finished_run, manifests, tmp_path):
    """SIGTERM during embedding caching (checked between slices): exit 3 within seconds, a final
    `finished` event with status cancelled, and the earlier run's models untouched."""
    out = tmp_path / "out"
    out.mkdir()
    for f in finished_run.iterdir():
        (out / f.name).write_bytes(f.read_bytes())
    models = {n: _digest(out / n) for n in ("model_best.pt", "model_last.pt")}
    events = tmp_path / "events.jsonl"
    proc = _popen("train", "--manifest", manifests["plain"], "--output", out, "--events", events, "--iterations", 5,
                  "--overwrite", "--freeze-encoder", "--cache-views", "16", "--val-batch-size", "1", "--batch-size",
                  "2", "--no-progress")
    _wait_for(events, "started", proc)
    t0 = time.time()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    stop_seconds = time.time() - t0
    assert proc.returncode == 3, err
    assert "embedding caching" in err
    kinds = [e["event"] for e in read_events(events)]
    assert "cached" not in kinds and "iteration" not in kinds
    assert read_events(events)[-1]["event"] == "finished" and read_events(events)[-1]["status"] == "cancelled"
    assert {n: _digest(out / n) for n in models} == models  # never replaced by an untrained model
    assert not (out / ".cpcsam.lock").exists()
    assert stop_seconds < 20, stop_seconds  # one encoder batch of 1 image, not the whole caching step


def test_cancel_while_the_model_loads_exits_3_with_a_finished_event(manifests, tmp_path):
    out = tmp_path / "out"
    events = tmp_path / "events.jsonl"
    proc = _popen("train", "--manifest", manifests["plain"], "--output", out, "--events", events, "--iterations", 5,
                  *FAST)
    time.sleep(2.0)  # importing torch and loading the backbone
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, err
    final = read_events(events)[-1]
    assert final["event"] == "finished" and final["status"] == "cancelled"
    assert not out.exists()  # nothing written: the folder this run created is removed again


def test_a_live_lock_is_refused_naming_its_holder(manifests, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        (out / ".cpcsam.lock").write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(),
                                                      "started": "2026-11-27T00:00:00"}))
        r = _cli("train", "--manifest", manifests["plain"], "--output", out, "--iterations", 1, *FAST)
    finally:
        holder.kill()
        holder.wait()
    assert r.returncode == 2
    assert f"pid {holder.pid}" in r.stderr and socket.gethostname() in r.stderr and "in use" in r.stderr
    assert sorted(p.name for p in out.iterdir()) == [".cpcsam.lock"]


def test_events_to_dev_full_is_one_line_and_exit_2(manifests, tmp_path):
    out = tmp_path / "out"
    r = _cli("train", "--manifest", manifests["plain"], "--output", out, "--events", "/dev/full", "--iterations", 1,
             *FAST)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == ["cpcsam: error: cannot write events to /dev/full: no space left on the "
                                             "device"]
    assert not (out / ".cpcsam.lock").exists()


def _mount_tmpfs(path: Path, options: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    return r.returncode == 0


def test_read_only_output_folder_is_one_line_and_exit_2(manifests, tmp_path):
    out = tmp_path / "ro"
    mounted = os.geteuid() == 0 and _mount_tmpfs(out, "size=1m,ro")
    if not mounted:  # an ordinary user: a folder without write permission
        out.mkdir()
        out.chmod(0o555)
    try:
        r = _cli("train", "--manifest", manifests["plain"], "--output", out, "--iterations", 1, *FAST)
    finally:
        if mounted:
            subprocess.run(["umount", str(out)], check=True)
        else:
            out.chmod(0o755)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot write" in lines[0] and str(out) in lines[0], r.stderr
    assert "read-only" in lines[0] or "permission denied" in lines[0]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount a small tmpfs (a real full disk)")
def test_full_disk_keeps_the_last_good_checkpoint(manifests, tmp_path):
    """A 60 MB tmpfs: model_best.pt (about 29 MB) fits, model_last.pt (with the optimiser) does not."""
    out = tmp_path / "disk"
    assert _mount_tmpfs(out, "size=60m")
    try:
        r = _cli("train", "--manifest", manifests["val"], "--output", out / "run", "--iterations", 1,
                 "--val-every", 1, *FAST)
        assert r.returncode == 2, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "no space left" in lines[0] and "model_last.pt" in lines[0], r.stderr
        events = read_events(out / "run" / "events.jsonl")
        assert events[-1]["event"] == "error" and "no space left" in events[-1]["message"]
        import torch

        best = torch.load(out / "run" / "model_best.pt", weights_only=True)  # intact
        assert json.loads(best["model_card"])["iteration"] == 1
        assert not list((out / "run").glob("*.tmp")) and not (out / "run" / ".cpcsam.lock").exists()
    finally:
        subprocess.run(["umount", str(out)], check=True)


def test_write_errors_name_the_reason():
    from CPCSAMLib.errors import output_error
    from CPCSAMLib.events import EventWriter
    from CPCSAMLib.errors import OutputError

    assert str(output_error(OSError(errno.ENOSPC, "No space left on device"), "x.pt")) == \
        "cannot write x.pt: no space left on the device"
    assert "read-only" in str(output_error(OSError(errno.EROFS, "Read-only file system"), "x"))
    writer = EventWriter("/dev/full")
    with pytest.raises(OutputError, match="no space left"):
        writer.emit("started")
    assert writer.broken and writer.emit("iteration")["event"] == "iteration"  # listeners still served
    writer.close()


def test_run_training_cancelled_at_once_leaves_config_and_disk_alone(manifests, tmp_path):
    from CPCSAMLib.config import TrainConfig
    from CPCSAMLib.errors import Cancelled
    from CPCSAMLib.training import run_training

    cfg = TrainConfig(freeze_encoder=True, iterations=1, batch_size=2)
    before = cfg.to_dict()
    with pytest.raises(Cancelled, match="data loading"):
        run_training(manifests["plain"], tmp_path / "out", cfg, cancel=lambda: True)
    assert cfg.to_dict() == before  # not mutated (axis stays unset)
    assert not (tmp_path / "out").exists()


def test_predict_refuses_two_inputs_of_one_name_before_loading_the_model(busi_dir, tmp_path):
    name = (busi_dir / "val.txt").read_text().split()[0]
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
        (d / name).write_bytes((busi_dir / "images" / name).read_bytes())
    missing_model = tmp_path / "no_model.pt"  # the output check comes first
    r = _cli("predict", "--model", missing_model, "--input", a / name, b / name, "--output", tmp_path / "pred")
    assert r.returncode == 2 and "same file name" in r.stderr and str(a / name) in r.stderr, r.stderr
    assert not (tmp_path / "pred").exists()
    r = _cli("predict", "--model", missing_model, "--input", a / name, "--output", tmp_path / "x.unknown")
    assert r.returncode == 2 and "extension" in r.stderr and "no_model" not in r.stderr
    # a name ending in / is a folder; the missing model is then the error
    r = _cli("predict", "--model", missing_model, "--input", a / name, "--output", str(tmp_path / "dir") + "/")
    assert r.returncode == 2 and "no_model.pt" in r.stderr


def test_a_second_training_into_a_running_ones_folder_fails_naming_it(manifests, tmp_path):
    out = tmp_path / "out"
    first = _popen("train", "--manifest", manifests["plain"], "--output", out, "--iterations", 50, *FAST)
    try:
        _wait_for(out / "events.jsonl", "started", first)
        second = _cli("train", "--manifest", manifests["plain"], "--output", out, "--iterations", 1, "--overwrite",
                      *FAST)
        assert second.returncode == 2
        assert f"in use by another training (pid {first.pid} on {socket.gethostname()}" in second.stderr
        events = read_events(out / "events.jsonl")
        assert [e["event"] for e in events].count("started") == 1  # nothing of the second run interleaved
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=120)
    assert first.returncode == 3 and not (out / ".cpcsam.lock").exists()
