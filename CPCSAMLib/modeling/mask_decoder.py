"""Multi-class SAM mask decoder with progressive upsampling to the input resolution."""
from __future__ import annotations

import math
from typing import List

import torch
from torch import nn
from torch.nn import functional as F


class LayerNorm2d(nn.Module):
    """Channel LayerNorm of ``[B, C, H, W]`` maps (as SAM's)."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class MLP(nn.Module):
    """SAM's small MLP (ReLU between layers)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims, dims[1:] + [output_dim]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


#: SAM's mask tokens: three multi-mask outputs and the single-output token.
SAM_MASK_TOKENS = 4
#: SAM mask tokens trained with box prompts (LiteMedSAM: 0, 1, 2).
BOX_TRAINED_TOKENS = 3


class ClassMaskDecoder(nn.Module):
    """SAM's two-way transformer decoder with SAM's token layout; class ``c`` reads one mask token.

    The tokens are SAM's: an IoU token, then ``max(4, C + 1)`` mask tokens (SAM's four, and more
    for many classes), then the prompt tokens. Class ``c`` (1..C) reads mask token
    ``c - 1 + token_offset``: its hypernetwork output times the upscaled embedding, as SAM's masks.
    Keeping all of SAM's tokens in the sequence matters: the tokens attend to each other, and
    dropping SAM's other mask tokens changes a pretrained decoder's box-prompted output. Two
    decoders with offsets 0 and 1 start from two different box-trained tokens (LiteMedSAM: tokens
    0, 1 and 2 were trained with boxes). The background logit is a constant 0, so that the softmax
    over ``[0, l_1, ..., l_C]`` is, for one class, SAM's own ``sigmoid(l_1) > 0.5`` rule. Returns
    ``C + 1`` logit maps at ``output_size``. SAM upsamples the embedding 4x; where that is coarser
    than the input (SAM ViT at 512 -> 128), further 2x transposed-convolution stages follow
    (MA-SAM's progressive upsampling). The IoU head is not used and not built.
    """

    def __init__(self, num_classes: int, embedding_size: int, output_size: int, token_offset: int = 0,
                 transformer_dim: int = 256) -> None:
        super().__init__()
        from segment_anything.modeling import TwoWayTransformer

        if token_offset not in (0, 1):
            raise ValueError(f"token_offset must be 0 or 1, got {token_offset}")
        self.num_classes = num_classes
        self.class_tokens = [c + token_offset for c in range(num_classes)]
        self.num_mask_tokens = max(SAM_MASK_TOKENS, num_classes + 1)
        self.transformer = TwoWayTransformer(depth=2, embedding_dim=transformer_dim, mlp_dim=2048, num_heads=8)
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        ratio = output_size / embedding_size
        extra = int(round(math.log2(ratio))) - 2
        if ratio < 4 or 2 ** (extra + 2) != ratio:
            raise ValueError(f"output size {output_size} must be embedding size {embedding_size} x 4 x 2^k")
        d4, d8 = transformer_dim // 4, transformer_dim // 8
        stages: List[nn.Module] = [
            nn.ConvTranspose2d(transformer_dim, d4, kernel_size=2, stride=2), LayerNorm2d(d4), nn.GELU(),
            nn.ConvTranspose2d(d4, d8, kernel_size=2, stride=2), nn.GELU(),
        ]
        for _ in range(extra):
            stages += [nn.ConvTranspose2d(d8, d8, kernel_size=2, stride=2), LayerNorm2d(d8), nn.GELU()]
        self.output_upscaling = nn.Sequential(*stages)
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, d8, 3) for _ in range(self.num_mask_tokens)
        )

    def load_pretrained(self, sam_decoder: nn.Module) -> None:
        """Copies SAM's pretrained decoder: the transformer, the IoU token, the first two upscaling
        stages, SAM's four mask tokens with their hypernetworks, and for any further token ``t`` a
        copy of the box-trained token ``t mod 3``."""
        self.transformer.load_state_dict(sam_decoder.transformer.state_dict())
        self.iou_token.load_state_dict(sam_decoder.iou_token.state_dict())
        own = self.output_upscaling
        src = sam_decoder.output_upscaling
        for i in (0, 1, 3):
            own[i].load_state_dict(src[i].state_dict())
        with torch.no_grad():
            for t in range(self.num_mask_tokens):
                src_t = t if t < SAM_MASK_TOKENS else t % BOX_TRAINED_TOKENS
                self.mask_tokens.weight[t] = sam_decoder.mask_tokens.weight[src_t]
                self.output_hypernetworks_mlps[t].load_state_dict(
                    sam_decoder.output_hypernetworks_mlps[src_t].state_dict())

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
    ) -> torch.Tensor:
        """``image_embeddings [B, D, h, w]`` (one per prompt), ``sparse [B, N, D]``, ``dense [B, D, h, w]``
        -> logits ``[B, C + 1, H, W]`` (channel 0, the background, is 0)."""
        b = image_embeddings.shape[0]
        if sparse_prompt_embeddings.shape[0] != b or dense_prompt_embeddings.shape[0] != b:
            raise ValueError("one prompt per image embedding is expected: batch sizes differ "
                             f"({b}, {sparse_prompt_embeddings.shape[0]}, {dense_prompt_embeddings.shape[0]})")
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = torch.cat([output_tokens.unsqueeze(0).expand(b, -1, -1),
                            sparse_prompt_embeddings.to(output_tokens.dtype)], dim=1)
        src = image_embeddings + dense_prompt_embeddings
        pos = image_pe.expand(b, -1, -1, -1)
        _, c, h, w = src.shape
        hs, src = self.transformer(src, pos, tokens)
        mask_tokens_out = hs[:, 1:1 + self.num_mask_tokens, :]
        up = self.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
        hyper = torch.stack([self.output_hypernetworks_mlps[t](mask_tokens_out[:, t, :]) for t in self.class_tokens], 1)
        _, c2, h2, w2 = up.shape
        fg = (hyper @ up.reshape(b, c2, h2 * w2)).reshape(b, -1, h2, w2)
        return torch.cat([fg.new_zeros(b, 1, h2, w2), fg], dim=1)
