"""The engine names the benchmark uses, in one place.

TEMPORARY bridge for the branch that was written while the engine was being restructured: it
gives today's engine the names of the new engine API (``CPCSAMLib.config``, ``CPCSAMLib.runtime``,
``CPCSAMLib.training``). After the restructured engine is merged this module is deleted and every
``from .engine import X`` becomes the import listed next to X below:

- TrainConfig, add_train_arguments, config_from_args: ``CPCSAMLib.config``
- run_training: ``CPCSAMLib.training``
- EmbeddingStore, EmbeddingCache: ``CPCSAMLib.training.embeddings``
- sequential_update: the training package's step module
- select_device, autocast_dtype, prepare_cpu, tune_allocator, build_model: ``CPCSAMLib.runtime``
- CPCObjective: ``CPCSAMLib.objective`` (its ``frozen_encoder`` argument)
"""
from __future__ import annotations

import argparse
import dataclasses

from CPCSAMLib.objective import CPCObjective as _EngineObjective
from CPCSAMLib.train import (EmbeddingCache, EmbeddingStore, TrainConfig, autocast_dtype, prepare_cpu,  # noqa: F401
                             run_training, select_device, sequential_update, tune_allocator)

__all__ = ["TrainConfig", "add_train_arguments", "config_from_args", "run_training", "EmbeddingStore",
           "EmbeddingCache", "sequential_update", "select_device", "autocast_dtype", "prepare_cpu",
           "tune_allocator", "build_model", "CPCObjective"]

_TYPES = {"int": int, "float": float, "str": str, "Optional[int]": int, "Optional[float]": float,
          "Optional[str]": str}


def add_train_arguments(parser: argparse.ArgumentParser, **default_overrides) -> None:
    """One option per TrainConfig field, ``--field-name``, with the field's default (or the override)."""
    group = parser.add_argument_group("training options (the engine's TrainConfig)")
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = default_overrides.get(f.name, f.default)
        if f.type == "bool":
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=default)
        elif f.type == "Optional[List[float]]":
            group.add_argument(flag, dest=f.name, type=float, nargs=2, default=default)
        else:
            group.add_argument(flag, dest=f.name, type=_TYPES[f.type], default=default)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    config = TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})
    config.validate()
    return config


def build_model(card_or_config, device, backbone=None):
    """A DualBranchSAM from a model card (dict with backbone, num_classes, lora_rank, ...)."""
    from CPCSAMLib.modeling.backbones import build_backbone
    from CPCSAMLib.modeling.dual_sam import DualBranchSAM

    card = card_or_config
    backbone = backbone or build_backbone(card["backbone"])
    model = DualBranchSAM(backbone, int(card["num_classes"]), int(card.get("lora_rank", 4)),
                          card.get("decoder_init", "pretrained"), int(card.get("seed", 0)))
    return model.to(device)


def CPCObjective(model, method, lambda_cross, lambda_consistency, frozen_encoder=False):  # noqa: N802
    """Today's objective infers frozen mode from the input; the new one takes ``frozen_encoder``."""
    return _EngineObjective(model, method, lambda_cross, lambda_consistency)
