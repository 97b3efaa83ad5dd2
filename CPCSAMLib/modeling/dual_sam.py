"""Dual-branch SAM: one image encoder (frozen + LoRA on q, v), one class prompt encoder, two decoders."""
from __future__ import annotations

from typing import List, Optional, Union

import numpy as np
import torch
from torch import nn

from ..config import BOX_PASSES
from ..prompts import (BoxPrompts, ComponentBoxes, PointPrompts, box_prompts_from_label_maps,
                       component_boxes_from_label_maps, points_from_label_maps)
from .backbones import Backbone
from .lora import LoRAQKV, apply_lora
from .mask_decoder import ClassMaskDecoder
from .prompt_encoder import ClassPromptEncoder


class DualBranchSAM(nn.Module):
    """CPC-SAM's network. ``encode`` runs the encoder once; ``decode(branch, ...)`` runs decoder 1 or 2.

    Trainable: the LoRA matrices, the prompt encoder's embeddings and both decoders. The frozen
    encoder stays in eval mode (TinyViT's BatchNorm statistics are never updated).
    """

    def __init__(self, backbone: Backbone, num_classes: int, lora_rank: int = 4,
                 decoder_init: str = "pretrained", seed: int = 0, default_prompt: str = "none",
                 box_pass: str = "per_class") -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError("num_classes must be >= 1")
        if decoder_init not in ("random", "pretrained"):
            raise ValueError(f"decoder_init must be 'random' or 'pretrained', got {decoder_init!r}")
        if box_pass not in BOX_PASSES:
            raise ValueError(f"box_pass must be one of {', '.join(BOX_PASSES)}, got {box_pass!r}")
        self.box_pass = box_pass
        self.backbone_name = backbone.name
        self.num_classes = num_classes
        self.input_size = backbone.input_size
        self.image_encoder = backbone.image_encoder
        self.lora_layers: List[LoRAQKV] = apply_lora(self.image_encoder, lora_rank, backbone.encoder_kind)
        self.prompt_encoder = ClassPromptEncoder(backbone.prompt_encoder, num_classes, default_prompt)
        for p in self.prompt_encoder.pe_layer.parameters():
            p.requires_grad_(False)
        decoders = []
        for i in range(2):  # two initialisations: class tokens offset by one (and different seeds)
            with torch.random.fork_rng():
                torch.manual_seed(seed * 1000 + 17 * (i + 1))
                dec = ClassMaskDecoder(num_classes, backbone.embedding_size, backbone.input_size, token_offset=i)
            if decoder_init == "pretrained":
                dec.load_pretrained(backbone.mask_decoder)
            decoders.append(dec)
        self.decoder1, self.decoder2 = decoders
        self.register_buffer("pixel_mean", torch.tensor(backbone.pixel_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(backbone.pixel_std).view(1, 3, 1, 1), persistent=False)
        self.image_encoder.eval()
        self.channels_last = False
        self.neck_trainable = False

    def set_channels_last(self, on: bool = True) -> "DualBranchSAM":
        """Runs the image encoder in channels-last memory format (faster on CPU, see the benchmark's
        exploration rows). The results are the same up to rounding."""
        self.channels_last = bool(on)
        self.image_encoder.to(memory_format=torch.channels_last if on else torch.contiguous_format)
        return self

    def train(self, mode: bool = True) -> "DualBranchSAM":
        super().train(mode)
        self.image_encoder.eval()  # frozen: BatchNorm statistics stay the pretrained ones
        return self

    def trainable_state_dict(self) -> dict:
        """State of the parts that training may change: LoRA, prompt encoder, decoders (and the
        encoder's neck after :meth:`tune_neck`)."""
        parts = ("prompt_encoder.", "decoder1.", "decoder2.") + (("image_encoder.neck.",) if self.neck_trainable else ())
        return {k: v for k, v in self.state_dict().items() if ".lora_" in k or k.startswith(parts)}

    def tune_neck(self) -> None:
        """Makes the encoder's neck (the convolutions after its last block) trainable."""
        for p in self.image_encoder.neck.parameters():
            p.requires_grad_(True)
        self.neck_trainable = True

    def freeze_encoder(self) -> None:
        """Frozen-encoder mode: LoRA stays at its initial (identity) state and is not trained."""
        for layer in self.lora_layers:
            for p in layer.parameters():
                p.requires_grad_(False)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 1, S, S]`` in [0, 1] -> normalised 3-channel encoder input."""
        x = images.expand(-1, 3, -1, -1) * 255.0
        return (x - self.pixel_mean) / self.pixel_std

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Image embeddings ``[B, 256, h, w]`` for images ``[B, 1, S, S]`` in [0, 1]."""
        if images.shape[-1] != self.input_size or images.shape[-2] != self.input_size:
            raise ValueError(f"images must be {self.input_size}x{self.input_size}, got {tuple(images.shape[-2:])}")
        x = self.preprocess(images)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.image_encoder(x)

    def encode_features(self, images: torch.Tensor) -> torch.Tensor:
        """The encoder's features before its neck ``[B, C_enc, h, w]``: what frozen-encoder mode
        caches when the neck is trained."""
        neck = self.image_encoder.neck
        self.image_encoder.neck = nn.Identity()
        try:
            return self.encode(images)
        finally:
            self.image_encoder.neck = neck

    def encode_for_cache(self, images: torch.Tensor) -> torch.Tensor:
        """What frozen-encoder mode caches: the embeddings, or the features before a trained neck."""
        return self.encode_features(images) if self.neck_trainable else self.encode(images)

    def from_cache(self, cached: torch.Tensor) -> torch.Tensor:
        """Embeddings from :meth:`encode_for_cache`'s output (the trained neck applied, if any)."""
        return self.image_encoder.neck(cached) if self.neck_trainable else cached

    def decode(self, branch: int, embeddings: torch.Tensor, coords: Optional[torch.Tensor] = None,
               labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Logits ``[B, C + 1, S, S]`` of decoder ``branch`` (1 or 2); unprompted when ``coords`` is None."""
        decoder = self.decoder1 if branch == 1 else self.decoder2
        sparse, dense = self.prompt_encoder(embeddings.shape[0], coords, labels)
        return decoder(embeddings, self.prompt_encoder.get_dense_pe(), sparse, dense)

    def decode_boxes(self, branch: int, embeddings: torch.Tensor, boxes: torch.Tensor, present: torch.Tensor,
                     unprompted: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Box-prompted logits ``[B, C + 1, S, S]`` (float32) of decoder ``branch``.

        ``box_pass`` "joint": one decoder pass per image with the boxes of all its present classes
        (each class's box tokens carry its class embedding), and every class's map is read from that
        pass, so touching classes are told apart with both boxes in view. "per_class": SAM's one
        object per prompt, one pass per present (image, class) pair, class ``c``'s map read from its
        own pass. With one class the two are the same. A class without a box has no prompt, so its
        map is the same decoder's unprompted one: ``unprompted`` (used detached) when the caller has
        it, else computed for the images that need it.
        ``boxes [B, C, 4]`` in input pixels, ``present [B, C]`` bool."""
        b, c = present.shape
        if unprompted is not None:
            out = unprompted.detach().float().clone()
        else:
            s = self.input_size
            out = torch.zeros((b, c + 1, s, s), device=embeddings.device)
            rows = (~present).any(1).nonzero(as_tuple=True)[0]
            if rows.numel():
                out[rows] = self.decode(branch, embeddings[rows]).float()
        if self.box_pass == "joint":
            return self._put_joint(out, branch, embeddings, boxes, present)
        bi, ci = present.nonzero(as_tuple=True)
        if bi.numel():
            out = out.index_put((bi, ci + 1), self._box_maps(branch, embeddings, bi, ci, boxes[bi, ci]))
        return out

    def _put_joint(self, out: torch.Tensor, branch: int, embeddings: torch.Tensor, boxes: torch.Tensor,
                   present: torch.Tensor, union: bool = False) -> torch.Tensor:
        """``out`` with the maps of the present classes replaced by one joint pass per image that
        has a box (``union``: the maximum of the old and new maps, for further components)."""
        present, boxes = present.to(out.device), boxes.to(out.device)
        rows = present.any(1).nonzero(as_tuple=True)[0]
        if rows.numel() == 0:
            return out
        decoder = self.decoder1 if branch == 1 else self.decoder2
        on = present[rows]
        sparse = self.prompt_encoder.embed_class_boxes(boxes[rows], on)
        logits = decoder(embeddings[rows], self.prompt_encoder.get_dense_pe(), sparse,
                         self.prompt_encoder.dense(rows.numel())).float()
        old = out[rows]
        if union:
            logits = torch.maximum(old, logits)
        keep = torch.cat([on.new_zeros(on.shape[0], 1), on], 1)[:, :, None, None]
        return out.index_put((rows,), torch.where(keep, logits, old))

    def _box_maps(self, branch: int, embeddings: torch.Tensor, index: torch.Tensor, cls: torch.Tensor,
                  boxes: torch.Tensor) -> torch.Tensor:
        """One pass of decoder ``branch`` per box: image ``index[k]`` prompted with ``boxes[k]`` as
        class ``cls[k] + 1``, whose logit map ``[N, S, S]`` (float32) is read from that pass."""
        decoder = self.decoder1 if branch == 1 else self.decoder2
        sparse = self.prompt_encoder.embed_boxes(boxes.to(embeddings.device), cls + 1)
        logits = decoder(embeddings[index], self.prompt_encoder.get_dense_pe(), sparse,
                         self.prompt_encoder.dense(index.numel()))
        return logits[torch.arange(index.numel(), device=logits.device), cls + 1].float()

    def decode_component_boxes(self, branch: int, embeddings: torch.Tensor, prompts: ComponentBoxes,
                               unprompted: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, C + 1, S, S]`` (float32) of decoder ``branch`` prompted with each box of
        ``prompts``; a class's map is the maximum over its boxes' maps (the union of their masks),
        and a class without a box keeps its ``unprompted`` map. "per_class" passes: one per box;
        "joint": pass ``k`` holds the ``k``-th box of each class (in ``prompts``' order)."""
        out = unprompted.detach().float().clone()
        if prompts.index.numel() == 0:
            return out
        if self.box_pass == "joint":
            b, c = out.shape[0], self.num_classes
            pc = prompts.to("cpu")
            seen: dict = {}
            ranks = []
            for key in zip(pc.index.tolist(), pc.cls.tolist()):
                ranks.append(seen.get(key, 0))
                seen[key] = ranks[-1] + 1
            ranks_t = torch.tensor(ranks)
            for r in range(max(ranks) + 1):
                sel = ranks_t == r
                boxes = torch.zeros((b, c, 4))
                present = torch.zeros((b, c), dtype=torch.bool)
                boxes[pc.index[sel], pc.cls[sel]] = pc.boxes[sel].float()
                present[pc.index[sel], pc.cls[sel]] = True
                out = self._put_joint(out, branch, embeddings, boxes, present, union=r > 0)
            return out
        on_device = prompts.to(embeddings.device)
        maps = self._box_maps(branch, embeddings, on_device.index, on_device.cls, on_device.boxes)
        seen = set()
        for k, (b, c) in enumerate(zip(prompts.index.tolist(), prompts.cls.tolist())):
            out[b, c + 1] = maps[k] if (b, c) not in seen else torch.maximum(out[b, c + 1], maps[k])
            seen.add((b, c))
        return out

    def decode_prompted(self, branch: int, embeddings: torch.Tensor, prompts: Union[BoxPrompts, PointPrompts],
                        which: str = "center", unprompted: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Decoder ``branch`` prompted with the ``which`` ("center" or "random") prompt of ``prompts``;
        ``unprompted``: the same decoder's unprompted logits (box prompts use them for absent classes)."""
        if isinstance(prompts, BoxPrompts):
            return self.decode_boxes(branch, embeddings, getattr(prompts, which), prompts.present, unprompted)
        coords, labels = prompts.sequence(which)
        return self.decode(branch, embeddings, coords, labels)

    def prompts_from_maps(self, maps: torch.Tensor, prompt_type: str, rng=None,
                          box_margin: float = 0.1) -> Union[BoxPrompts, PointPrompts]:
        """Prompts of type ``prompt_type`` ("box" or "point") from label maps ``[B, H, W]``, on the model's device."""
        if prompt_type == "box":
            prompts = box_prompts_from_label_maps(maps, self.num_classes, rng, box_margin)
        elif prompt_type == "point":
            prompts = points_from_label_maps(maps, self.num_classes, rng)
        else:
            raise ValueError(f"prompt type must be 'box' or 'point', got {prompt_type!r}")
        return prompts.to(self.pixel_mean.device)

    @torch.no_grad()
    def predict_probs(self, images: Optional[torch.Tensor], self_prompt: bool = False, prompt_type: str = "box",
                      box_margin: float = 0.1, embeddings: Optional[torch.Tensor] = None,
                      mirrored_embeddings: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Inference, ``[B, C + 1, S, S]``: mean softmax of both decoders' unprompted outputs
        (``images`` are encoded unless their ``embeddings`` are given).

        ``self_prompt``: the unprompted ensemble prompts both decoders, and their mean softmax is the
        result (a class without a prompt keeps its unprompted maps). Box prompts: each component of a
        class (see :func:`~CPCSAMLib.prompts.component_boxes_from_label_maps`) gives its box widened
        by ``box_margin``, and the class's map is the union of the prompted masks; points: the centre
        point of each class's largest component.

        ``mirrored_embeddings``: the embeddings of the same images mirrored left-right. Each step then
        averages both orientations (mirrored outputs flipped back): the unprompted ensemble, whose
        map gives the prompts, and the prompted outputs (the mirrored images get the mirrored map's
        prompts)."""
        emb = self.encode(images) if embeddings is None else embeddings
        views = [(emb, False)] + ([(mirrored_embeddings, True)] if mirrored_embeddings is not None else [])

        def flip(t: torch.Tensor, mirrored: bool) -> torch.Tensor:
            return t.flip(-1) if mirrored else t

        unprompted = [(self.decode(1, e).float(), self.decode(2, e).float()) for e, _ in views]
        probs = sum(flip(0.5 * (u1.softmax(1) + u2.softmax(1)), m)
                    for (u1, u2), (_, m) in zip(unprompted, views)) / len(views)
        if not self_prompt:
            return probs
        out = 0
        for (u1, u2), (e, m) in zip(unprompted, views):
            maps = flip(probs.argmax(1), m)  # the prompts of this orientation
            if prompt_type == "box":
                boxes = component_boxes_from_label_maps(maps, self.num_classes, box_margin)
                p = 0.5 * (self.decode_component_boxes(1, e, boxes, u1).softmax(1)
                           + self.decode_component_boxes(2, e, boxes, u2).softmax(1))
            else:
                prompts = self.prompts_from_maps(maps, prompt_type, np.random.default_rng(0), box_margin)
                p = 0.5 * (self.decode_prompted(1, e, prompts, unprompted=u1).float().softmax(1)
                           + self.decode_prompted(2, e, prompts, unprompted=u2).float().softmax(1))
            out = out + flip(p, m)
        return out / len(views)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.predict_probs(images)
