"""The learning-rate schedule and its horizon.

Linear warm-up to ``lr``, then ``poly`` (power 0.9, down to 0 at the horizon), ``constant`` or
``exp`` (down to ``lr * lr_final_ratio``). The horizon is ``iterations``, or with ``max_minutes``
the iterations that fit into the time left, measured after a few iterations
(:class:`HorizonEstimator`). The supervised-only warm-up is a fraction of the horizon.
"""
from __future__ import annotations

import math
import time
from typing import Optional

from ..config import TrainConfig

MAX_DEFAULT_WARMUP = 250
DEFAULT_WARMUP_FRACTION = 0.05


def warmup_length(cfg: TrainConfig, horizon: int) -> int:
    """``warmup_iters``, or by default min(250, 5 % of the horizon)."""
    if cfg.warmup_iters is not None:
        return cfg.warmup_iters
    return min(MAX_DEFAULT_WARMUP, int(DEFAULT_WARMUP_FRACTION * horizon))


def supervised_iterations(cfg: TrainConfig, horizon: int) -> int:
    """Iterations trained on labeled images only, at the start of the schedule."""
    return int(math.floor(cfg.supervised_warmup * horizon))


def learning_rate(cfg: TrainConfig, it: int, horizon: Optional[int] = None) -> float:
    """The learning rate of 0-based iteration ``it`` for a schedule of ``horizon`` iterations."""
    horizon = cfg.iterations if horizon is None else horizon
    warm = warmup_length(cfg, horizon)
    if warm > 0 and it < warm:
        return cfg.lr * (it + 1) / warm
    progress = min(1.0, max(0.0, (it - warm) / max(1, horizon - warm)))
    if cfg.lr_decay == "poly":
        return cfg.lr * (1.0 - progress) ** 0.9
    if cfg.lr_decay == "exp":
        return cfg.lr * cfg.lr_final_ratio ** progress
    return cfg.lr


class HorizonEstimator:
    """With ``max_minutes``: after ``timed`` iterations (the first one, which warms caches up, is not
    timed) the horizon becomes min(iterations, iterations that fit into the remaining time). When
    the supervised warm-up is still running then, its steps (labeled images only) are cheaper than
    the ones that follow, so the horizon is measured once more, ``timed`` iterations after the
    first step with unlabeled images. After that it is measured again whenever another
    ``REFRESH_FRACTION`` of the time budget has passed, from the iterations since the last
    measurement, so that a machine that gets busier (or idle) still ends the schedule in time.

    ``unlabeled_extra``: seconds that a step with unlabeled images costs more than a labeled-only
    step (the trainer measures it before the first iteration). While the warm-up runs, the horizon
    then counts its remaining steps at the measured cost and the steps after it at that cost plus
    the extra, so the warm-up is ``supervised_warmup`` of the iterations that will run and the
    learning rate does not step down when cross prompting starts."""

    REFRESH_FRACTION = 0.1

    def __init__(self, cfg: TrainConfig, start_time: float, start_iteration: int, timed: int = 3) -> None:
        self.cfg, self.start_time, self.timed = cfg, start_time, timed
        self.horizon = cfg.iterations
        self.fixed = cfg.max_minutes is None
        self._first = start_iteration + 1  # the iteration whose end starts the clock
        self._clock: Optional[float] = None
        self._measured = 0
        #: seconds a step with unlabeled images costs more than a labeled-only one (None: unknown)
        self.unlabeled_extra: Optional[float] = None
        #: iterations trained on labeled images only; moves with the horizon until it is reached
        self.supervised_end = supervised_iterations(cfg, self.horizon)

    def wants_unlabeled_cost(self, it: int) -> bool:
        """Whether a time-limited run starting at iteration ``it`` has a supervised warm-up ahead
        that is followed by dearer steps with unlabeled images (see ``unlabeled_extra``)."""
        return (self.cfg.max_minutes is not None and self.cfg.method != "supervised"
                and 0.0 < self.cfg.supervised_warmup < 1.0 and it < self.supervised_end)

    def after_iteration(self, it: int, now: Optional[float] = None) -> Optional[dict]:
        """Call after iteration ``it`` (1-based count) ends; returns the event fields when the
        horizon is (re)measured."""
        if self.cfg.max_minutes is None:
            return None
        now = time.time() if now is None else now
        if self.fixed:
            if now - self._clock < self.REFRESH_FRACTION * self.cfg.max_minutes * 60.0 or it <= self._first:
                return None
            return self._measure(it, now)
        if it == self._first:
            self._clock = now
            return None
        if self._clock is None or it < self._first + self.timed:
            return None
        event = self._measure(it, now)
        if self._measured == 1 and self.cfg.method != "supervised" and self.supervised_end >= it:
            self._first, self._clock, self.fixed = self.supervised_end + 1, None, False
        return event

    def _measure(self, it: int, now: float) -> dict:
        """Horizon from the iterations since ``_first`` (the clock's start); restarts the clock."""
        per_iteration = (now - self._clock) / (it - self._first)
        remaining = self.cfg.max_minutes * 60.0 - (now - self.start_time)
        fit = it + int(max(0.0, remaining) / max(per_iteration, 1e-9))
        if self.unlabeled_extra and it < self.supervised_end:  # timed on warm-up steps: add the dearer rest
            f = self.cfg.supervised_warmup
            fit = int((max(0.0, remaining) + it * per_iteration) / (per_iteration + (1.0 - f) * self.unlabeled_extra))
            if supervised_iterations(self.cfg, fit) <= it:  # the warm-up ends now: the rest all dearer
                fit = it + int(max(0.0, remaining) / (per_iteration + self.unlabeled_extra))
        self.horizon = max(it, min(self.cfg.iterations, fit))
        self.fixed = True
        self._measured += 1
        self._first, self._clock = it, now
        if it < self.supervised_end:  # once unlabeled images are in, the warm-up does not come back
            self.supervised_end = supervised_iterations(self.cfg, self.horizon)
        return {"iteration": it, "horizon": self.horizon, "seconds_per_iteration": round(per_iteration, 4)}
