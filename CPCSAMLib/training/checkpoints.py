"""The checkpointing listener: ``model_last.pt`` every ``save_every`` iterations, ``model_best.pt``
when validation improves, ``config.json`` with the first checkpoint. A failed write leaves the
previous file intact (atomic replace) and is reported as :class:`OutputError` naming the reason."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

from .. import dataset as ds
from ..checkpoint import package_versions, save_checkpoint
from ..config import TrainConfig
from ..errors import OutputError, output_error
from ..io import write_text_atomic


def model_card(cfg: TrainConfig, classes: List[ds.ClassInfo], input_size: int, iteration: int,
               val: Optional[dict]) -> dict:
    return {
        "backbone": cfg.backbone,
        "backbone_checkpoint": cfg.sam_checkpoint,
        "classes": ds.classes_to_json(classes),
        "input_size": input_size,
        "lora_rank": cfg.lora_rank,
        "decoder_init": cfg.decoder_init,
        "prompt_type": cfg.resolved_prompt_type(),
        "box_margin": cfg.box_margin,
        "box_pass": cfg.box_pass,
        "default_prompt": cfg.resolved_default_prompt(),
        "freeze_encoder": cfg.freeze_encoder,
        "tune_neck": cfg.tune_neck,
        "axis": cfg.axis,
        "percentiles": cfg.percentiles,
        "iteration": iteration,
        "validation_dice": val,
        "training_config": cfg.to_dict(),
        "versions": package_versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def write_failure(exc: BaseException, path: Path) -> OutputError:
    """torch reports a full disk as a RuntimeError without errno: look at the free space."""
    if isinstance(exc, RuntimeError) and not isinstance(exc, OSError):
        try:
            if shutil.disk_usage(path.parent).free < 64 * 2**20:
                return OutputError(f"cannot write {path}: no space left on the device")
        except OSError:
            pass
    return output_error(exc, str(path))


class Checkpointer:
    """Listens to ``iteration`` and ``validation`` events and writes checkpoints; emits ``checkpoint``."""

    def __init__(self, output_dir: Path, cfg: TrainConfig, classes: List[ds.ClassInfo], model, optimizer,
                 history: Dict[str, list], emit: Callable[..., dict], start_iteration: int,
                 best_dice: Optional[float]) -> None:
        self.dir, self.cfg, self.classes = Path(output_dir), cfg, classes
        self.model, self.optimizer, self.history, self.emit = model, optimizer, history, emit
        self.best_dice = best_dice
        self.last_saved: Optional[int] = start_iteration if cfg.resume else None
        self.best_saved = False
        self.config_written = False
        self.start_iteration = start_iteration

    @property
    def last_path(self) -> Path:
        return self.dir / "model_last.pt"

    @property
    def best_path(self) -> Path:
        return self.dir / "model_best.pt"

    def __call__(self, event: dict) -> None:
        kind = event["event"]
        if kind == "iteration":
            it = event["iteration"]
            if it % self.cfg.save_every == 0 or it == self.cfg.iterations:
                self.save("last", it)
        elif kind == "validation":
            if event["best"]:
                self.best_dice = event["dice"]
                self.save("best", event["iteration"], event["dice_per_class"])

    def save(self, kind: str, it: int, val_scores: Optional[dict] = None) -> Path:
        path = self.best_path if kind == "best" else self.last_path
        if not self.config_written:
            self._write_config()
        card = model_card(self.cfg, self.classes, self.model.input_size, it, val_scores)
        extra = None
        if kind == "last":
            extra = {"optimizer": self.optimizer.state_dict(), "iteration": it, "history": json.dumps(self.history),
                     "best_dice": self.best_dice}
        try:
            save_checkpoint(path, self.model.trainable_state_dict(), card, extra)
        except (OSError, RuntimeError) as exc:
            raise write_failure(exc, path) from exc
        if kind == "last":
            self.last_saved = it
        else:
            self.best_saved = True
        self.emit("checkpoint", iteration=it, path=str(path), kind=kind)
        return path

    def _write_config(self) -> None:
        path = self.dir / "config.json"
        text = json.dumps({"config": self.cfg.to_dict(),
                           "classes": [{"name": c.name, "value": int(c.value)} for c in self.classes]}, indent=2)
        try:
            write_text_atomic(path, text)
        except OSError as exc:
            raise write_failure(exc, path) from exc
        self.config_written = True

    def final(self, it: int, validated: bool) -> None:
        """At the end (completed, time limit or cancel): the last state, and without validation the
        last model as the model. Nothing is written for a run that trained no iteration: an earlier
        (better) model is never replaced by an untrained one."""
        if it <= self.start_iteration:
            return
        if self.last_saved != it:
            self.save("last", it)
        if not self.best_saved and (not validated or not self.best_path.is_file()):
            self.save("best", it)
