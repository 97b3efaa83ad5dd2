"""Losses of CPC-SAM (paper, section 2): Dice, cross entropy, their weighted sums, pseudo-labels.

* ``dice_loss`` is SAMed's ``DiceLoss``: softmax over the ``K = C + 1`` channels, one-hot target,
  per-class soft Dice over the whole batch and all pixels
  (``dice_k = (2 sum(p t) + s) / (sum(p p) + sum(t t) + s)``), loss = mean over the K classes,
  background included (SAMed's convention, which the paper follows) of ``1 - dice_k``.
* ``supervised_unprompted`` = ``L_s^l`` = 0.8 Dice + 0.2 CE (SAMed), for unprompted outputs on
  labelled data; ``supervised_prompted`` = ``L_{s,p}^l`` = 0.5 Dice + 0.5 CE, for prompted
  outputs on labelled data (eq. 3).
* ``cross_prompting_loss`` (eq. 1) and ``prompt_consistency_loss`` (eq. 2) have the same form,
  ``1/2 [Dice + CE](a, t_a) + 1/2 [Dice + CE](b, t_b)`` with unit weights, as written in the
  equations.

Targets of eqs. 1-2 (our reading of the paper): the supervision signal of a branch is the
*ensemble* of its centre- and random-prompted outputs, ``p_hat = 1/2 (softmax(p_c) + softmax(p_r))``
(section 2.3: "the ensemble results are also used to be the supervision signals in Equ. 1"),
turned into a **hard pseudo-label** ``argmax_k p_hat`` by :func:`pseudo_label`, as is usual for
Dice + CE pseudo supervision (cross pseudo supervision, SAMed-style losses on index maps). All
targets are **detached**: :func:`pseudo_label` runs under ``no_grad`` and the losses call
``detach()`` on their targets, so gradients reach only the supervised outputs (``p_1^u, p_2^u``
in eq. 1, ``p_{1,r}^u, p_{2,r}^u`` in eq. 2), never the outputs the targets came from.

Shapes: logits ``[B, K, H, W]``, targets ``[B, H, W]`` of class indices ``0..K-1`` (long).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

__all__ = [
    "dice_loss",
    "ce_loss",
    "dice_ce",
    "supervised_unprompted",
    "supervised_prompted",
    "probs",
    "pseudo_label",
    "cross_prompting_loss",
    "prompt_consistency_loss",
]


def _check(logits: torch.Tensor, target: torch.Tensor) -> None:
    if logits.dim() != 4:
        raise ValueError(f"logits must be [B, K, H, W], got shape {tuple(logits.shape)}")
    if target.dim() != 3 or target.shape[0] != logits.shape[0] or target.shape[1:] != logits.shape[2:]:
        raise ValueError(
            f"target must be [B, H, W] matching logits {tuple(logits.shape)}, got {tuple(target.shape)}")


def _as_float(logits: torch.Tensor) -> torch.Tensor:
    """Half-precision logits (autocast) are promoted to float32; float32/64 are kept."""
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1e-5,
              include_background: bool = True) -> torch.Tensor:
    """SAMed's soft Dice loss (scalar): mean over classes of ``1 - dice_k``, batch pooled."""
    _check(logits, target)
    k = logits.shape[1]
    p = torch.softmax(_as_float(logits), dim=1)
    t = F.one_hot(target.detach().long(), k).permute(0, 3, 1, 2).to(p.dtype)
    dims = (0, 2, 3)
    intersect = (p * t).sum(dims)
    union = (p * p).sum(dims) + (t * t).sum(dims)
    dice = (2.0 * intersect + smooth) / (union + smooth)
    per_class = 1.0 - dice
    if not include_background:
        per_class = per_class[1:]
    return per_class.mean()


def ce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean pixel-wise cross entropy (scalar)."""
    _check(logits, target)
    return F.cross_entropy(_as_float(logits), target.detach().long())


def dice_ce(logits: torch.Tensor, target: torch.Tensor, w_dice: float = 1.0,
            w_ce: float = 1.0) -> torch.Tensor:
    """``w_dice * dice_loss + w_ce * ce_loss``."""
    return w_dice * dice_loss(logits, target) + w_ce * ce_loss(logits, target)


def supervised_unprompted(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``L_s^l`` = 0.8 Dice + 0.2 CE (unprompted outputs, labelled data; SAMed's weights)."""
    return dice_ce(logits, target, 0.8, 0.2)


def supervised_prompted(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``L_{s,p}^l`` = 0.5 Dice + 0.5 CE (point-prompted outputs, labelled data)."""
    return dice_ce(logits, target, 0.5, 0.5)


def probs(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over the class channel (dim 1)."""
    return torch.softmax(logits, dim=1)


def pseudo_label(*prob_tensors: torch.Tensor, threshold: Optional[float] = None) -> torch.Tensor:
    """Hard pseudo-label ``[B, H, W]`` (long): argmax over classes of the mean of the given
    ``[B, K, H, W]`` probability maps. With ``threshold``, a pixel whose mean probability of its
    argmax class is below it becomes background (class 0): a tighter target. Computed under
    ``no_grad``: the result carries no graph."""
    if not prob_tensors:
        raise ValueError("pseudo_label needs at least one probability map")
    with torch.no_grad():
        mean = torch.stack([p.detach().float() for p in prob_tensors], dim=0).mean(dim=0)
        label = mean.argmax(dim=1)
        if threshold is None:
            return label
        return torch.where(mean.amax(dim=1) >= threshold, label, torch.zeros_like(label))


def _symmetric(a_logits: torch.Tensor, b_logits: torch.Tensor, target_a: torch.Tensor,
               target_b: torch.Tensor) -> torch.Tensor:
    return 0.5 * dice_ce(a_logits, target_a.detach()) + 0.5 * dice_ce(b_logits, target_b.detach())


def cross_prompting_loss(p1_logits: torch.Tensor, p2_logits: torch.Tensor,
                         target_for_p1: torch.Tensor, target_for_p2: torch.Tensor) -> torch.Tensor:
    """Eq. 1: ``1/2 [Dice + CE](p_1^u, t_1) + 1/2 [Dice + CE](p_2^u, t_2)``.

    ``p1_logits``/``p2_logits``: unprompted outputs of decoders 1 and 2. ``target_for_p1`` is the
    (detached) pseudo-label from the prompted outputs of decoder 2, and ``target_for_p2`` the one
    from decoder 1 (cross supervision)."""
    return _symmetric(p1_logits, p2_logits, target_for_p1, target_for_p2)


def prompt_consistency_loss(r1_logits: torch.Tensor, r2_logits: torch.Tensor,
                            target1: torch.Tensor, target2: torch.Tensor) -> torch.Tensor:
    """Eq. 2: ``1/2 [Dice + CE](p_{1,r}^u, t_1) + 1/2 [Dice + CE](p_{2,r}^u, t_2)``.

    ``r1_logits``/``r2_logits``: random-point-prompted outputs of decoders 1 and 2; ``target1``,
    ``target2``: the (detached) ensemble pseudo-labels of the same decoder's centre- and
    random-prompted outputs. Centre-prompted outputs are not regularised (section 2.3)."""
    return _symmetric(r1_logits, r2_logits, target1, target2)
