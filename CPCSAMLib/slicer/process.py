"""Run the engine's command line in a background process, without Qt.

:class:`EngineProcess` starts ``[python, "-m", "CPCSAMLib", *args]`` in its own process group
(POSIX: ``start_new_session=True``; Windows: ``CREATE_NEW_PROCESS_GROUP`` and a hidden console
window, as Slicer's ``launchConsoleProcess``), reads its stdout and stderr in threads, follows the
JSON-lines events file (``--events``) with a tail reader, and queues everything for
:meth:`EngineProcess.poll`, which never blocks (the Slicer widget calls it from a ``QTimer``).

:meth:`EngineProcess.cancel` stops the **whole process tree** gently first, on every platform:
it creates the cancel file named by ``$CPCSAM_CANCEL_FILE`` in the engine's environment (the
engine polls it, saves a checkpoint and exits with code 3) and, on POSIX, also sends SIGTERM to
the process group. Whatever is left after a timeout is killed (SIGKILL to the group; Windows:
``taskkill /F /T``). A GUI process on Windows cannot send a console control event to a process
without a visible console, so the file is the gentle path there.

The exit code decides success (0) or failure; on failure :attr:`EngineProcess.error_message`
holds the message of the last ``error`` event, else the tail of stderr.

Items returned by :meth:`poll` are dicts: the engine's events as they are
(``{"event": "iteration", ...}``, see ``docs/ENGINE_API.md``) and log lines as
``{"event": "log", "stream": "stdout" | "stderr", "line": "..."}``.
"""

from __future__ import annotations

import collections
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

__all__ = [
    "Signal",
    "EngineProcess",
    "default_python_executable",
    "train_arguments",
    "predict_arguments",
    "write_train_config",
    "validate_train_options",
    "popen_platform_kwargs",
    "CANCEL_FILE_ENV",
    "BACKBONES",
    "DEVICES",
    "EXIT_OK",
    "EXIT_INPUT",
    "EXIT_CANCELLED",
    "EXIT_ERROR",
]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_INPUT = 2
EXIT_CANCELLED = 3

_IS_WINDOWS = os.name == "nt"


class Signal:
    """A minimal Qt-free signal: ``connect(callback)``, ``disconnect(callback)``, ``emit(*args)``."""

    def __init__(self, *types):
        self._types = types
        self._callbacks: List[Callable] = []

    def connect(self, callback: Callable) -> None:
        if callback not in self._callbacks:
            self._callbacks.append(callback)

    def disconnect(self, callback: Optional[Callable] = None) -> None:
        if callback is None:
            self._callbacks.clear()
        elif callback in self._callbacks:
            self._callbacks.remove(callback)

    def emit(self, *args) -> None:
        for callback in list(self._callbacks):
            callback(*args)

    def __len__(self) -> int:
        return len(self._callbacks)


def default_python_executable() -> str:
    """The Python that runs the engine: ``PythonSlicer`` inside Slicer, else ``sys.executable``.

    Inside Slicer ``sys.executable`` is the Slicer application itself, not a Python interpreter;
    ``PythonSlicer`` (next to it or on ``PATH``) is Slicer's Python launcher.
    """
    exe = Path(sys.executable)
    name = "PythonSlicer.exe" if _IS_WINDOWS else "PythonSlicer"
    if exe.stem.lower() not in ("python", "python3", "pythonw") and not exe.stem.lower().startswith("python3"):
        # Linux/Windows: bin/SlicerApp-real next to bin/PythonSlicer; macOS: Contents/MacOS/Slicer
        # and Contents/bin/PythonSlicer
        for candidate in (exe.with_name(name), exe.parent.parent / "bin" / name):
            if candidate.is_file():
                return str(candidate)
        found = shutil.which("PythonSlicer")
        if found:
            return found
    return sys.executable


def train_arguments(manifest, output, config, events=None) -> List[str]:
    """``train`` arguments for the engine CLI: the options are in the job file ``config``."""
    args = ["train", "--manifest", str(manifest), "--output", str(output), "--config", str(config)]
    if events:
        args += ["--events", str(events)]
    return args


def predict_arguments(model, inputs: Sequence, output, device: Optional[str] = None,
                      self_prompt: Optional[bool] = None) -> List[str]:
    """``predict`` arguments for the engine CLI (``self_prompt`` None: the engine's default)."""
    args = ["predict", "--model", str(model), "--input", *[str(p) for p in inputs], "--output", str(output)]
    if device:
        args += ["--device", str(device)]
    if self_prompt is not None:
        args.append("--self-prompt" if self_prompt else "--no-self-prompt")
    return args


#: Backbone labels shown in the panel -> the engine's names (TrainConfig ``backbone``).
BACKBONES = {"LiteMedSAM": "litemedsam", "SAM ViT-B": "sam_vit_b", "SAM ViT-L": "sam_vit_l",
             "SAM ViT-H": "sam_vit_h"}
#: Device labels shown in the panel -> the engine's names (TrainConfig ``device``).
DEVICES = {"auto": "auto", "CPU": "cpu", "GPU": "cuda"}


def validate_train_options(options: Dict[str, object]) -> None:
    """Check training options as the engine will: ``TrainConfig.from_dict`` (names, JSON types,
    values; ``InputError`` naming the option), and that a SAM ViT backbone's checkpoint file exists
    (so the user hears it before the export, not minutes later from the engine)."""
    from ..config import TrainConfig
    from ..errors import InputError

    TrainConfig.from_dict(dict(options), source="training options")
    checkpoint = options.get("sam_checkpoint")
    if str(options.get("backbone", "")).startswith("sam_vit") and (not checkpoint or not Path(str(checkpoint)).is_file()):
        raise InputError(f"The {options['backbone']} backbone needs the SAM checkpoint file "
                         f"(e.g. sam_vit_b_01ec64.pth); got {checkpoint!r}.")


def write_train_config(path, options: Dict[str, object]) -> Path:
    """Validate training options and write them as the engine's job file; return its path.

    ``options``: ``CPCSAMLib.config.TrainConfig`` field names with JSON values (real booleans
    and numbers), e.g. ``{"iterations": 500, "freeze_encoder": true, "max_minutes": 30.0}``.
    They are checked by :func:`validate_train_options` before anything is written, and written as
    given (the engine's defaults apply to the rest). The engine reads the file with
    ``train --config``.
    """
    options = dict(options)
    validate_train_options(options)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(options, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


#: The engine stops (saving a checkpoint, exit code 3) when the file this variable names exists.
CANCEL_FILE_ENV = "CPCSAM_CANCEL_FILE"


def windows_startupinfo():
    """``STARTUPINFO`` that hides the console window, as Slicer's ``launchConsoleProcess`` does."""
    info = subprocess.STARTUPINFO()  # type: ignore[attr-defined]  # Windows only
    info.dwFlags = 1  # STARTF_USESHOWWINDOW
    info.wShowWindow = 0  # SW_HIDE
    return info


def popen_platform_kwargs(is_windows: bool = _IS_WINDOWS) -> Dict[str, object]:
    """How the engine process is started: its own process group, and on Windows no console window."""
    if is_windows:
        return {"creationflags": getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0x200),
                "startupinfo": windows_startupinfo()}
    return {"start_new_session": True}


class EngineProcess:
    """One run of the engine CLI in a background process group.

    ``args``: the CLI arguments after ``python -m CPCSAMLib`` (see :func:`train_arguments`).
    ``events_path``: the JSON-lines file the engine writes (``--events``); it is followed while
    the process runs; a stale file from an earlier run is removed at :meth:`start`.
    ``python_executable``: the interpreter (default :func:`default_python_executable`).
    ``module``: what ``-m`` runs (tests may run a script instead with ``command``).
    ``command``: the full command line, replacing ``[python, "-m", module, *args]``.

    Signals (emitted from :meth:`poll`, so in the caller's thread): ``eventReceived(dict)`` for
    every item, ``finished(returncode)`` once, after the last item of a finished process.
    """

    def __init__(self, args: Sequence[str] = (), events_path=None, python_executable: Optional[str] = None,
                 env: Optional[Dict[str, str]] = None, cwd=None, module: str = "CPCSAMLib",
                 command: Optional[Sequence[str]] = None, stderr_lines: int = 200, cancel_file=None,
                 use_signals: bool = not _IS_WINDOWS):
        self.args = [str(a) for a in args]
        self.events_path = Path(events_path) if events_path else None
        self.python_executable = python_executable or default_python_executable()
        self.env = env
        self.cwd = str(cwd) if cwd else None
        self.module = module
        self.command = [str(c) for c in command] if command else None
        self.process: Optional[subprocess.Popen] = None
        self.queue: "queue.Queue[dict]" = queue.Queue()
        self.events: List[dict] = []
        self.stderr_tail = collections.deque(maxlen=stderr_lines)
        self.last_error_event: Optional[dict] = None
        self.cancel_requested = False
        self.eventReceived = Signal(dict)
        self.finished = Signal(int)
        self._threads: List[threading.Thread] = []
        self._readers_done = threading.Event()
        self._finished_emitted = False
        self._lock = threading.Lock()
        self._started_at: Optional[float] = None
        #: created by :meth:`cancel`; the engine finds it through ``$CPCSAM_CANCEL_FILE``
        self.cancel_file = Path(cancel_file) if cancel_file else (
            self.events_path.with_name(self.events_path.name + ".cancel") if self.events_path else None)
        #: POSIX: SIGTERM to the group on cancel (with the file); False: the file only, then kill
        self.use_signals = use_signals

    # ------------------------------------------------------------------ start
    @property
    def full_command(self) -> List[str]:
        if self.command:
            return list(self.command)
        return [self.python_executable, "-m", self.module, *self.args]

    def start(self) -> "EngineProcess":
        if self.process is not None:
            raise RuntimeError("EngineProcess was already started")
        if self.events_path is not None:
            self.events_path.parent.mkdir(parents=True, exist_ok=True)
            if self.events_path.exists():
                self.events_path.unlink()  # a stale file of an earlier run would be read as new
        env = dict(os.environ if self.env is None else self.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        env.setdefault("PYTHONIOENCODING", "utf-8")
        if self.cancel_file is not None:
            self.cancel_file.parent.mkdir(parents=True, exist_ok=True)
            if self.cancel_file.exists():
                self.cancel_file.unlink()  # a stale request must not stop the new run
            env[CANCEL_FILE_ENV] = str(self.cancel_file)
        kwargs = dict(stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                      env=env, cwd=self.cwd, bufsize=1, text=True, encoding="utf-8", errors="replace")
        kwargs.update(popen_platform_kwargs())
        self._started_at = time.time()
        self.process = subprocess.Popen(self.full_command, **kwargs)
        readers = [
            threading.Thread(target=self._read_stream, args=(self.process.stdout, "stdout"), daemon=True),
            threading.Thread(target=self._read_stream, args=(self.process.stderr, "stderr"), daemon=True),
        ]
        for t in readers:
            t.start()
        self._threads = list(readers)
        tail = threading.Thread(target=self._tail_events, args=(readers,), daemon=True)
        tail.start()
        self._threads.append(tail)
        return self

    # ------------------------------------------------------------------ readers
    def _read_stream(self, stream, name: str) -> None:
        try:
            for line in iter(stream.readline, ""):
                line = line.rstrip("\r\n")
                if name == "stderr":
                    self.stderr_tail.append(line)
                self.queue.put({"event": "log", "stream": name, "line": line})
        except (ValueError, OSError):
            pass
        finally:
            try:
                stream.close()
            except OSError:
                pass

    def _tail_events(self, readers: Sequence[threading.Thread]) -> None:
        position = 0
        buffer = ""
        handle = None

        def read_new(final: bool) -> None:
            nonlocal position, buffer, handle
            if self.events_path is None:
                return
            if handle is None:
                try:
                    handle = open(self.events_path, "r", encoding="utf-8", errors="replace")
                except OSError:
                    return
            try:
                size = os.fstat(handle.fileno()).st_size
                if size < position:  # truncated: start again
                    position, buffer = 0, ""
                handle.seek(position)
                chunk = handle.read()
                position = handle.tell()
            except OSError:
                return
            buffer += chunk
            lines = buffer.split("\n")
            buffer = lines.pop()  # an incomplete last line waits for its newline
            if final and buffer.strip():
                lines.append(buffer)
                buffer = ""
            for line in lines:
                self._push_event_line(line)

        exited_at = None
        try:
            while True:
                process_done = self.process is not None and self.process.poll() is not None
                streams_done = all(not t.is_alive() for t in readers)
                if process_done and exited_at is None:
                    exited_at = time.time()
                # An orphaned grandchild may keep the pipes open: do not wait for it forever.
                if process_done and (streams_done or time.time() - exited_at > 3.0):
                    read_new(final=True)
                    break
                read_new(final=False)
                time.sleep(0.05)
        finally:
            if handle is not None:
                handle.close()
            self._readers_done.set()

    def _push_event_line(self, line: str) -> None:
        line = line.strip()
        if not line:
            return
        try:
            event = json.loads(line)
        except ValueError:
            self.queue.put({"event": "log", "stream": "events", "line": line})
            return
        if not isinstance(event, dict) or "event" not in event:
            self.queue.put({"event": "log", "stream": "events", "line": line})
            return
        if event.get("event") == "error":
            self.last_error_event = event
        self.queue.put(event)

    # ------------------------------------------------------------------ polling
    def poll(self) -> List[dict]:
        """Every item received since the last call (events and log lines), without blocking."""
        items: List[dict] = []
        while True:
            try:
                items.append(self.queue.get_nowait())
            except queue.Empty:
                break
        for item in items:
            if item.get("event") != "log":
                self.events.append(item)
            self.eventReceived.emit(item)
        if (not self._finished_emitted and self.process is not None and self._readers_done.is_set()
                and self.queue.empty() and self.process.poll() is not None):
            self._finished_emitted = True
            self.finished.emit(self.process.returncode)
        return items

    # ------------------------------------------------------------------ state
    @property
    def pid(self) -> Optional[int]:
        return self.process.pid if self.process is not None else None

    @property
    def returncode(self) -> Optional[int]:
        return self.process.poll() if self.process is not None else None

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def done(self) -> bool:
        """The process ended and every line of its output and events was read."""
        return self.process is not None and self.process.poll() is not None and self._readers_done.is_set()

    @property
    def succeeded(self) -> bool:
        return self.returncode == EXIT_OK

    @property
    def cancelled(self) -> bool:
        """Ended by :meth:`cancel` (exit code 3, or killed by the signal we sent)."""
        code = self.returncode
        if code is None:
            return False
        if code == EXIT_CANCELLED:
            return True
        return self.cancel_requested and code != EXIT_OK

    @property
    def error_message(self) -> Optional[str]:
        """Why the run failed: the last ``error`` event's message, else the stderr tail.

        ``None`` while running or after success.
        """
        code = self.returncode
        if code is None or code == EXIT_OK:
            return None
        if self.last_error_event is not None:
            message = self.last_error_event.get("message") or ""
            kind = self.last_error_event.get("type")
            return f"{kind}: {message}" if kind and message else (message or str(kind))
        tail = [line for line in self.stderr_tail if line.strip()]
        if tail:
            return "\n".join(tail[-20:])
        if self.cancelled:
            return "Cancelled."
        if code < 0:
            return f"The engine was stopped by signal {-code}."
        return f"The engine exited with code {code}."

    def wait(self, timeout: Optional[float] = None) -> Optional[int]:
        """Wait for the process and its readers; return the exit code (None on timeout)."""
        if self.process is None:
            raise RuntimeError("EngineProcess was not started")
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        # The readers finish as soon as the pipes close (a grandchild that keeps them open is
        # not waited for beyond a short grace period).
        self._readers_done.wait(timeout=5.0 if timeout is None else max(0.5, min(5.0, timeout)))
        return self.process.returncode

    # ------------------------------------------------------------------ cancel
    def _group_alive(self) -> bool:
        if self.process is None:
            return False
        if _IS_WINDOWS:
            return self.process.poll() is None
        try:
            os.killpg(self.process.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def _signal_group(self, sig) -> None:
        """POSIX: ``sig`` to the process group. Windows (``sig`` None): ``taskkill /F /T``."""
        if self.process is None:
            return
        if _IS_WINDOWS:
            subprocess.run(["taskkill", "/F", "/T", "/PID", str(self.process.pid)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False,
                           **({"startupinfo": windows_startupinfo()}))
            return
        try:
            os.killpg(self.process.pid, sig)
        except ProcessLookupError:
            pass

    def _request_stop(self) -> None:
        """The gentle stop: the cancel file (every platform), and SIGTERM where signals are used."""
        if self.cancel_file is not None:
            try:
                self.cancel_file.write_text("cancel\n", encoding="utf-8")
            except OSError:
                pass
        if self.use_signals and not _IS_WINDOWS:
            self._signal_group(signal.SIGTERM)

    def _kill_group(self) -> None:
        self._signal_group(None if _IS_WINDOWS else signal.SIGKILL)

    def cancel(self, timeout: float = 10.0, block: bool = True) -> Optional[int]:
        """Stop the whole process tree: the cancel file (and SIGTERM on POSIX), a kill after ``timeout`` s.

        The engine answers either by saving a checkpoint and exiting with code 3. With
        ``block=False`` the escalation runs in a thread and this returns at once (for a GUI).
        Returns the exit code when blocking.
        """
        if self.process is None:
            return None
        self.cancel_requested = True
        if not self._group_alive() and self.process.poll() is not None:
            return self.wait(timeout=1.0)
        self._request_stop()

        def escalate() -> None:
            deadline = time.time() + timeout
            while time.time() < deadline:
                if self.process.poll() is not None and not self._group_alive():
                    return
                time.sleep(0.05)
            self._kill_group()
            # reap the leader; members of the group are reaped by their own parents/init
            try:
                self.process.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                pass
            end = time.time() + 5.0
            while self._group_alive() and time.time() < end:
                time.sleep(0.05)

        if block:
            escalate()
            return self.wait(timeout=5.0)
        thread = threading.Thread(target=escalate, daemon=True)
        thread.start()
        self._threads.append(thread)
        return None

    # ------------------------------------------------------------------ helpers
    def run(self, on_item: Optional[Callable[[dict], None]] = None, interval: float = 0.2,
            timeout: Optional[float] = None, on_poll: Optional[Callable[[], None]] = None) -> int:
        """Start (if needed), poll until done (calling ``on_item`` for each item), return the code.

        ``on_poll`` is called at every poll (e.g. to let a GUI process its events). On
        ``timeout`` the process tree is cancelled and :class:`TimeoutError` raised.
        """
        if self.process is None:
            self.start()
        start = time.time()
        while True:
            if on_poll is not None:
                on_poll()
            for item in self.poll():
                if on_item is not None:
                    on_item(item)
            if self.done and self.queue.empty():
                for item in self.poll():
                    if on_item is not None:
                        on_item(item)
                return self.returncode
            if timeout is not None and time.time() - start > timeout:
                self.cancel()
                raise TimeoutError(f"The engine did not finish within {timeout} s; it was cancelled.")
            time.sleep(interval)

    def __enter__(self) -> "EngineProcess":
        return self

    def __exit__(self, *exc) -> bool:
        if self.is_running() or self._group_alive():
            self.cancel(timeout=5.0)
        return False
