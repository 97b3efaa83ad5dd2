"""Prompt encoder with one point embedding per class (CPC-SAM's multi-class point prompts) and
SAM's box prompts with a per-class offset (box prompts for backbones trained with boxes)."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn


#: The unprompted pass's sparse prompt: none (SAM's) or learned tokens that start as the whole-image box.
DEFAULT_PROMPTS = ("none", "box")


class ClassPromptEncoder(nn.Module):
    """Encodes point prompts whose label is a class index.

    Label ``c`` in ``1..C`` adds the embedding of class ``c``; label ``0`` the background (negative
    point) embedding; label ``-1`` marks a padding point (SAM's "not a point" embedding, no position).
    Class embeddings start from SAM's positive-point embedding, background from its negative one.
    Without points the sparse embedding is empty and the dense one is SAM's no-mask embedding
    (the "default prompt" the paper fine-tunes for automatic segmentation). With
    ``default_prompt="box"`` the unprompted pass also gets two learned sparse tokens that start as
    the box of the whole image: a backbone trained only with boxes (LiteMedSAM) then starts from an
    output it knows ("the object in this box") instead of a prompt-free pass it never saw.

    A box is SAM's two corner tokens (positional encoding plus SAM's top-left / bottom-right
    embeddings) plus a learned per-class embedding that starts at zero, so a one-box prompt at
    initialisation is exactly the pretrained model's box prompt.
    """

    def __init__(self, sam_prompt_encoder: nn.Module, num_classes: int, default_prompt: str = "none") -> None:
        super().__init__()
        if default_prompt not in DEFAULT_PROMPTS:
            raise ValueError(f"default_prompt must be one of {', '.join(DEFAULT_PROMPTS)}, got {default_prompt!r}")
        self.default_prompt = default_prompt
        self.num_classes = num_classes
        self.embed_dim = sam_prompt_encoder.embed_dim
        self.input_image_size: Tuple[int, int] = tuple(sam_prompt_encoder.input_image_size)
        self.image_embedding_size: Tuple[int, int] = tuple(sam_prompt_encoder.image_embedding_size)
        self.pe_layer = sam_prompt_encoder.pe_layer
        self.no_mask_embed = sam_prompt_encoder.no_mask_embed
        self.not_a_point_embed = sam_prompt_encoder.not_a_point_embed
        self.point_embeddings = nn.Embedding(num_classes + 1, self.embed_dim)
        with torch.no_grad():
            self.point_embeddings.weight[0] = sam_prompt_encoder.point_embeddings[0].weight[0]
            self.point_embeddings.weight[1:] = sam_prompt_encoder.point_embeddings[1].weight[0]
        self.box_corner_embeddings = nn.Embedding(2, self.embed_dim)
        self.box_class_embeddings = nn.Embedding(num_classes, self.embed_dim)
        with torch.no_grad():
            self.box_corner_embeddings.weight[0] = sam_prompt_encoder.point_embeddings[2].weight[0]
            self.box_corner_embeddings.weight[1] = sam_prompt_encoder.point_embeddings[3].weight[0]
            self.box_class_embeddings.weight.zero_()
        if default_prompt == "box":
            s = self.input_image_size
            whole = torch.tensor([[0.0, 0.0, s[1] - 1.0, s[0] - 1.0]])
            with torch.no_grad():
                tokens = self.embed_boxes(whole, torch.ones(1, dtype=torch.long))[0]
            self.default_tokens = nn.Parameter(tokens.clone())
        else:
            self.default_tokens = None

    def get_dense_pe(self) -> torch.Tensor:
        """Positional encoding of the embedding grid, ``[1, D, h, w]``."""
        return self.pe_layer(self.image_embedding_size).unsqueeze(0)

    def embed_points(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``coords [B, N, 2]`` (x, y) in input pixels, ``labels [B, N]`` -> ``[B, N, D]``."""
        pe = self.pe_layer.forward_with_coords(coords.float() + 0.5, self.input_image_size)
        pad = (labels < 0).unsqueeze(-1)
        cls = self.point_embeddings(labels.clamp(min=0))
        return torch.where(pad, self.not_a_point_embed.weight.expand_as(pe), pe + cls)

    def embed_boxes(self, boxes: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """``boxes [N, 4]`` (x0, y0, x1, y1) in input pixels, ``classes [N]`` in 1..C -> ``[N, 2, D]``."""
        corners = self.pe_layer.forward_with_coords(boxes.float().reshape(-1, 2, 2) + 0.5, self.input_image_size)
        return corners + self.box_corner_embeddings.weight[None] + self.box_class_embeddings(classes - 1)[:, None]

    def embed_class_boxes(self, boxes: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """One box per class in one prompt: ``boxes [N, C, 4]``, ``present [N, C]`` bool ->
        ``[N, 2C, D]``, class ``c``'s two corner tokens at ``2(c-1), 2(c-1)+1``; an absent class's
        tokens are SAM's padding ("not a point") embedding."""
        n, c = present.shape
        classes = torch.arange(1, c + 1, device=boxes.device).repeat(n)
        tokens = self.embed_boxes(boxes.reshape(-1, 4), classes).reshape(n, 2 * c, self.embed_dim)
        pad = (~present.to(tokens.device)).repeat_interleave(2, dim=1).unsqueeze(-1)
        return torch.where(pad, self.not_a_point_embed.weight.expand_as(tokens), tokens)

    def dense(self, batch_size: int) -> torch.Tensor:
        """SAM's no-mask embedding over the embedding grid, ``[B, D, h, w]``."""
        h, w = self.image_embedding_size
        return self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(batch_size, -1, h, w)

    def forward(
        self, batch_size: int, coords: Optional[torch.Tensor] = None, labels: Optional[torch.Tensor] = None
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(sparse [B, N, D], dense [B, D, h, w])``; without points ``N`` is 0, or 2 with the
        default box prompt."""
        device = self.no_mask_embed.weight.device
        if coords is None and self.default_tokens is not None:
            sparse = self.default_tokens.unsqueeze(0).expand(batch_size, -1, -1)
        elif coords is None:
            sparse = torch.empty((batch_size, 0, self.embed_dim), device=device)
        else:
            if coords.shape[0] != batch_size or labels is None or labels.shape != coords.shape[:2]:
                raise ValueError(f"prompt shapes {tuple(coords.shape)} / {None if labels is None else tuple(labels.shape)}"
                                 f" do not match batch size {batch_size}")
            sparse = self.embed_points(coords.to(device), labels.to(device))
        return sparse, self.dense(batch_size)
