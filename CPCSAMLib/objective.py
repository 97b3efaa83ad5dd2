"""One CPC-SAM training step as a module (so PyTorch DDP can wrap it).

The image encoder runs **once** per image per step; both decoders and every prompted pass reuse
that embedding. Passes whose output only serves as a detached target (the centre-prompted passes
on unlabeled images) run without gradients.

Prompts (``prompt_type``): "box" (the box of the largest component, widened by ``box_margin``,
and a jittered copy as the "random" prompt; for backbones trained with boxes, such as LiteMedSAM)
or "point" (the paper's centre and random point).

Methods (``method``):
- ``cpcsam``: L_s + lambda1 L_cross + lambda2 L_c (paper, eqs. 1-3);
- ``cross_prompting``: cross prompting with the centre point only, no prompt consistency (ablation);
- ``cps``: each decoder's unprompted output supervises the other (cross pseudo supervision, ablation);
- ``supervised``: L_s on labeled images only (labeled-only fine-tuning baseline).
"""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np
import torch
from torch import nn

from . import losses
from .config import METHODS
from .modeling.dual_sam import DualBranchSAM
from .prompts import agreed_components, with_negative_boxes

PROMPT_TYPES = ("box", "point")


class CPCObjective(nn.Module):
    """Computes the losses of one step from a labeled and an unlabeled batch."""

    def __init__(self, model: DualBranchSAM, method: str = "cpcsam", lambda_cross: float = 0.4,
                 lambda_consistency: float = 0.05, prompt_type: str = "box", box_margin: float = 0.1,
                 frozen_encoder: bool = False, unlabeled_trains_encoder: bool = True,
                 negative_boxes: bool = False, agreed_prompts: bool = False,
                 pseudo_label_threshold: Optional[float] = None) -> None:
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
        if prompt_type not in PROMPT_TYPES:
            raise ValueError(f"unknown prompt type {prompt_type!r}; choose one of {', '.join(PROMPT_TYPES)}")
        self.model = model
        self.method = method
        self.lambda_cross = lambda_cross
        self.lambda_consistency = lambda_consistency
        self.prompt_type = prompt_type
        self.box_margin = box_margin
        self.frozen_encoder = frozen_encoder
        self.unlabeled_trains_encoder = unlabeled_trains_encoder
        self.negative_boxes = negative_boxes and prompt_type == "box"
        self.agreed_prompts = agreed_prompts
        self.pseudo_label_threshold = pseudo_label_threshold

    def target(self, *prob_tensors: torch.Tensor) -> torch.Tensor:
        """A detached pseudo-label from probability maps (tightened by ``pseudo_label_threshold``)."""
        return losses.pseudo_label(*prob_tensors, threshold=self.pseudo_label_threshold)

    def prompts(self, maps: torch.Tensor, rng: np.random.Generator):
        """Centre and random prompts of every class from label maps ``[B, H, W]``."""
        return self.model.prompts_from_maps(maps, self.prompt_type, rng, self.box_margin)

    def supervised_loss(self, emb_l: torch.Tensor, p1_l: torch.Tensor, p2_l: torch.Tensor, yl: torch.Tensor,
                        rng: np.random.Generator) -> torch.Tensor:
        """Eq. 3: unprompted (0.8 Dice + 0.2 CE) and GT-prompted centre/random (0.5/0.5) for both decoders.

        ``negative_boxes``: decoder ``b`` is also prompted with the boxes of the other decoder's
        unprompted prediction for the classes the reference lacks (as a cross step would prompt it),
        and their maps are supervised as background, so a prompted decoder learns to answer a box
        that holds nothing of its class with nothing."""
        m = self.model
        loss = losses.supervised_unprompted(p1_l, yl) + losses.supervised_unprompted(p2_l, yl)
        gt = self.prompts(yl, rng)
        for branch in (1, 2):
            prompts = gt
            if self.negative_boxes:
                with torch.no_grad():
                    other = self.prompts((p2_l, p1_l)[branch - 1].argmax(1), rng)
                prompts = with_negative_boxes(gt, other)
            for which in ("center", "random"):
                out = m.decode_prompted(branch, emb_l, prompts, which, unprompted=(p1_l, p2_l)[branch - 1])
                loss = loss + losses.supervised_prompted(out, yl)
        return loss

    def forward(self, xl: torch.Tensor, yl: torch.Tensor, xu: Optional[torch.Tensor], rng: np.random.Generator,
                supervised_only: bool = False) -> Dict[str, torch.Tensor]:
        """``xl``/``xu``: images ``[B, 1, S, S]``, or with ``frozen_encoder`` their precomputed
        embeddings ``[B, D, h, w]``."""
        m = self.model
        use_unlabeled = xu is not None and xu.shape[0] > 0 and not supervised_only and self.method != "supervised"
        bl = xl.shape[0]
        x = torch.cat([xl, xu]) if use_unlabeled else xl
        emb = m.from_cache(x.float()) if self.frozen_encoder else m.encode(x)  # the only encoder pass of the step
        if use_unlabeled and not self.frozen_encoder and not self.unlabeled_trains_encoder:
            emb = torch.cat([emb[:bl], emb[bl:].detach()])  # unlabeled losses stop at the embeddings
        p1 = m.decode(1, emb)
        p2 = m.decode(2, emb)
        loss_s = self.supervised_loss(emb[:bl], p1[:bl], p2[:bl], yl, rng)
        zero = loss_s.new_zeros(())
        loss_cross, loss_c = zero, zero
        if use_unlabeled:
            emb_u, p1_u, p2_u = emb[bl:], p1[bl:], p2[bl:]
            if self.method == "cps":
                t1 = self.target(losses.probs(p2_u))  # D2's output supervises D1
                t2 = self.target(losses.probs(p1_u))
                loss_cross = losses.cross_prompting_loss(p1_u, p2_u, t1, t2)
            else:
                with torch.no_grad():
                    s1, s2 = p1_u.argmax(1), p2_u.argmax(1)
                    if self.agreed_prompts:  # prompt only the objects both decoders see
                        s1, s2 = (agreed_components(s1, s2, m.num_classes),
                                  agreed_components(s2, s1, m.num_classes))
                    from1 = self.prompts(s1, rng)
                    from2 = self.prompts(s2, rng)
                    # D1 is prompted from D2's prediction, D2 from D1's
                    c1 = m.decode_prompted(1, emb_u, from2, "center", unprompted=p1_u)
                    c2 = m.decode_prompted(2, emb_u, from1, "center", unprompted=p2_u)
                if self.method == "cross_prompting":
                    ens1 = self.target(losses.probs(c1))
                    ens2 = self.target(losses.probs(c2))
                else:
                    r1 = m.decode_prompted(1, emb_u, from2, "random", unprompted=p1_u)
                    r2 = m.decode_prompted(2, emb_u, from1, "random", unprompted=p2_u)
                    ens1 = self.target(losses.probs(c1), losses.probs(r1.detach()))
                    ens2 = self.target(losses.probs(c2), losses.probs(r2.detach()))
                    loss_c = losses.prompt_consistency_loss(r1, r2, ens1, ens2)
                # eq. 1: D2's prompted ensemble supervises D1's unprompted output, and vice versa
                loss_cross = losses.cross_prompting_loss(p1_u, p2_u, ens2, ens1)
        total = loss_s + self.lambda_cross * loss_cross + self.lambda_consistency * loss_c
        return {"loss": total, "loss_s": loss_s.detach(), "loss_cross": loss_cross.detach(), "loss_c": loss_c.detach()}

    def sequential_rounds(self, xl: torch.Tensor, yl: torch.Tensor, xu: torch.Tensor, rng: np.random.Generator):
        """The official code's loop structure (``trainer_dualmask.py``), for comparison: three rounds
        per iteration, each with its own encoder forward over the whole batch and its own backward
        and optimiser step. Yields one loss per round; the caller runs backward and a step after each.

        Round 1: both decoders unprompted, L_s on the labeled half. Round 2: decoder 2 unprompted;
        points from its prediction prompt decoder 1 (centre and random point) on the whole batch;
        decoder 1's prompted outputs are supervised on the labeled half, and their ensemble is the
        target for decoder 2 (weight lambda1) and for decoder 1's random-point output (lambda2) on
        the unlabeled half. Round 3: the same with the decoders swapped. Every pass keeps gradients.
        """
        m = self.model
        bl = xl.shape[0]
        x = torch.cat([xl, xu])
        emb = m.encode(x)
        yield (losses.supervised_unprompted(m.decode(1, emb)[:bl], yl)
               + losses.supervised_unprompted(m.decode(2, emb)[:bl], yl))
        for src, dst in ((2, 1), (1, 2)):
            emb = m.encode(x)
            p_src = m.decode(src, emb)
            prompts = self.prompts(p_src.detach().argmax(1), rng)
            c = m.decode_prompted(dst, emb, prompts, "center")
            r = m.decode_prompted(dst, emb, prompts, "random")
            ens = self.target(losses.probs(c[bl:]), losses.probs(r[bl:]))
            yield (losses.supervised_unprompted(c[:bl], yl) + losses.supervised_unprompted(r[:bl], yl)
                   + self.lambda_cross * 0.5 * losses.dice_ce(p_src[bl:], ens)
                   + self.lambda_consistency * 0.5 * losses.dice_ce(r[bl:], ens))
