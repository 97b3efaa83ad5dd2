"""Where the engine runs: device, precision, CPU settings, and the one model builder.

Used by training, inference and the benchmark.
"""
from __future__ import annotations

import os
import sys
from typing import Any, Dict, Optional, Union

import torch

from .errors import InputError


def select_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA, then MPS, then CPU. ``gpu`` means CUDA."""
    name = (name or "auto").lower()
    if name == "gpu":
        name = "cuda"
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for but CUDA is not available; use --device cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise InputError(f"--device {name!r} is not a device; use auto, cpu, cuda, cuda:N or mps") from exc


def autocast_dtype(precision: str, device: torch.device) -> Optional[torch.dtype]:
    """Mixed-precision dtype for ``torch.autocast``, or None (fp32).

    CUDA: bf16 where supported, else fp16. CPU: bf16 when asked for, or with ``auto`` on CPUs with
    native bf16 instructions (AVX512-BF16/AMX). Other devices: fp32.
    """
    if precision == "fp32" or device.type not in ("cuda", "cpu"):
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if precision == "bf16":
        return torch.bfloat16
    try:
        native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        native = False
    return torch.bfloat16 if native else None


def tune_allocator() -> None:
    """glibc: keep freed memory instead of returning it to the OS after every large tensor."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 2**31 - 1)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 2**31 - 1)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


def prepare_cpu(num_threads: Optional[int] = None) -> None:
    """The engine's CPU settings: allocator thresholds, denormals flushed to zero (tiny values in
    the decoders otherwise take a slow path), ``num_threads`` (default: all cores)."""
    tune_allocator()
    torch.set_flush_denormal(True)
    torch.set_num_threads(num_threads or max(1, os.cpu_count() or 1))


def resolved_default_prompt(card: Dict[str, Any]) -> str:
    """The card's unprompted-pass prompt, by ``TrainConfig``'s rule (``auto`` = box when the
    prompts are boxes). Cards written before the option existed had none."""
    from .config import TrainConfig

    if "default_prompt" not in card:
        return "none"
    fields = {k: card[k] for k in ("backbone", "prompt_type", "default_prompt") if k in card}
    return TrainConfig(**fields).resolved_default_prompt()


def build_model(card_or_config: Union[Dict[str, Any], Any], device: torch.device, backbone=None):
    """The dual-branch model from a model card (dict, as stored in checkpoints) or a TrainConfig
    plus ``num_classes`` in the card; placed on ``device``, channels-last on CPU.

    ``backbone``: an already built :class:`~CPCSAMLib.modeling.backbones.Backbone` (else built from
    the card's ``backbone`` and ``backbone_checkpoint``/``sam_checkpoint``).
    """
    from .modeling.backbones import build_backbone
    from .modeling.dual_sam import DualBranchSAM

    card = card_or_config if isinstance(card_or_config, dict) else card_or_config.to_dict()
    if backbone is None:
        bb_file = card.get("backbone_checkpoint", card.get("sam_checkpoint"))
        backbone = build_backbone(card["backbone"], bb_file if card["backbone"] != "litemedsam" else None)
    model = DualBranchSAM(backbone, int(card["num_classes"]), int(card.get("lora_rank", 4)),
                          card.get("decoder_init", "pretrained"), int(card.get("seed", 0)),
                          resolved_default_prompt(card), card.get("box_pass", "per_class"))
    model = model.to(device)
    model.set_channels_last(device.type == "cpu")
    if card.get("freeze_encoder"):
        model.freeze_encoder()
    if card.get("tune_neck"):
        model.tune_neck()
    return model
