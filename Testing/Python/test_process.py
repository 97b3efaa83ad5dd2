"""EngineProcess with real subprocesses: events, logs, exit codes, cancelling the whole tree.

The "engine" here is a small Python script (written to tmp_path) that writes JSON-lines events
to the ``--events`` file like CPCSAMLib does, prints to stdout/stderr, and spawns a child
process of its own, so cancelling has a real process tree to end.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import textwrap
import time
from pathlib import Path

import pytest

from CPCSAMLib.slicer.process import (CANCEL_FILE_ENV, EXIT_CANCELLED, EngineProcess, Signal,
                                      default_python_executable, popen_platform_kwargs, predict_arguments,
                                      train_arguments, write_train_config)

pytestmark = pytest.mark.skipif(os.name == "nt", reason="process-tree checks use POSIX /proc")

FAKE_ENGINE = textwrap.dedent(
    r'''
    import json, os, signal, subprocess, sys, time

    events_path, mode, pid_file = sys.argv[1], sys.argv[2], sys.argv[3]
    stubborn = mode == "stubborn"
    child_code = "import time\nwhile True: time.sleep(0.1)"
    if stubborn:
        child_code = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nwhile True: time.sleep(0.1)"
    child = subprocess.Popen([sys.executable, "-c", child_code])
    events = open(events_path, "a", encoding="utf-8")

    def emit(**event):
        events.write(json.dumps(event) + "\n")
        events.flush()

    def on_term(signum, frame):
        emit(event="checkpoint", iteration=-1, path="model_last.pt", kind="last")
        emit(event="finished", status="cancelled")
        child.terminate()
        child.wait()
        sys.exit(3)

    if stubborn or mode == "file-only":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # file-only: like Windows, no signal arrives
    else:
        signal.signal(signal.SIGTERM, on_term)
    cancel_file = os.environ.get("CPCSAM_CANCEL_FILE")
    with open(pid_file + ".tmp", "w") as f:
        json.dump({"parent": os.getpid(), "child": child.pid}, f)
    os.replace(pid_file + ".tmp", pid_file)

    print("fake engine starting", flush=True)
    emit(event="started", iterations=5, device="cpu", classes=["lesion"])
    if mode == "bad-input":
        emit(event="error", type="InputError", message="manifest.json: no labeled image")
        print("InputError: manifest.json: no labeled image", file=sys.stderr, flush=True)
        child.terminate(); child.wait()
        sys.exit(2)
    if mode == "crash":
        child.terminate(); child.wait()
        raise RuntimeError("boom in the fake engine")
    if mode == "partial":
        line = json.dumps({"event": "iteration", "iteration": 1, "iterations": 5, "loss": 0.5})
        events.write(line[:10]); events.flush(); time.sleep(0.4)
        events.write(line[10:] + "\n"); events.flush()
        emit(event="finished", status="completed")
        child.terminate(); child.wait()
        sys.exit(0)
    n = 5 if mode == "ok" else 100000
    for i in range(1, n + 1):
        if not stubborn and cancel_file and os.path.exists(cancel_file):
            on_term(None, None)  # the engine polls the cancel file like its signal flag
        emit(event="iteration", iteration=i, iterations=n, loss=1.0 / i)
        print(f"iteration {i}", flush=True)
        time.sleep(0.05)
    emit(event="validation", iteration=n, dice=0.5, dice_per_class={"lesion": 0.5}, best=True)
    emit(event="finished", status="completed", iteration=n)
    child.terminate(); child.wait()
    '''
)


def _alive(pid: int) -> bool:
    """True while ``pid`` is a running process (a zombie awaiting its reaper counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    return state not in ("Z", "X")


def _wait_gone(pids, timeout=10.0) -> list:
    end = time.time() + timeout
    while time.time() < end:
        left = [p for p in pids if _alive(p)]
        if not left:
            return []
        time.sleep(0.05)
    return [p for p in pids if _alive(p)]


@pytest.fixture()
def fake(tmp_path):
    script = tmp_path / "fake_engine.py"
    script.write_text(FAKE_ENGINE)
    started = []

    def make(mode: str, **kwargs):
        events = tmp_path / f"{mode}_events.jsonl"
        pid_file = tmp_path / f"{mode}.pids"
        proc = EngineProcess(events_path=events,
                             command=[sys.executable, str(script), str(events), mode, str(pid_file)], **kwargs)
        started.append((proc, pid_file))
        return proc, pid_file

    yield make
    for proc, pid_file in started:  # never leave anything behind, even when a test fails
        if proc.process is not None:
            proc.cancel(timeout=2.0)
        if pid_file.exists():
            pids = json.loads(pid_file.read_text())
            for pid in pids.values():
                if _alive(pid):
                    os.kill(pid, signal.SIGKILL)


def _read_pids(pid_file: Path, timeout=20.0) -> dict:
    end = time.time() + timeout
    while time.time() < end:
        if pid_file.exists():
            return json.loads(pid_file.read_text())
        time.sleep(0.05)
    raise AssertionError("the fake engine did not start")


def _poll_until(proc, predicate, timeout=20.0) -> list:
    items = []
    end = time.time() + timeout
    while time.time() < end:
        items += proc.poll()
        if predicate(items):
            return items
        time.sleep(0.05)
    raise AssertionError(f"condition not met; got {items}")


def test_success_events_logs_and_exit_code(fake):
    proc, _ = fake("ok")
    received = []
    finished = []
    proc.eventReceived.connect(received.append)
    proc.finished.connect(finished.append)
    polls = []
    code = proc.start().run(interval=0.05, timeout=60, on_poll=lambda: polls.append(1))
    assert code == 0 and proc.succeeded and not proc.cancelled
    assert len(polls) > 3  # the GUI hook runs while waiting
    assert proc.error_message is None
    kinds = [e["event"] for e in proc.events]
    assert kinds[0] == "started" and kinds[-1] == "finished"
    assert [e["iteration"] for e in proc.events if e["event"] == "iteration"] == [1, 2, 3, 4, 5]
    assert kinds.count("validation") == 1
    logs = [i["line"] for i in received if i["event"] == "log" and i["stream"] == "stdout"]
    assert "fake engine starting" in logs and "iteration 5" in logs
    assert finished == [0]
    assert proc.poll() == []  # everything was delivered once


def test_error_event_gives_error_message_and_exit_code_2(fake):
    proc, _ = fake("bad-input")
    code = proc.start().run(interval=0.05, timeout=60)
    assert code == 2 and not proc.succeeded and not proc.cancelled
    assert proc.error_message == "InputError: manifest.json: no labeled image"
    assert proc.events[-1]["event"] == "error"


def test_crash_without_error_event_uses_stderr_tail(fake):
    proc, _ = fake("crash")
    code = proc.start().run(interval=0.05, timeout=60)
    assert code == 1
    assert "RuntimeError: boom in the fake engine" in proc.error_message
    assert "Traceback" in proc.error_message


def test_partial_event_line_is_read_whole(fake):
    proc, _ = fake("partial")
    assert proc.start().run(interval=0.02, timeout=60) == 0
    iterations = [e for e in proc.events if e["event"] == "iteration"]
    assert iterations == [{"event": "iteration", "iteration": 1, "iterations": 5, "loss": 0.5}]
    assert not [i for i in proc.events if i.get("stream") == "events"]


def test_cancel_ends_the_whole_tree_gracefully(fake):
    proc, pid_file = fake("long")
    proc.start()
    pids = _read_pids(pid_file)
    _poll_until(proc, lambda items: any(i.get("event") == "started" for i in items))
    assert proc.is_running() and _alive(pids["child"])
    code = proc.cancel(timeout=10.0)
    assert code == EXIT_CANCELLED and proc.cancelled and not proc.succeeded
    assert _wait_gone(list(pids.values())) == []
    items = _poll_until(proc, lambda items: any(i.get("status") == "cancelled" for i in items), timeout=5)
    assert any(i.get("event") == "checkpoint" for i in items + proc.events)


def test_cancel_kills_a_tree_that_ignores_sigterm(fake):
    proc, pid_file = fake("stubborn")
    proc.start()
    pids = _read_pids(pid_file)
    _poll_until(proc, lambda items: any(i.get("event") == "started" for i in items))
    t0 = time.time()
    code = proc.cancel(timeout=1.0)
    assert time.time() - t0 < 10
    assert code == -signal.SIGKILL and proc.cancelled
    assert _wait_gone(list(pids.values())) == []
    assert proc.error_message  # killed: a message, never None


def test_non_blocking_cancel(fake):
    proc, pid_file = fake("long")
    proc.start()
    pids = _read_pids(pid_file)
    _poll_until(proc, lambda items: any(i.get("event") == "started" for i in items))
    t0 = time.time()
    assert proc.cancel(timeout=10.0, block=False) is None
    assert time.time() - t0 < 1.0  # the GUI thread is not held
    assert proc.wait(timeout=20) == EXIT_CANCELLED
    assert _wait_gone(list(pids.values())) == []


def test_cancel_through_the_cancel_file_alone_saves_a_checkpoint(fake):
    """The Windows path: no signal reaches the engine, it finds the cancel file and stops cleanly."""
    proc, pid_file = fake("file-only", use_signals=False)
    proc.start()
    pids = _read_pids(pid_file)
    _poll_until(proc, lambda items: any(i.get("event") == "iteration" for i in items))
    assert not proc.cancel_file.exists()
    code = proc.cancel(timeout=20.0)
    assert code == EXIT_CANCELLED  # the engine's own exit, not a kill
    assert _wait_gone(list(pids.values())) == []
    items = _poll_until(proc, lambda items: any(i.get("status") == "cancelled" for i in items), timeout=5)
    assert any(i.get("event") == "checkpoint" for i in items + proc.events)


def test_a_stale_cancel_file_does_not_stop_a_new_run(fake):
    proc, _ = fake("ok")
    proc.cancel_file.write_text("cancel\n")
    assert proc.start().run(interval=0.05, timeout=60) == 0
    assert proc.env is None and CANCEL_FILE_ENV not in os.environ  # given to the child only


def test_platform_kwargs():
    assert popen_platform_kwargs(is_windows=False) == {"start_new_session": True}
    source = Path(__file__).resolve().parents[2] / "CPCSAMLib" / "slicer" / "process.py"
    text = source.read_text(encoding="utf-8")
    # Windows (checked by reading: STARTUPINFO exists on Windows only): hidden console window as
    # slicer.util.launchConsoleProcess does, own process group, no CTRL_BREAK from a GUI process
    for needle in ("info.dwFlags = 1", "info.wShowWindow = 0", "CREATE_NEW_PROCESS_GROUP",
                   '"startupinfo": windows_startupinfo()'):
        assert needle in text, needle
    assert "CTRL_BREAK_EVENT" not in text


def test_stale_events_file_is_not_read(fake):
    proc, _ = fake("ok")
    proc.events_path.write_text(json.dumps({"event": "error", "type": "Old", "message": "stale"}) + "\n")
    assert proc.start().run(interval=0.05, timeout=60) == 0
    assert all(e.get("type") != "Old" for e in proc.events)


def test_module_is_run_with_the_injected_python(tmp_path):
    pkg = tmp_path / "fakeengine"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "__main__.py").write_text(textwrap.dedent(
        """
        import json, os, sys
        args = sys.argv[1:]
        events = args[args.index("--events") + 1]
        with open(events, "w") as f:
            f.write(json.dumps({"event": "started", "argv": args,
                                "cancel_file": os.environ.get("CPCSAM_CANCEL_FILE")}) + "\\n")
        print("python:", sys.executable)
        """))
    events = tmp_path / "out" / "events.jsonl"
    args = train_arguments("m.json", tmp_path / "out", tmp_path / "job.json", events)
    proc = EngineProcess(args, events_path=events, python_executable=sys.executable,
                         module="fakeengine", cwd=tmp_path)
    assert proc.full_command[:3] == [sys.executable, "-m", "fakeengine"]
    assert proc.run(interval=0.05, timeout=60) == 0
    started = [e for e in proc.events if e["event"] == "started"][0]
    assert started["argv"] == ["train", "--manifest", "m.json", "--output", str(tmp_path / "out"),
                               "--config", str(tmp_path / "job.json"), "--events", str(events)]
    assert started["cancel_file"] == str(events) + ".cancel"


def test_argument_builders_and_default_python():
    assert predict_arguments("model.pt", ["a.nrrd", "b.nrrd"], "out", "cpu") == [
        "predict", "--model", "model.pt", "--input", "a.nrrd", "b.nrrd", "--output", "out",
        "--device", "cpu"]
    assert predict_arguments("m.pt", ["a.nrrd"], "out", None, False)[-1] == "--no-self-prompt"
    assert predict_arguments("m.pt", ["a.nrrd"], "out", None, True)[-1] == "--self-prompt"
    from CPCSAMLib.cli import build_parser  # the engine's parser knows both spellings

    for flag, value in (("--self-prompt", True), ("--no-self-prompt", False)):
        args = build_parser().parse_args(["predict", "--model", "m.pt", "--input", "a.nrrd", "--output", "o", flag])
        assert args.self_prompt is value
    assert train_arguments("m", "o", "j.json") == ["train", "--manifest", "m", "--output", "o", "--config", "j.json"]
    assert default_python_executable() == sys.executable  # plain Python: no PythonSlicer


def test_signal():
    got = []
    s = Signal(int)
    s.connect(got.append)
    s.connect(got.append)  # connected once
    s.emit(3)
    s.disconnect(got.append)
    s.emit(4)
    assert got == [3] and len(s) == 0


def test_the_job_file_is_what_the_engine_cli_reads(tmp_path):
    """Needs the engine's options schema (CPCSAMLib.config, helper B's branch)."""
    from CPCSAMLib import InputError
    from CPCSAMLib.cli import build_parser
    from CPCSAMLib.config import config_from_args

    options = {"backbone": "litemedsam", "device": "cuda", "iterations": 7, "batch_size": 4, "lr": 2e-3,
               "lambda_cross": 0.3, "lambda_consistency": 0.1, "lora_rank": 8, "val_every": 5,
               "freeze_encoder": True, "max_minutes": 12.5}
    job = write_train_config(tmp_path / "job.json", options)
    assert json.loads(job.read_text()) == options  # JSON types: true, numbers
    assert '"freeze_encoder": true' in job.read_text()
    args = build_parser().parse_args(train_arguments(tmp_path / "m.json", tmp_path / "out", job,
                                                     tmp_path / "e.jsonl"))
    cfg = config_from_args(args)
    for name, value in options.items():
        assert getattr(cfg, name) == value, name
    assert args.events == str(tmp_path / "e.jsonl")

    checkpoint = tmp_path / "sam_vit_b.pth"
    checkpoint.write_bytes(b"x")
    sam = write_train_config(tmp_path / "sam.json", {"backbone": "sam_vit_b", "sam_checkpoint": str(checkpoint)})
    cfg = config_from_args(build_parser().parse_args(train_arguments("m", "o", sam)))
    assert cfg.backbone == "sam_vit_b" and cfg.sam_checkpoint == str(checkpoint)


def test_the_job_file_refuses_what_the_engine_would_refuse(tmp_path):
    """Needs CPCSAMLib.config (helper B's branch): names and JSON types checked before writing."""
    from CPCSAMLib import InputError

    target = tmp_path / "job.json"
    with pytest.raises(InputError, match="epochs"):
        write_train_config(target, {"epochs": 3})
    with pytest.raises(InputError, match="freeze_encoder"):
        write_train_config(target, {"freeze_encoder": "true"})  # a string is not a boolean
    with pytest.raises(InputError, match="iterations"):
        write_train_config(target, {"iterations": 0})
    with pytest.raises(InputError, match="needs the SAM checkpoint file"):
        write_train_config(target, {"backbone": "sam_vit_h", "sam_checkpoint": str(tmp_path / "missing.pth")})
    assert not target.exists()


def test_python_slicer_is_found_next_to_the_slicer_executable(tmp_path, monkeypatch):
    import CPCSAMLib.slicer.process as process_module

    linux = tmp_path / "Slicer" / "bin"
    linux.mkdir(parents=True)
    (linux / "SlicerApp-real").write_text("")
    (linux / "PythonSlicer").write_text("")
    monkeypatch.setattr(process_module.sys, "executable", str(linux / "SlicerApp-real"))
    assert default_python_executable() == str(linux / "PythonSlicer")
    mac = tmp_path / "Slicer.app" / "Contents"
    (mac / "MacOS").mkdir(parents=True)
    (mac / "bin").mkdir()
    (mac / "MacOS" / "Slicer").write_text("")
    (mac / "bin" / "PythonSlicer").write_text("")
    monkeypatch.setattr(process_module.sys, "executable", str(mac / "MacOS" / "Slicer"))
    assert default_python_executable() == str(mac / "bin" / "PythonSlicer")
