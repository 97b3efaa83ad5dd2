"""Low-rank adaptation (LoRA) of the query and value projections of a fused qkv linear layer.

The frozen layer computes ``qkv = W x + b``. LoRA adds ``B_q A_q x`` to the query entries and
``B_v A_v x`` to the value entries of that output; key entries are left alone. Where the entries
sit depends on the encoder: SAM's ViT lays its qkv output out as ``[q (all heads), k, v]``,
TinyViT (LiteMedSAM) per head as ``[q_h, k_h, v_h]``. The caller passes the indices.
"""
from __future__ import annotations

import math
from typing import List

import torch
from torch import nn


class LoRAQKV(nn.Module):
    """Wraps a frozen fused ``qkv`` ``nn.Linear`` and adds rank-``r`` updates to q and v only."""

    def __init__(self, qkv: nn.Linear, q_index: torch.Tensor, v_index: torch.Tensor, rank: int = 4) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        self.qkv = qkv
        for p in self.qkv.parameters():
            p.requires_grad_(False)
        dim = qkv.in_features
        self.rank = rank
        self.register_buffer("q_index", q_index.long(), persistent=False)
        self.register_buffer("v_index", v_index.long(), persistent=False)
        self.lora_a_q = nn.Linear(dim, rank, bias=False)
        self.lora_b_q = nn.Linear(rank, len(q_index), bias=False)
        self.lora_a_v = nn.Linear(dim, rank, bias=False)
        self.lora_b_v = nn.Linear(rank, len(v_index), bias=False)
        for a in (self.lora_a_q, self.lora_a_v):
            nn.init.kaiming_uniform_(a.weight, a=math.sqrt(5))
        for b in (self.lora_b_q, self.lora_b_v):  # B = 0: the layer's output is unchanged at start
            nn.init.zeros_(b.weight)

    @property
    def in_features(self) -> int:
        return self.qkv.in_features

    @property
    def out_features(self) -> int:
        return self.qkv.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.qkv(x)
        out = out.index_add(-1, self.q_index, self.lora_b_q(self.lora_a_q(x)))
        out = out.index_add(-1, self.v_index, self.lora_b_v(self.lora_a_v(x)))
        return out


def sam_vit_qv_index(dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """q and v indices for SAM ViT's qkv layout ``[q, k, v]`` each ``dim`` wide."""
    return torch.arange(0, dim), torch.arange(2 * dim, 3 * dim)


def tinyvit_qv_index(num_heads: int, key_dim: int, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """q and v indices for TinyViT's per-head layout ``[q_h (key_dim), k_h (key_dim), v_h (d)]``."""
    per_head = 2 * key_dim + d
    q = torch.cat([torch.arange(h * per_head, h * per_head + key_dim) for h in range(num_heads)])
    v = torch.cat([torch.arange(h * per_head + 2 * key_dim, (h + 1) * per_head) for h in range(num_heads)])
    return q, v


def apply_lora(encoder: nn.Module, rank: int, kind: str) -> List[LoRAQKV]:
    """Freezes ``encoder`` and replaces the qkv layer of every attention block by a :class:`LoRAQKV`.

    ``kind`` is ``"sam_vit"`` or ``"tinyvit"``. Returns the inserted LoRA modules.
    """
    for p in encoder.parameters():
        p.requires_grad_(False)
    inserted: List[LoRAQKV] = []
    for module in list(encoder.modules()):
        qkv = getattr(module, "qkv", None)
        if isinstance(module, LoRAQKV) or isinstance(qkv, LoRAQKV):
            raise ValueError("this encoder already carries LoRA layers: build a new backbone for each model")
        if not isinstance(qkv, nn.Linear):
            continue
        if kind == "sam_vit":
            q_idx, v_idx = sam_vit_qv_index(qkv.in_features)
        elif kind == "tinyvit":
            q_idx, v_idx = tinyvit_qv_index(module.num_heads, module.key_dim, module.d)
        else:
            raise ValueError(f"unknown encoder kind {kind!r}")
        wrapped = LoRAQKV(qkv, q_idx, v_idx, rank)
        module.qkv = wrapped
        inserted.append(wrapped)
    if not inserted:
        raise ValueError("no attention qkv layer found: LoRA could not be applied")
    return inserted
