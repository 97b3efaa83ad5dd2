"""Dual-branch SAM: one image encoder (frozen + LoRA on q, v), one class prompt encoder, two decoders."""
from __future__ import annotations

from typing import List, Optional

import torch
from torch import nn

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
                 decoder_init: str = "random", seed: int = 0) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError("num_classes must be >= 1")
        if decoder_init not in ("random", "pretrained"):
            raise ValueError(f"decoder_init must be 'random' or 'pretrained', got {decoder_init!r}")
        self.backbone_name = backbone.name
        self.num_classes = num_classes
        self.input_size = backbone.input_size
        self.image_encoder = backbone.image_encoder
        self.lora_layers: List[LoRAQKV] = apply_lora(self.image_encoder, lora_rank, backbone.encoder_kind)
        self.prompt_encoder = ClassPromptEncoder(backbone.prompt_encoder, num_classes)
        for p in self.prompt_encoder.pe_layer.parameters():
            p.requires_grad_(False)
        decoders = []
        for i in range(2):  # same structure, different initialisation
            with torch.random.fork_rng():
                torch.manual_seed(seed * 1000 + 17 * (i + 1))
                dec = ClassMaskDecoder(num_classes, backbone.embedding_size, backbone.input_size)
            if decoder_init == "pretrained":
                dec.load_pretrained(backbone.mask_decoder)
            decoders.append(dec)
        self.decoder1, self.decoder2 = decoders
        self.register_buffer("pixel_mean", torch.tensor(backbone.pixel_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(backbone.pixel_std).view(1, 3, 1, 1), persistent=False)
        self.image_encoder.eval()
        self.channels_last = False

    def set_channels_last(self, on: bool = True) -> "DualBranchSAM":
        """Runs the image encoder in channels-last memory format (measured on a 2-core CPU in the
        benchmark: a batch-4 LoRA training step 8.27 s contiguous -> 7.67 s channels-last). The results are the same up to rounding."""
        self.channels_last = bool(on)
        self.image_encoder.to(memory_format=torch.channels_last if on else torch.contiguous_format)
        return self

    def train(self, mode: bool = True) -> "DualBranchSAM":
        super().train(mode)
        self.image_encoder.eval()  # frozen: BatchNorm statistics stay the pretrained ones
        return self

    def trainable_state_dict(self) -> dict:
        """State of the parts that training may change: LoRA, prompt encoder, decoders."""
        return {k: v for k, v in self.state_dict().items()
                if ".lora_" in k or k.startswith(("prompt_encoder.", "decoder1.", "decoder2."))}

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

    def decode(self, branch: int, embeddings: torch.Tensor, coords: Optional[torch.Tensor] = None,
               labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Logits ``[B, C + 1, S, S]`` of decoder ``branch`` (1 or 2); unprompted when ``coords`` is None."""
        decoder = self.decoder1 if branch == 1 else self.decoder2
        sparse, dense = self.prompt_encoder(embeddings.shape[0], coords, labels)
        return decoder(embeddings, self.prompt_encoder.get_dense_pe(), sparse, dense)

    @torch.no_grad()
    def predict_probs(self, images: torch.Tensor) -> torch.Tensor:
        """Inference: mean softmax of both decoders' unprompted outputs, ``[B, C + 1, S, S]``."""
        emb = self.encode(images)
        return 0.5 * (self.decode(1, emb).softmax(1) + self.decode(2, emb).softmax(1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.predict_probs(images)
