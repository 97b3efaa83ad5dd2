"""One training iteration: draw a batch, run the objective under autocast, backward, optimiser step."""
from __future__ import annotations

import math
import time
from typing import Dict, List, Optional

import numpy as np
import torch

from .. import dataset as ds


class Cycler:
    """Endless shuffled index stream over ``n`` items."""

    def __init__(self, n: int, rng: np.random.Generator) -> None:
        self.n, self.rng, self.order, self.pos = n, rng, np.empty(0, int), 0

    def take(self, k: int) -> np.ndarray:
        out = []
        while len(out) < k:
            if self.pos >= len(self.order):
                self.order, self.pos = self.rng.permutation(self.n), 0
            out.append(int(self.order[self.pos]))
            self.pos += 1
        return np.asarray(out)


def image_batch(slices: ds.SliceSet, idx: np.ndarray, rng: np.random.Generator, augment: bool, device):
    """Images ``[B, 1, S, S]`` (augmented) and class-index labels ``[B, S, S]`` (None if unlabeled)."""
    imgs, labs = [], []
    for i in idx:
        img = slices.images[i]
        lab = slices.labels[i] if slices.labels is not None else None
        if augment:
            img, lab = ds.augment(img, lab, rng)
        imgs.append(img)
        if lab is not None:
            labs.append(lab)
    x = torch.from_numpy(np.stack(imgs)[:, None].astype(np.float32)).to(device)
    y = torch.from_numpy(np.stack(labs).astype(np.int64)).to(device) if labs else None
    return x, y


class Batches:
    """Labeled and unlabeled batches, from images (augmented on the fly) or from cached embeddings."""

    def __init__(self, labeled: ds.SliceSet, unlabeled: Optional[ds.SliceSet], bl: int, bu: int,
                 rng: np.random.Generator, augment: bool, device, lab_cache=None, unl_cache=None) -> None:
        self.labeled, self.unlabeled, self.bl, self.bu = labeled, unlabeled, bl, bu
        self.rng, self.augment, self.device = rng, augment, device
        self.lab_cache, self.unl_cache = lab_cache, unl_cache
        self.lab_cycle = Cycler(len(labeled), rng)
        self.unl_cycle = Cycler(len(unlabeled), rng) if bu and unlabeled is not None and len(unlabeled) else None

    def next(self):
        if self.lab_cache is not None:
            xl, yl = self.lab_cache.batch(self.lab_cycle.take(self.bl), self.rng)
            xu = None
            if self.unl_cache is not None and self.unl_cycle is not None:
                xu = self.unl_cache.batch(self.unl_cycle.take(self.bu), self.rng)[0]
            return xl, yl, xu
        xl, yl = image_batch(self.labeled, self.lab_cycle.take(self.bl), self.rng, self.augment, self.device)
        xu = None
        if self.unl_cycle is not None:
            xu, _ = image_batch(self.unlabeled, self.unl_cycle.take(self.bu), self.rng, self.augment, self.device)
        return xl, yl, xu


def sequential_update(objective, optimizer, xl, yl, xu, rng: np.random.Generator, device: torch.device,
                      amp_dtype: Optional[torch.dtype], scaler=None) -> List[float]:
    """The official code's update (``--update sequential``): one backward and optimiser step per
    round of ``objective.sequential_rounds``, each round's forward under autocast. Returns the
    rounds' losses."""
    parts: List[float] = []
    rounds = objective.sequential_rounds(xl, yl, xu, rng)
    while True:
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            try:  # the round's forward pass runs inside next()
                loss = next(rounds)
            except StopIteration:
                break
        optimizer.zero_grad(set_to_none=True)
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        parts.append(float(loss.detach()))
    return parts


class TrainStep:
    """Sets the learning rate and runs one update: the combined loss (``step_module``, the objective
    or its DDP wrapper) or the official sequential rounds."""

    def __init__(self, objective, step_module, optimizer, device, amp_dtype, sequential: bool) -> None:
        self.objective, self.step_module, self.optimizer = objective, step_module, optimizer
        self.device, self.amp_dtype, self.sequential = device, amp_dtype, sequential
        self.scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    def __call__(self, xl, yl, xu, rng: np.random.Generator, lr: float, supervised_only: bool,
                 iteration: int) -> Dict[str, float]:
        for g in self.optimizer.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)
        if self.sequential and not supervised_only and xu is not None:
            parts = sequential_update(self.objective, self.optimizer, xl, yl, xu, rng, self.device,
                                      self.amp_dtype, self.scaler)
            out = {"loss": sum(parts), "loss_s": parts[0], "loss_cross": sum(parts[1:]), "loss_c": float("nan")}
        else:
            self.optimizer.zero_grad(set_to_none=True)
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                losses = self.step_module(xl, yl, xu, rng, supervised_only)
            self.scaler.scale(losses["loss"]).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            out = {k: float(v.detach()) for k, v in losses.items()}
        if not math.isfinite(out["loss"]):
            raise FloatingPointError(f"loss became {out['loss']} at iteration {iteration}; lower --lr")
        return out

    def time_forward_backward(self, xl, yl, xu, rng: np.random.Generator, supervised_only: bool) -> float:
        """Seconds of one forward and backward pass of the combined loss, gradients dropped and the
        weights and optimiser state untouched (the trainer sizes its time-limited schedule with it)."""
        self.optimizer.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            losses = self.step_module(xl, yl, xu, rng, supervised_only)
        losses["loss"].backward()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - t0
        self.optimizer.zero_grad(set_to_none=True)
        return seconds
