"""Training and Apply as background runs the panel polls from a timer. No Qt.

A run is advanced by :meth:`step`, which never blocks for long: one volume exported, or one
poll of the engine process. The panel calls it from a ``QTimer`` (the console API loops over it),
shows what it returns (progress items and the engine's events) and disables its buttons while
``not run.done``; :meth:`cancel` stops it at any phase.

* :class:`TrainRun`: export the job (``mrml.export_job_steps``, one volume per step), write the
  options file (``process.write_train_config``: TrainConfig names, checked before anything is
  exported), then ``python -m CPCSAMLib train --config``; the trained model's path is kept in
  the run (not in the scene), so closing the scene loses nothing.
* :class:`ApplyRun`: for each volume, write it (one step), run ``predict`` in a background
  process, load the label image into its output segmentation: the one chosen, else the one a
  previous run wrote for that volume (reused), else a new one.

Items returned by ``step`` are dicts with ``"event"``: the engine's events and log lines (see
:mod:`.process`) and ``{"event": "export", "phase", "done", "total", "name"}``,
``{"event": "apply", "phase": "writing" | "segmenting" | "loaded", "done", "total", "name"}``.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from ..errors import InputError
from . import mrml
from . import process as engine

__all__ = ["TrainRun", "ApplyRun", "TRAIN_OPTIONS_NAME", "Eta", "format_duration", "run_to_end"]

#: The job file of training options (TrainConfig names) in the job folder.
TRAIN_OPTIONS_NAME = "train_options.json"


def format_duration(seconds: Optional[float]) -> str:
    if seconds is None or seconds != seconds or seconds < 0:
        return "-"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h} h {m:02d} min" if h else (f"{m} min {s:02d} s" if m else f"{s} s")


class Eta:
    """Time left from the engine's events: iterations still to run at the measured pace.

    ``iteration`` events give the pace (``seconds`` since the start of training, so the mean
    includes validation and checkpoints); a ``horizon`` event (``max_minutes``) caps the number
    of iterations that will run.
    """

    def __init__(self) -> None:
        self.iterations: Optional[int] = None
        self.horizon: Optional[int] = None
        self.first: Optional[tuple] = None
        self.last: Optional[tuple] = None

    def update(self, item: dict) -> None:
        kind = item.get("event")
        if kind == "started" and isinstance(item.get("iterations"), int):
            self.iterations = item["iterations"]
        elif kind == "horizon" and isinstance(item.get("horizon"), int):
            self.horizon = item["horizon"]
        elif kind == "iteration" and isinstance(item.get("iteration"), int) \
                and isinstance(item.get("seconds"), (int, float)):
            point = (item["iteration"], float(item["seconds"]))
            if isinstance(item.get("iterations"), int):
                self.iterations = item["iterations"]
            if self.first is None:
                self.first = point
            self.last = point

    @property
    def end(self) -> Optional[int]:
        ends = [v for v in (self.iterations, self.horizon) if v]
        return min(ends) if ends else None

    def seconds_left(self) -> Optional[float]:
        if self.first is None or self.last is None or self.end is None or self.last[0] <= self.first[0]:
            return None
        pace = (self.last[1] - self.first[1]) / (self.last[0] - self.first[0])
        return max(0.0, (self.end - self.last[0]) * pace)

    def text(self) -> str:
        left = self.seconds_left()
        return "" if left is None else f"about {format_duration(left)} left"


class _Run:
    def __init__(self) -> None:
        self.process: Optional[engine.EngineProcess] = None
        self.cancel_requested = False
        self.error: Optional[str] = None
        self.finished = False

    @property
    def done(self) -> bool:
        return self.finished

    @property
    def succeeded(self) -> bool:
        return self.finished and self.error is None and not self.cancel_requested

    @property
    def cancelled(self) -> bool:
        return self.finished and self.cancel_requested


class TrainRun(_Run):
    """Export a training job and train in a background process (see the module docstring)."""

    def __init__(self, scene, seg_logic, labeled, unlabeled, job_dir, options: Dict[str, object],
                 validation=None, python_executable: Optional[str] = None, env: Optional[dict] = None):
        super().__init__()
        self.job_dir = Path(job_dir)
        self.options = dict(options)
        engine.validate_train_options(self.options)  # before anything is exported
        self.model_dir = self.job_dir / "model"
        self.events_path = self.model_dir / "events.jsonl"
        self.python_executable = python_executable
        self.env = env
        self._export = mrml.export_job_steps(scene, seg_logic, labeled, unlabeled, self.job_dir,
                                             {"axis": self.options.get("axis")}, validation=validation)
        self.manifest: Optional[Path] = None
        self.eta = Eta()
        self.started_at = time.time()

    @property
    def model_path(self) -> Path:
        """``model_best.pt`` of this run (kept here, independent of the scene)."""
        return self.model_dir / "model_best.pt"

    @property
    def last_checkpoint(self) -> Path:
        return self.model_dir / "model_last.pt"

    def step(self) -> List[dict]:
        if self.finished:
            return []
        if self.process is None:
            try:
                progress = next(self._export)
                return [dict(progress, event="export")]
            except StopIteration as stop:
                self.manifest = stop.value
            except Exception as exc:  # noqa: BLE001 - the run reports it (InputError: a user error)
                self.error = str(exc) if isinstance(exc, InputError) else f"{type(exc).__name__}: {exc}"
                self.finished = True
                return [{"event": "error", "type": type(exc).__name__, "message": str(exc)}]
            config = engine.write_train_config(self.job_dir / TRAIN_OPTIONS_NAME, self.options)
            args = engine.train_arguments(self.manifest, self.model_dir, config, self.events_path)
            self.process = engine.EngineProcess(args, events_path=self.events_path,
                                                python_executable=self.python_executable, env=self.env,
                                                cwd=str(self.job_dir))
            self.process.start()
            return [{"event": "log", "stream": "command", "line": " ".join(self.process.full_command)}]
        items = self.process.poll()
        for item in items:
            self.eta.update(item)
        if self.process.done and self.process.queue.empty():
            items += self.process.poll()
            self.finished = True
            if not self.process.succeeded:
                self.error = None if self.process.cancelled else (self.process.error_message or "failed")
                self.cancel_requested = self.cancel_requested or self.process.cancelled
        return items

    def cancel(self, timeout: float = 60.0) -> None:
        """Stop: during export at once (nothing is trained); during training the engine saves first."""
        self.cancel_requested = True
        if self.process is None:
            self._export.close()
            self.finished = True
        else:
            self.process.cancel(timeout=timeout, block=False)


class ApplyRun(_Run):
    """Segment volumes one after the other in background ``predict`` processes."""

    def __init__(self, scene, seg_logic, model_path, volumes: Sequence, classes, device: str = "auto",
                 outputs: Optional[Dict[str, object]] = None, python_executable: Optional[str] = None,
                 env: Optional[dict] = None, work_dir=None, self_prompt: Optional[bool] = None):
        super().__init__()
        if not model_path or not Path(str(model_path)).is_file():
            raise InputError(f"Model file {model_path!r} does not exist.")
        volumes = [v for v in volumes if v is not None]
        if not volumes:
            raise InputError("No volume to segment was chosen.")
        for volume in volumes:
            mrml.validate_volume(volume, "volume to segment")
        self.scene, self.seg_logic = scene, seg_logic
        self.model_path = str(model_path)
        self.volumes = list(volumes)
        self.classes = classes
        self.device = device
        self.self_prompt = self_prompt
        self.outputs = dict(outputs or {})
        self.python_executable, self.env = python_executable, env
        self._tmp = None
        if work_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="CPCSAM-apply-")
            work_dir = self._tmp.name
        self.work_dir = Path(work_dir)
        self.index = 0
        self.results: List[object] = []
        self._label: Optional[Path] = None

    def _target(self, volume):
        """The output segmentation: the chosen one, else the previous result of this volume."""
        return self.outputs.get(volume.GetID()) or mrml.previous_result(volume)

    def step(self) -> List[dict]:
        if self.finished:
            return []
        total = len(self.volumes)
        volume = self.volumes[self.index]
        name = volume.GetName()
        try:
            if self.process is None:
                folder = self.work_dir / f"{self.index:03d}"
                inputs = mrml.export_volume(volume, folder / "input.nrrd")
                self._label = folder / "label.nrrd"
                args = engine.predict_arguments(self.model_path, [inputs], self._label, self.device, self.self_prompt)
                self.process = engine.EngineProcess(args, events_path=folder / "events.jsonl",
                                                    python_executable=self.python_executable, env=self.env,
                                                    cwd=str(folder))
                self.process.start()
                return [{"event": "apply", "phase": "segmenting", "done": self.index, "total": total, "name": name}]
            items = self.process.poll()
            if not (self.process.done and self.process.queue.empty()):
                return items
            items += self.process.poll()
            if not self.process.succeeded:
                self.finished = True
                self.cancel_requested = self.cancel_requested or self.process.cancelled
                if not self.process.cancelled:
                    self.error = f"{name}: {self.process.error_message}"
                return items
            target = self._target(volume)
            result = mrml.load_result(self.scene, self.seg_logic, self._label, volume, self.classes,
                                      segmentation_node=target, overwrite=target is not None)
            self.results.append(result)
            self.process = None
            self.index += 1
            items.append({"event": "apply", "phase": "loaded", "done": self.index, "total": total, "name": name,
                          "segmentation": result.GetName()})
            if self.index >= total:
                self.finished = True
            return items
        except Exception as exc:  # noqa: BLE001 - reported by the run
            self.finished = True
            self.error = f"{name}: {exc}"
            return [{"event": "error", "type": type(exc).__name__, "message": f"{name}: {exc}"}]
        finally:
            if self.finished and self._tmp is not None:
                self._tmp.cleanup()
                self._tmp = None

    def cancel(self, timeout: float = 10.0) -> None:
        self.cancel_requested = True
        if self.process is not None:
            self.process.cancel(timeout=timeout, block=False)
        else:
            self.finished = True
            if self._tmp is not None:
                self._tmp.cleanup()
                self._tmp = None


def run_to_end(run, on_item: Optional[Callable[[dict], None]] = None, interval: float = 0.1,
               on_poll: Optional[Callable[[], None]] = None, timeout: Optional[float] = None):
    """Step a run until it is done (the console API and the tests); returns the run."""
    start = time.time()
    while not run.done:
        for item in run.step():
            if on_item is not None:
                on_item(item)
        if on_poll is not None:
            on_poll()
        if timeout is not None and time.time() - start > timeout:
            run.cancel(timeout=5.0)
            raise TimeoutError(f"the run did not finish within {timeout} s; it was cancelled")
        if run.process is not None and not run.done:
            time.sleep(interval)
    return run
