"""Run the engine's command line in a background process, without Qt.

:class:`EngineProcess` starts ``[python, "-m", "CPCSAMLib", *args]`` in its own process group
(POSIX: ``start_new_session=True``; Windows: ``CREATE_NEW_PROCESS_GROUP``), reads its stdout and
stderr in threads, follows the JSON-lines events file (``--events``) with a tail reader, and
queues everything for :meth:`EngineProcess.poll`, which never blocks (the Slicer widget calls it
from a ``QTimer``). :meth:`EngineProcess.cancel` ends the **whole process tree**: SIGTERM to the
process group (the engine saves a checkpoint and exits with code 3), then SIGKILL to whatever is
left after a timeout (Windows: ``taskkill /T``).

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
    "train_options",
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


def _option_flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def train_arguments(manifest, output, events=None, options: Optional[dict] = None) -> List[str]:
    """``train`` arguments for the engine CLI; ``options`` keys become ``--key-with-dashes``.

    ``None`` values are left out, ``True`` gives a bare flag and ``False`` nothing.
    """
    args = ["train", "--manifest", str(manifest), "--output", str(output)]
    if events:
        args += ["--events", str(events)]
    args += _options_to_args(options)
    return args


def predict_arguments(model, inputs: Sequence, output, options: Optional[dict] = None) -> List[str]:
    """``predict`` arguments for the engine CLI."""
    args = ["predict", "--model", str(model), "--input", *[str(p) for p in inputs], "--output", str(output)]
    args += _options_to_args(options)
    return args


def _options_to_args(options: Optional[dict]) -> List[str]:
    args: List[str] = []
    for key, value in (options or {}).items():
        if value is None or value is False:
            continue
        if value is True:
            args.append(_option_flag(key))
        elif isinstance(value, (list, tuple)):
            args.append(_option_flag(key))
            args += [str(v) for v in value]
        else:
            args += [_option_flag(key), str(value)]
    return args


#: Backbone names shown in the panel -> engine names (engine names are accepted as they are).
BACKBONES = {"LiteMedSAM": "litemedsam", "SAM ViT-B": "sam_vit_b", "SAM ViT-L": "sam_vit_l",
             "SAM ViT-H": "sam_vit_h"}
#: Device names shown in the panel -> engine names.
DEVICES = {"auto": "auto", "CPU": "cpu", "GPU": "cuda"}

#: Option names accepted by :func:`train_options` (Slicer camelCase, engine snake_case, paper
#: names) -> the engine's ``train`` option.
_TRAIN_OPTION_ALIASES = {
    "backbone": "backbone",
    "samCheckpoint": "sam_checkpoint", "sam_checkpoint": "sam_checkpoint",
    "device": "device",
    "iterations": "iterations",
    "batchSize": "batch_size", "batch_size": "batch_size",
    "learningRate": "lr", "learning_rate": "lr", "lr": "lr",
    "lambda1": "lambda_cross", "lambdaCross": "lambda_cross", "lambda_cross": "lambda_cross",
    "lambda2": "lambda_consistency", "lambdaConsistency": "lambda_consistency",
    "lambda_consistency": "lambda_consistency",
    "loraRank": "lora_rank", "lora_rank": "lora_rank",
    "valEvery": "val_every", "val_every": "val_every", "validationEvery": "val_every",
    "saveEvery": "save_every", "save_every": "save_every",
    "seed": "seed",
    "method": "method",
    "axis": "axis",
    "maxMinutes": "max_minutes", "max_minutes": "max_minutes",
    "threads": "threads",
    "warmupIters": "warmup_iters", "warmup_iters": "warmup_iters",
    "noAugment": "no_augment", "no_augment": "no_augment",
    "freezeEncoder": "freeze_encoder", "freeze_encoder": "freeze_encoder", "fastCPUMode": "freeze_encoder",
    "cacheViews": "cache_views", "cache_views": "cache_views",
    "cacheViewsUnlabeled": "cache_views_unlabeled", "cache_views_unlabeled": "cache_views_unlabeled",
    "embeddingStore": "embedding_store", "embedding_store": "embedding_store",
}


def train_options(**options) -> Dict[str, object]:
    """Normalise training options to the engine's ``train`` options (``--key-with-dashes``).

    Accepts the panel's names (``batchSize``, ``learningRate``, ``lambda1``...), the engine's
    (``batch_size``, ``lr``, ``lambda_cross``...), the panel's backbone and device labels
    ("SAM ViT-B", "GPU"). ``None`` values are dropped. Raises ``InputError`` for an unknown
    option, backbone or device, and for a SAM backbone without an existing checkpoint file.
    """
    from ..errors import InputError

    out: Dict[str, object] = {}
    for key, value in options.items():
        if value is None:
            continue
        if key not in _TRAIN_OPTION_ALIASES:
            raise InputError(f"Unknown training option {key!r}; known options: "
                             f"{sorted(set(_TRAIN_OPTION_ALIASES))}")
        out[_TRAIN_OPTION_ALIASES[key]] = value
    if "backbone" in out:
        name = str(out["backbone"])
        engine_names = set(BACKBONES.values())
        if name in BACKBONES:
            out["backbone"] = BACKBONES[name]
        elif name.lower() in engine_names:
            out["backbone"] = name.lower()
        else:
            raise InputError(f"Unknown backbone {name!r}; choose one of {list(BACKBONES)}")
    if "device" in out:
        name = str(out["device"])
        out["device"] = DEVICES.get(name, name)
    if str(out.get("backbone", "litemedsam")).startswith("sam_vit"):
        checkpoint = out.get("sam_checkpoint")
        if not checkpoint or not Path(str(checkpoint)).is_file():
            raise InputError(f"The {out['backbone']} backbone needs the SAM checkpoint file "
                             f"(e.g. sam_vit_b_01ec64.pth); got {checkpoint!r}.")
    else:
        out.pop("sam_checkpoint", None)
    for key in ("iterations", "batch_size", "lora_rank", "val_every", "save_every", "seed", "threads",
                "warmup_iters"):
        if key in out:
            out[key] = int(out[key])
    for key in ("lr", "lambda_cross", "lambda_consistency", "max_minutes"):
        if key in out:
            out[key] = float(out[key])
    for key in ("freeze_encoder", "no_augment"):  # parameter nodes store "true"/"false"
        if key in out and isinstance(out[key], str):
            if out[key].lower() not in ("true", "false", "1", "0", ""):
                raise InputError(f"Option {key} must be true or false, got {out[key]!r}")
            out[key] = out[key].lower() in ("true", "1")
    for key in ("cache_views", "cache_views_unlabeled"):
        if key in out:
            out[key] = int(out[key])
    if "embedding_store" in out:
        out["embedding_store"] = str(out["embedding_store"])
    return out


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
                 command: Optional[Sequence[str]] = None, stderr_lines: int = 200):
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
        kwargs = dict(stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                      env=env, cwd=self.cwd, bufsize=1, text=True, encoding="utf-8", errors="replace")
        if _IS_WINDOWS:
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP  # type: ignore[attr-defined]
        else:
            kwargs["start_new_session"] = True
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
        if self.process is None:
            return
        if _IS_WINDOWS:
            if sig == getattr(signal, "SIGKILL", None) or sig is None:
                subprocess.run(["taskkill", "/F", "/T", "/PID", str(self.process.pid)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
            else:
                try:
                    self.process.send_signal(signal.CTRL_BREAK_EVENT)  # type: ignore[attr-defined]
                except (OSError, ValueError):
                    pass
            return
        try:
            os.killpg(self.process.pid, sig)
        except ProcessLookupError:
            pass

    def cancel(self, timeout: float = 10.0, block: bool = True) -> Optional[int]:
        """Stop the whole process tree: SIGTERM to the group, SIGKILL after ``timeout`` seconds.

        The engine answers SIGTERM by saving a checkpoint and exiting with code 3. With
        ``block=False`` the escalation runs in a thread and this returns at once (for a GUI).
        Returns the exit code when blocking.
        """
        if self.process is None:
            return None
        self.cancel_requested = True
        if not self._group_alive() and self.process.poll() is not None:
            return self.wait(timeout=1.0)
        if _IS_WINDOWS:
            self._signal_group(None)  # taskkill /T /F: there is no gentle signal for a tree
        else:
            self._signal_group(signal.SIGTERM)

        def escalate() -> None:
            deadline = time.time() + timeout
            while time.time() < deadline:
                if self.process.poll() is not None and not self._group_alive():
                    return
                time.sleep(0.05)
            if _IS_WINDOWS:
                self._signal_group(None)
            else:
                self._signal_group(signal.SIGKILL)
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
