"""The trainer owns one iteration; checkpointing, validation, the events file, the progress bar and
the history are listeners on its one event stream (as MONAI's SupervisedTrainer and its handlers).

:func:`run_training` sets a run up: everything that can fail on the user's input (options,
manifest, images, labels, backbone file, resume checkpoint, an output folder in use) is checked
before a file is written; the output folder is locked for the run.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Dict, Optional

import numpy as np
import torch

from .. import dataset as ds
from ..checkpoint import check_compatible, load_checkpoint
from ..config import TrainConfig
from ..errors import Cancelled, CheckpointError, InputError
from ..events import EventWriter
from ..runtime import autocast_dtype, build_model, prepare_cpu, select_device
from .cancel import StopFlag
from .checkpoints import Checkpointer
from .embeddings import EmbeddingCache, EmbeddingStore
from .folder import OutputFolder
from .history import History, ProgressBar, empty_history, plot_curves
from .schedule import HorizonEstimator, learning_rate
from .step import Batches, TrainStep
from .validation import evaluate_slices


@dataclass
class TrainResult:
    status: str  # completed | time_limit
    iteration: int
    best_dice: Optional[float]
    model: Optional[str]
    last: Optional[str]
    history: Dict[str, list] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class Data:
    manifest: ds.Manifest
    labeled: ds.SliceSet
    unlabeled: Optional[ds.SliceSet]
    validation: Optional[ds.SliceSet]

    @property
    def class_names(self):
        return self.manifest.class_names


class Validator:
    """Listens to ``iteration`` events; every ``val_every`` iterations emits ``validation``."""

    def __init__(self, trainer: "Trainer", slices: ds.SliceSet, class_names, best: Optional[float]) -> None:
        self.trainer, self.slices, self.class_names, self.best = trainer, slices, class_names, best
        self.last_iteration: Optional[int] = None

    def __call__(self, event: dict) -> None:
        if event["event"] == "iteration":
            it, cfg = event["iteration"], self.trainer.cfg
            if it % cfg.val_every == 0 or it == cfg.iterations:
                self.validate(it)

    def validate(self, it: int) -> None:
        t = self.trainer
        scores = evaluate_slices(t.model, self.slices, self.class_names, t.device, t.cfg.val_batch_size,
                                 t.amp_dtype, check=lambda: t.stop.check("validation"))
        mean = float(np.mean(list(scores.values())))
        is_best = self.best is None or mean > self.best
        if is_best:
            self.best = mean
        self.last_iteration = it
        t.emit("validation", iteration=it, dice=mean, dice_per_class=scores, best=is_best)


class Trainer:
    """Runs iterations from ``start_iteration`` to ``cfg.iterations`` (or a stop, or the time limit)."""

    def __init__(self, cfg: TrainConfig, model, step: TrainStep, batches: Batches, events: EventWriter,
                 stop: StopFlag, rng: np.random.Generator, device, amp_dtype, start_iteration: int,
                 start_time: float) -> None:
        self.cfg, self.model, self.step, self.batches, self.events = cfg, model, step, batches, events
        self.stop, self.rng, self.device, self.amp_dtype = stop, rng, device, amp_dtype
        self.iteration = self.start_iteration = start_iteration
        self.start_time = start_time
        self.horizon = HorizonEstimator(cfg, start_time, start_iteration)

    def emit(self, event: str, **fields) -> dict:
        return self.events.emit(event, **fields)

    def attach(self, listener: Callable[[dict], None]) -> None:
        self.events.callbacks.append(listener)

    def out_of_time(self) -> bool:
        return self.cfg.max_minutes is not None and (time.time() - self.start_time) / 60 >= self.cfg.max_minutes

    def run(self) -> str:
        """Returns ``completed`` or ``time_limit``; raises :class:`Cancelled` between iterations."""
        self.model.train()
        if self.horizon.wants_unlabeled_cost(self.iteration) and self.batches.unl_cycle is not None:
            self.measure_unlabeled_cost()
        while self.iteration < self.cfg.iterations:
            self.stop.check(f"training (after iteration {self.iteration})")
            if self.out_of_time():
                return "time_limit"
            self.run_iteration()
        return "completed"

    def measure_unlabeled_cost(self) -> None:
        """Times a labeled-only and a full forward and backward pass on one batch (after an untimed
        one that warms the unlabeled path up) and gives the difference to the horizon estimator; the
        weights do not change. Emits ``step_cost``."""
        self.stop.check("timing the training step")
        xl, yl, xu = self.batches.next()
        rng = np.random.default_rng(0)  # the training stream's prompts are not drawn here
        self.step.time_forward_backward(xl, yl, xu, rng, False)
        labeled_only = self.step.time_forward_backward(xl, yl, xu, rng, True)
        full = self.step.time_forward_backward(xl, yl, xu, rng, False)
        self.horizon.unlabeled_extra = max(0.0, full - labeled_only)
        self.emit("step_cost", labeled_only_seconds=round(labeled_only, 4), with_unlabeled_seconds=round(full, 4))

    def run_iteration(self) -> None:
        it, horizon = self.iteration, self.horizon.horizon
        t0 = time.time()
        lr = learning_rate(self.cfg, it, horizon)
        xl, yl, xu = self.batches.next()
        out = self.step(xl, yl, xu, self.rng, lr, it < self.horizon.supervised_end, it + 1)
        self.iteration = it + 1
        self.emit("iteration", iteration=self.iteration, iterations=self.cfg.iterations, lr=lr,
                  seconds=round(time.time() - t0, 3), **out)
        fitted = self.horizon.after_iteration(self.iteration)
        if fitted:
            self.emit("horizon", **fitted)


def _ddp_info():
    return (int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0")),
            int(os.environ.get("LOCAL_RANK", "0")))


def _load_data(manifest: ds.Manifest, cfg: TrainConfig, size: int, stop: StopFlag) -> Data:
    pct = tuple(cfg.percentiles) if cfg.percentiles else None
    stop.check("data loading")
    labeled = ds.build_slices(manifest.labeled, manifest.classes, size, cfg.axis, pct)
    stop.check("data loading")
    unlabeled = ds.build_slices(manifest.unlabeled, manifest.classes, size, cfg.axis, pct) if manifest.unlabeled else None
    stop.check("data loading")
    val = ds.build_slices(manifest.validation, manifest.classes, size, cfg.axis, pct) if manifest.validation else None
    if cfg.method != "supervised" and cfg.supervised_warmup < 1.0 and (unlabeled is None or len(unlabeled) == 0):
        raise InputError(f"method {cfg.method} needs unlabeled images but the manifest lists none; "
                         "add some under 'unlabeled' or use --method supervised")
    return Data(manifest, labeled, unlabeled, val)


def _device(world: int, local_rank: int, cfg: TrainConfig) -> torch.device:
    if world == 1:
        return select_device(cfg.device)
    import torch.distributed as dist

    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def _resume_state(last_path: Path, cfg: TrainConfig, class_names) -> dict:
    if not last_path.is_file():
        raise CheckpointError(f"--resume: {last_path} does not exist; start without --resume")
    payload = load_checkpoint(last_path)
    check_compatible(payload["model_card"], last_path, backbone=cfg.backbone, class_names=class_names)
    trained_neck = bool(payload["model_card"].get("tune_neck"))
    if trained_neck != cfg.tune_neck:
        raise CheckpointError(f"--resume: {last_path} was trained {'with' if trained_neck else 'without'} "
                              "--tune-neck; resume with the same setting")
    return payload


def _embedding_caches(cfg, model, data: Data, bu: int, rng, device, amp_dtype, stop: StopFlag, main: bool, emit):
    t0 = time.time()
    store = EmbeddingStore(cfg.embedding_store, model, amp_dtype) if cfg.embedding_store and main else None
    views_l = cfg.labeled_views(len(data.labeled))
    with_unlabeled = bool(bu and data.unlabeled is not None and len(data.unlabeled))
    total = views_l * len(data.labeled) + (cfg.unlabeled_views() * len(data.unlabeled) if with_unlabeled else 0)
    offset, last = [0], [0.0]

    def check(done: int, _of: int) -> None:
        """Cancel point and a ``caching`` progress event (at most one every 2 s)."""
        stop.check("embedding caching")
        if time.time() - last[0] >= 2.0:
            last[0] = time.time()
            emit("caching", done=offset[0] + done, total=total, seconds=round(time.time() - t0, 1))

    lab = EmbeddingCache(model, data.labeled, views_l, rng, device, amp_dtype, cfg.val_batch_size, check, store)
    offset[0] = views_l * len(data.labeled)
    unl = None
    if with_unlabeled:
        unl = EmbeddingCache(model, data.unlabeled, cfg.unlabeled_views(), rng, device, amp_dtype,
                             cfg.val_batch_size, check, store)
    emit("cached", slices=len(data.labeled) + (0 if unl is None else len(data.unlabeled)), views=views_l,
         views_unlabeled=cfg.unlabeled_views() if unl is not None else None, seconds=round(time.time() - t0, 1),
         store_hits=store.hits if store else None, store_misses=store.misses if store else None)
    return lab, unl


def run_training(manifest_path: str | Path | ds.Manifest, output_dir: str | Path, config: Optional[TrainConfig] = None,
                 events_path: Optional[str | Path] = None, cancel: Optional[Callable[[], bool]] = None,
                 progress: Optional[bool] = None, on_event: Optional[Callable[[dict], None]] = None) -> TrainResult:
    """Trains CPC-SAM on a manifest; writes checkpoints, config.json, events and a curve into ``output_dir``.

    ``config`` is not changed. Under ``torchrun`` (``WORLD_SIZE`` > 1) the objective is wrapped in
    PyTorch DDP; rank 0 writes. Raises :class:`InputError`/:class:`CheckpointError` before writing
    anything on bad input, :class:`OutputError` when an output cannot be written, and
    :class:`Cancelled` when stopped by SIGTERM/SIGINT or ``cancel()`` (after a ``finished`` event
    with status ``cancelled``, and a checkpoint if an iteration was trained).
    """
    cfg = replace(config or TrainConfig())
    cfg.validate()
    stop = StopFlag(cancel).install()
    try:
        return _Run(cfg, Path(output_dir), events_path, stop, progress, on_event).execute(manifest_path)
    finally:
        stop.restore()


class _Run:
    """One call of :func:`run_training`: set-up, the trainer, the end."""

    def __init__(self, cfg, output_dir: Path, events_path, stop: StopFlag, progress, on_event) -> None:
        self.cfg, self.output_dir, self.events_path, self.stop = cfg, output_dir, events_path, stop
        self.progress, self.on_event = progress, on_event
        self.t_start = time.time()
        self.world, self.rank, self.local_rank = _ddp_info()
        self.main = self.rank == 0
        self.folder = OutputFolder(output_dir)
        self.events: Optional[EventWriter] = None

    def execute(self, manifest_path) -> TrainResult:
        try:
            return self._execute(manifest_path)
        finally:
            if self.events is not None:
                self.events.close()
            if self.main:
                self.folder.release()
            if self.world > 1 and torch.distributed.is_initialized():
                torch.distributed.destroy_process_group()

    def _execute(self, manifest_path) -> TrainResult:
        cfg, stop = self.cfg, self.stop
        manifest = manifest_path if isinstance(manifest_path, ds.Manifest) else ds.load_manifest(manifest_path)
        if cfg.axis is None:
            cfg.axis = manifest.axis
        self.axis_reason = "set by the options" if cfg.axis is not None else None
        if self.main:  # before anything slow: a folder in use or holding a run is refused at once
            self.folder.check_not_a_run(cfg.resume, cfg.overwrite)
            self.folder.acquire()
            self.folder.check_not_a_run(cfg.resume, cfg.overwrite)
        from ..modeling.backbones import build_backbone, input_size_for

        if cfg.axis is None:
            stop.check("data loading")
            cfg.axis, self.axis_reason = ds.choose_axis(manifest.labeled, manifest.classes)
        data = _load_data(manifest, cfg, input_size_for(cfg.backbone), stop)
        resume = _resume_state(self.folder.folder / "model_last.pt", cfg, data.class_names) if cfg.resume else None
        device = _device(self.world, self.local_rank, cfg)
        if device.type == "cpu":
            prepare_cpu(cfg.num_threads)
        stop.check("model loading")
        backbone = build_backbone(cfg.backbone, cfg.sam_checkpoint)
        stop.check("model loading")
        torch.manual_seed(cfg.seed + self.rank)
        card = {**cfg.to_dict(), "num_classes": len(data.class_names)}
        model = build_model(card, device, backbone=backbone)
        del backbone
        return self._train(data, model, device, resume)

    def _make_step(self, model, device) -> TrainStep:
        """The objective (frozen mode, prompts and weights from the config), AdamW and the update."""
        from ..objective import CPCObjective

        cfg = self.cfg
        objective = CPCObjective(model, cfg.method, cfg.lambda_cross, cfg.lambda_consistency,
                                 prompt_type=cfg.resolved_prompt_type(), box_margin=cfg.box_margin,
                                 frozen_encoder=cfg.freeze_encoder,
                                 unlabeled_trains_encoder=cfg.unlabeled_trains_encoder,
                                 negative_boxes=cfg.negative_boxes, agreed_prompts=cfg.agreed_prompts,
                                 pseudo_label_threshold=cfg.pseudo_label_threshold)
        neck = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith("image_encoder.neck.")]
        rest = [p for p in model.parameters() if p.requires_grad and all(p is not q for q in neck)]
        groups = [{"params": rest}] + ([{"params": neck, "lr_scale": cfg.neck_lr_scale}] if neck else [])
        optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay)
        step_module = objective
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            if cfg.update == "sequential":
                raise InputError("--update sequential is not supported with several processes; use combined")
            step_module = DDP(objective, device_ids=[self.local_rank] if device.type == "cuda" else None,
                              find_unused_parameters=True)
        amp_dtype = autocast_dtype(cfg.precision, device)
        return TrainStep(objective, step_module, optimizer, device, amp_dtype, cfg.update == "sequential")

    def _attach_listeners(self, trainer: "Trainer", data: Data, optimizer, history: Dict[str, list],
                          best_dice: Optional[float]):
        """History, progress bar, validation and checkpointing listen on rank 0; ``on_event`` everywhere."""
        cfg = self.cfg
        hist = History(history)
        checkpointer = Checkpointer(self.output_dir, cfg, data.manifest.classes, trainer.model, optimizer, hist.data,
                                    trainer.emit, trainer.start_iteration, best_dice)
        validator = Validator(trainer, data.validation, data.class_names, best_dice) if data.validation else None
        if self.on_event:
            trainer.attach(self.on_event)
        if self.main:
            trainer.attach(hist)
            if self.progress if self.progress is not None else os.isatty(2):
                trainer.attach(ProgressBar(cfg.iterations, trainer.start_iteration))
            if validator:
                trainer.attach(validator)
            trainer.attach(checkpointer)
        return hist, checkpointer, validator

    def _train(self, data: Data, model, device, resume: Optional[dict]) -> TrainResult:
        cfg, stop = self.cfg, self.stop
        step = self._make_step(model, device)
        start_it, best_dice, history = 0, None, empty_history()
        if resume is not None:
            start_it, best_dice, history = self._restore(resume, model, step.optimizer)
            torch.manual_seed(cfg.seed + self.rank + start_it)
        rng = np.random.default_rng(cfg.seed + 7919 * self.rank + start_it)
        stop.check("model loading")
        # ---- from here on, output is written (rank 0 only) --------------------------------------
        events_file = (self.events_path or self.output_dir / "events.jsonl") if self.main else None
        self.events = EventWriter(events_file, fresh=self.events_path is None and resume is None)
        bl, bu = cfg.labeled_batch(), cfg.unlabeled_batch()
        trainer = Trainer(cfg, model, step, None, self.events, stop, rng, device, step.amp_dtype, start_it,
                          self.t_start)
        hist, checkpointer, validator = self._attach_listeners(trainer, data, step.optimizer, history, best_dice)
        amp_dtype = step.amp_dtype
        try:
            trainer.emit("started", iterations=cfg.iterations, start_iteration=start_it, device=str(device),
                         classes=data.class_names, num_labeled=len(data.labeled),
                         num_unlabeled=0 if data.unlabeled is None else len(data.unlabeled),
                         num_validation=0 if data.validation is None else len(data.validation), method=cfg.method,
                         backbone=cfg.backbone, batch_size=cfg.batch_size, labeled_batch=bl, world_size=self.world,
                         output=str(self.output_dir), removed_temporaries=self.folder.removed_temporaries,
                         axis=cfg.axis, axis_reason=self.axis_reason)
            caches = (None, None)
            if cfg.freeze_encoder:
                caches = _embedding_caches(cfg, model, data, bu, rng, device, amp_dtype, stop, self.main, trainer.emit)
            trainer.batches = Batches(data.labeled, data.unlabeled, bl, bu, rng, cfg.augment, device, *caches)
            status = trainer.run()
        except Cancelled as exc:
            self._finish(trainer, checkpointer, validator, hist, "cancelled")
            cancelled = Cancelled(f"{exc}; {self._kept(checkpointer)}")
            cancelled.reported = self.main  # the `finished` event is written
            raise cancelled from None
        except BaseException as exc:
            self._report(exc, trainer.iteration)
            raise
        return self._finish(trainer, checkpointer, validator, hist, status)

    def _restore(self, payload: dict, model, optimizer):
        last_path = self.folder.folder / "model_last.pt"
        missing = set(model.trainable_state_dict()) - set(payload["state_dict"])
        if missing:
            raise CheckpointError(f"{last_path} lacks {len(missing)} trained tensors (e.g. {sorted(missing)[0]})")
        model.load_state_dict(payload["state_dict"], strict=False)
        optimizer.load_state_dict(payload["optimizer"])
        best = payload.get("best_dice")
        history = json.loads(payload.get("history", "{}")) or empty_history()
        return int(payload["iteration"]), None if best is None else float(best), history

    def _kept(self, checkpointer: Checkpointer) -> str:
        if checkpointer.last_saved is not None and checkpointer.last_path.is_file():
            return f"checkpoint {checkpointer.last_path} (iteration {checkpointer.last_saved})"
        return "no iteration was trained; nothing was saved"

    def _report(self, exc: BaseException, iteration: int) -> None:
        """An ``error`` event (if the events file still takes one); the CLI does not report it again."""
        if not self.main or self.events is None:
            return
        if not self.events.broken:
            try:
                self.events.emit("error", type=type(exc).__name__, message=str(exc) or type(exc).__name__,
                                 iteration=iteration)
            except Exception:  # noqa: BLE001 - the original error is the one to raise
                pass
        try:
            exc.reported = True
        except AttributeError:
            pass

    def _finish(self, trainer: Trainer, checkpointer: Checkpointer, validator: Optional[Validator], hist: History,
                status: str) -> TrainResult:
        it = trainer.iteration
        if self.main:
            try:
                if status != "cancelled" and validator and it > trainer.start_iteration \
                        and validator.last_iteration != it:
                    validator.validate(it)
                checkpointer.final(it, validated=validator is not None)
                if it > trainer.start_iteration:
                    plot_curves(hist.data, self.output_dir / "training_curve.png")
            except BaseException as exc:
                self._report(exc, it)
                raise
            best = validator.best if validator else checkpointer.best_dice
            trainer.emit("finished", iteration=it, status="cancelled" if status == "cancelled" else "completed",
                         reason=status, best_dice=best, model=str(checkpointer.best_path),
                         seconds=round(time.time() - self.t_start, 1))
        else:
            best = None
        return TrainResult(status, it, best, str(checkpointer.best_path), str(checkpointer.last_path), hist.data,
                           time.time() - self.t_start)
