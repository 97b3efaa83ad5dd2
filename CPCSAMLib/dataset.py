"""Datasets: manifests, split lists, folder layouts, preprocessed slices, augmentation.

Three ways to describe a training set, all giving a :class:`Manifest`:

1. **Manifest file** (JSON, or YAML when the name ends ``.yml``/``.yaml`` and PyYAML is
   installed), see ``docs/ENGINE_API.md``::

       {"classes": [{"name": "lesion", "value": 255}],
        "labeled": [{"image": "images/a.png", "label": "masks/a.png"}],
        "unlabeled": ["images/b.png"],
        "validation": [{"image": "images/c.png", "label": "masks/c.png"}],
        "axis": null}

   Relative paths are resolved against the manifest's folder. A class may also carry a display
   ``"color"`` ([r, g, b] in 0..1, or 0..255) and a ``"terminology"`` (a Slicer terminology
   string). No image may be listed twice (within a list, or as both labeled and unlabeled).

2. **Split lists** (BUSI layout): ``images/`` and ``masks/`` with the same file names and text
   files of names (``train.txt``, ``labeled_10.txt``, ``val.txt``), see
   :func:`manifest_from_split_lists`.

3. **Folder convention** (:func:`manifest_from_folder`)::

       root/
         labeled/images/<name>     images with a label map
         labeled/labels/<name>     their label maps, same file names
         unlabeled/<name>          images without labels (optional)
         validation/images/<name>  held-out images (optional)
         validation/labels/<name>  their label maps (optional, required with validation/images)
         classes.json              optional: [{"name": "lesion", "value": 255}, ...]
                                   or {"classes": [...], "axis": 2}

   Without ``classes.json`` the classes are the non-zero values found in ``labeled/labels``,
   named ``label_<value>``. Hidden files (starting with ``.``) are ignored.

Class lists have one shape and one parser: :class:`ClassInfo` and :func:`parse_classes` (every
rule on classes is checked there, once; other modules take its result).

This module reads files but never writes any, except :func:`save_manifest`.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Union

import numpy as np
import SimpleITK as sitk

from . import io
from .errors import InputError

PathLike = Union[str, "os.PathLike[str]"]


# --------------------------------------------------------------------------------------------
# manifest
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassInfo:
    """One segmentation class: its name, the value it has in the label files, and optionally its
    display colour (r, g, b in 0..1) and terminology (a Slicer terminology string).

    Build class lists with :func:`parse_classes`, which checks them.
    """

    name: str
    value: int
    color: Optional[tuple[float, float, float]] = None
    terminology: Optional[str] = None


_CLASS_KEYS = ("name", "value", "color", "terminology")
_CLASS_EXAMPLE = '[{"name": "lesion", "value": 255}] or ["lesion=255"]'


def _parse_color(raw: Any, where: str) -> Optional[tuple[float, float, float]]:
    if raw is None:
        return None
    ok = (isinstance(raw, (list, tuple)) and len(raw) == 3
          and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in raw)
          and all(math.isfinite(v) and 0 <= v <= 255 for v in raw))
    if not ok:
        raise InputError(f"{where}.color must be [r, g, b] with values in 0..1 (or 0..255), "
                         f"got {raw!r}.")
    if max(raw) > 1:  # 0..255 colours
        return tuple(round(float(v) / 255.0, 6) for v in raw)  # type: ignore[return-value]
    return tuple(float(v) for v in raw)  # type: ignore[return-value]


def _parse_class(item: Any, where: str) -> ClassInfo:
    """One class from a dict, a "NAME=VALUE" string or a ClassInfo (values not yet compared)."""
    if isinstance(item, ClassInfo):
        item = {"name": item.name, "value": item.value, "color": item.color,
                "terminology": item.terminology}
    elif isinstance(item, str):
        name, sep, value = item.rpartition("=")
        try:
            number = int(value.strip()) if sep else None
        except ValueError:
            number = None
        if number is None:
            raise InputError(f"{where} must look like NAME=VALUE (e.g. lesion=255), got {item!r}.")
        item = {"name": name, "value": number}
    if not isinstance(item, dict) or not {"name", "value"} <= set(item) \
            or not set(item) <= set(_CLASS_KEYS):
        raise InputError(f"{where} must be an object with the keys \"name\" and \"value\" "
                         f"(optionally \"color\" and \"terminology\"), got {item!r}.")
    name, value = item["name"], item["value"]
    if not isinstance(name, str) or not name.strip():
        raise InputError(f"{where}.name must be a non-empty string, got {name!r}.")
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InputError(f"{where}.value must be an integer label value, got {value!r}.")
    terminology = item.get("terminology")
    if terminology is not None and (not isinstance(terminology, str) or not terminology.strip()):
        raise InputError(f"{where}.terminology must be a non-empty string, got {terminology!r}.")
    return ClassInfo(name.strip(), int(value), _parse_color(item.get("color"), where),
                     terminology)


def parse_classes(raw: Any, source: str) -> list[ClassInfo]:
    """THE class-list parser: every rule on a class list is checked here, once.

    ``raw``: a non-empty list whose items are ``{"name", "value"[, "color"][, "terminology"]}``
    dicts, ``"NAME=VALUE"`` strings or :class:`ClassInfo` objects (mixing is allowed). Rules:
    names are non-empty and unique; values are integers, non-zero (0 is the background), unique
    and within 32 bits; at most 255 classes; a colour is [r, g, b] in 0..1 (or 0..255, then
    scaled to 0..1). ``source`` names where the list came from in error messages (a manifest,
    ``--classes``, a model file). Raises InputError.
    """
    if isinstance(raw, (str, dict)) or not isinstance(raw, Iterable):
        raise InputError(f"{source}: the classes must be a non-empty list like {_CLASS_EXAMPLE}, "
                         f"got {raw!r}.")
    items = list(raw)
    if not items:
        raise InputError(f"{source}: at least one class is needed, e.g. {_CLASS_EXAMPLE}.")
    classes = [_parse_class(item, f"{source}: classes[{i}]") for i, item in enumerate(items)]
    values = [c.value for c in classes]
    names = [c.name for c in classes]
    if 0 in values:
        raise InputError(f"{source}: class value 0 is reserved for background; use non-zero "
                         f"label values.")
    for what, seq in (("values", values), ("names", names)):
        dup = next((x for i, x in enumerate(seq) if x in seq[:i]), None)
        if dup is not None:
            raise InputError(f"{source}: class {what} must be unique; {dup!r} is given twice "
                             f"(in {seq}).")
    if any(abs(v) > 2**31 - 1 for v in values):
        raise InputError(f"{source}: class values must fit in 32 bits, got {values}.")
    if len(values) > 255:
        raise InputError(f"{source}: at most 255 classes are supported, got {len(values)}.")
    return classes


def classes_to_json(classes: Sequence[ClassInfo]) -> list[dict]:
    """The class list as JSON-ready dicts (``color`` and ``terminology`` only when set); read
    back with :func:`parse_classes`."""
    out = []
    for c in classes:
        entry: dict[str, Any] = {"name": c.name, "value": int(c.value)}
        if c.color is not None:
            entry["color"] = [float(v) for v in c.color]
        if c.terminology is not None:
            entry["terminology"] = c.terminology
        out.append(entry)
    return out


@dataclass
class Manifest:
    """A training set: classes, labeled pairs, unlabeled images, validation pairs (absolute paths)."""

    classes: list[ClassInfo]
    labeled: list[tuple[Path, Path]]
    unlabeled: list[Path] = field(default_factory=list)
    validation: list[tuple[Path, Path]] = field(default_factory=list)
    axis: Optional[int] = None
    root: Path = field(default_factory=Path.cwd)

    @property
    def label_values(self) -> list[int]:
        """The label value of each class, in class-index order (index i+1 <-> values[i])."""
        return [c.value for c in self.classes]

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.classes]


_MANIFEST_KEYS = {"classes", "labeled", "unlabeled", "validation", "axis"}


def _resolve(root: Path, p: Any, source: str, where: str) -> Path:
    if not isinstance(p, str) or not p:
        raise InputError(f"{source}: {where} must be a file path string, got {p!r}.")
    q = Path(p).expanduser()
    return q if q.is_absolute() else root / q


def _parse_pairs(raw: Any, root: Path, source: str, key: str) -> list[tuple[Path, Path]]:
    if not isinstance(raw, list):
        raise InputError(f"{source}: '{key}' must be a list of "
                         f'{{"image": ..., "label": ...}} objects.')
    pairs = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or set(item) != {"image", "label"}:
            raise InputError(f"{source}: {key}[{i}] must be an object with exactly the keys "
                             f'"image" and "label", got {item!r}.')
        pairs.append((_resolve(root, item["image"], source, f"{key}[{i}].image"),
                      _resolve(root, item["label"], source, f"{key}[{i}].label")))
    return pairs


def _check_files_exist(manifest: Manifest, source: str) -> None:
    files = [p for pair in manifest.labeled for p in pair] + list(manifest.unlabeled)
    files += [p for pair in manifest.validation for p in pair]
    missing = [p for p in files if not p.is_file()]
    if missing:
        shown = "\n  ".join(str(p) for p in missing[:10])
        more = f"\n  ... and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise InputError(f"{source}: {len(missing)} file(s) not found:\n  {shown}{more}\n"
                         f"Relative paths are resolved against {manifest.root}; fix the paths "
                         f"or the files.")


def _first_duplicate(paths: Iterable[Path]) -> Optional[tuple[Path, int]]:
    """The first path listed more than once (compared resolved) and how often it is listed."""
    seen: dict[Path, int] = {}
    for p in paths:
        key = p.resolve()
        seen[key] = seen.get(key, 0) + 1
    for p in paths:
        if seen[p.resolve()] > 1:
            return p, seen[p.resolve()]
    return None


def _check_manifest(manifest: Manifest, source: str) -> None:
    manifest.classes = parse_classes(manifest.classes, source)
    if not manifest.labeled:
        raise InputError(f"{source}: at least one labeled image/label pair is needed.")
    if manifest.axis is not None and (isinstance(manifest.axis, bool)
                                      or manifest.axis not in (0, 1, 2)):
        raise InputError(f"{source}: 'axis' must be 0, 1, 2 (x, y, z) or null, "
                         f"got {manifest.axis!r}.")
    for key, paths in (("labeled", [p for p, _ in manifest.labeled]),
                       ("unlabeled", list(manifest.unlabeled)),
                       ("validation", [p for p, _ in manifest.validation])):
        dup = _first_duplicate(paths)
        if dup:
            raise InputError(f"{source}: the image {dup[0]} is listed {dup[1]} times in the "
                             f"{key} list. List each image once.")
    labeled_images = {p.resolve() for p, _ in manifest.labeled}
    both = [p for p in manifest.unlabeled if p.resolve() in labeled_images]
    if both:
        raise InputError(f"{source}: {len(both)} image(s) are listed as both labeled and "
                         f"unlabeled, e.g. {both[0]}. List each image once.")
    _check_files_exist(manifest, source)


def load_manifest(path: PathLike) -> Manifest:
    """Read and validate a manifest (JSON; YAML for ``.yml``/``.yaml`` when PyYAML is installed).

    Checks: known keys only, at least one labeled pair, the class list (:func:`parse_classes`),
    no image listed twice (within a list, or as both labeled and unlabeled), every listed file
    exists (the error names the missing files and the manifest).
    """
    path = Path(path).expanduser()
    source = f"Manifest {path}"
    if not path.is_file():
        raise InputError(f"Manifest file not found: {path}.")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"Cannot read manifest {path}: {exc}.") from exc
    if path.suffix.lower() in (".yml", ".yaml"):
        try:
            import yaml
        except ImportError as exc:
            raise InputError(f"{source} is YAML but PyYAML is not installed: install pyyaml or "
                             f"write the manifest as JSON.") from exc
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise InputError(f"{source} is not valid YAML: {exc}") from exc
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"{source} is not valid JSON: {exc.msg} at line {exc.lineno}, "
                             f"column {exc.colno}.") from exc
    if not isinstance(data, dict):
        raise InputError(f"{source} must hold an object with 'classes' and 'labeled'.")
    unknown = sorted(set(data) - _MANIFEST_KEYS)
    if unknown:
        raise InputError(f"{source}: unknown key(s) {unknown}; allowed keys are "
                         f"{sorted(_MANIFEST_KEYS)}.")
    for key in ("classes", "labeled"):
        if key not in data:
            raise InputError(f"{source}: the key '{key}' is missing.")
    root = path.parent.resolve()
    unlabeled_raw = data.get("unlabeled") or []
    if not isinstance(unlabeled_raw, list):
        raise InputError(f"{source}: 'unlabeled' must be a list of image paths.")
    manifest = Manifest(
        classes=parse_classes(data["classes"], source),
        labeled=_parse_pairs(data["labeled"], root, source, "labeled"),
        unlabeled=[_resolve(root, p, source, f"unlabeled[{i}]")
                   for i, p in enumerate(unlabeled_raw)],
        validation=_parse_pairs(data.get("validation") or [], root, source, "validation"),
        axis=data.get("axis"),
        root=root,
    )
    _check_manifest(manifest, source)
    return manifest


def _rel(p: Path, folder: Path) -> str:
    try:
        return Path(os.path.relpath(Path(p).resolve(), folder)).as_posix()
    except ValueError:  # other drive on Windows
        return Path(p).resolve().as_posix()


def manifest_to_dict(manifest: Manifest, folder: PathLike) -> dict:
    """The manifest as a JSON-ready dict, paths relative to ``folder`` where they lie below it.

    Paths outside ``folder`` are written relative too (with ``..``) when on the same drive.
    """
    folder = Path(folder).resolve()
    return {
        "classes": classes_to_json(manifest.classes),
        "labeled": [{"image": _rel(i, folder), "label": _rel(l, folder)}
                    for i, l in manifest.labeled],
        "unlabeled": [_rel(p, folder) for p in manifest.unlabeled],
        "validation": [{"image": _rel(i, folder), "label": _rel(l, folder)}
                       for i, l in manifest.validation],
        "axis": manifest.axis,
    }


def save_manifest(manifest: Manifest, path: PathLike) -> None:
    """Write ``manifest`` as JSON (atomically), paths relative to the manifest's folder."""
    path = Path(path).expanduser()
    data = manifest_to_dict(manifest, path.parent if str(path.parent) else Path.cwd())
    io.write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def read_split_list(names: PathLike | Sequence[str], root: PathLike | None = None
                    ) -> tuple[list[str], str]:
    """THE split-list reader: names from a text file, or a given list of names.

    A text file holds one file name per line; blank lines and lines starting with ``#`` are
    skipped; a relative path is resolved against ``root`` (default: the current folder). Returns
    ``(names, source)``, ``source`` naming the file (or "given list") for messages.
    """
    if isinstance(names, (str, os.PathLike)):
        p = Path(names).expanduser()
        if not p.is_absolute() and root is not None:
            p = Path(root).expanduser() / p
        if not p.is_file():
            raise InputError(f"Split list not found: {p}.")
        try:
            lines = p.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"Cannot read split list {p}: {exc}.") from exc
        return [n for n in (ln.strip() for ln in lines) if n and not n.startswith("#")], str(p)
    return [str(n) for n in names], "given list"


def _refuse_repeated_names(names: list[str], source: str) -> None:
    dup = next((n for i, n in enumerate(names) if n in names[:i]), None)
    if dup is not None:
        raise InputError(f"{source} lists {dup!r} {names.count(dup)} times. List each image once.")


def manifest_from_split_lists(root: PathLike, train_list: PathLike | Sequence[str],
                              labeled_list: PathLike | Sequence[str],
                              val_list: PathLike | Sequence[str] | None = None,
                              classes: Sequence[ClassInfo] | None = None,
                              image_dir: str = "images", mask_dir: str = "masks") -> Manifest:
    """Manifest from a BUSI-style layout: ``root/images``, ``root/masks`` and name lists.

    Lists are text files (one file name per line; paths relative to ``root``) or lists of
    names. Labeled = names in ``labeled_list`` (must be part of the train list); unlabeled =
    train minus labeled, in list order; validation = ``val_list``. Default classes:
    ``[ClassInfo("lesion", 255)]`` (0/255 masks).
    """
    root = Path(root).expanduser().resolve()
    source = f"Split lists in {root}"
    train, train_src = read_split_list(train_list, root)
    labeled, labeled_src = read_split_list(labeled_list, root)
    val, val_src = read_split_list(val_list, root) if val_list is not None else ([], "")
    for names, src in ((train, train_src), (labeled, labeled_src), (val, val_src)):
        _refuse_repeated_names(names, f"{source}: {src}")
    not_in_train = [n for n in labeled if n not in set(train)]
    if not_in_train:
        raise InputError(f"{source}: {len(not_in_train)} labeled name(s) from {labeled_src} are "
                         f"not in the train list {train_src}, e.g. {not_in_train[0]}.")
    labeled_set = set(labeled)
    images, masks = root / image_dir, root / mask_dir
    manifest = Manifest(
        classes=(parse_classes(classes, source) if classes is not None
                 else [ClassInfo("lesion", 255)]),
        labeled=[(images / n, masks / n) for n in labeled],
        unlabeled=[images / n for n in train if n not in labeled_set],
        validation=[(images / n, masks / n) for n in val],
        axis=None,
        root=root,
    )
    _check_manifest(manifest, source)
    return manifest


def _list_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".")
                  and io.extension(p) in io.IMAGE_EXTENSIONS)


def _pairs_from_folders(images_dir: Path, labels_dir: Path, source: str) -> list[tuple[Path, Path]]:
    images = _list_images(images_dir)
    labels = {p.name: p for p in _list_images(labels_dir)}
    missing = [p.name for p in images if p.name not in labels]
    if missing:
        raise InputError(f"{source}: {len(missing)} image(s) in {images_dir} have no label "
                         f"with the same file name in {labels_dir}, e.g. {missing[0]}.")
    extra = sorted(set(labels) - {p.name for p in images})
    if extra:
        raise InputError(f"{source}: {len(extra)} label(s) in {labels_dir} have no image in "
                         f"{images_dir}, e.g. {extra[0]}.")
    return [(p, labels[p.name]) for p in images]


def manifest_from_folder(root: PathLike) -> Manifest:
    """Manifest from the folder convention described in the module docstring."""
    root = Path(root).expanduser().resolve()
    source = f"Dataset folder {root}"
    if not root.is_dir():
        raise InputError(f"Dataset folder not found: {root}.")
    labeled = _pairs_from_folders(root / "labeled" / "images", root / "labeled" / "labels", source)
    if not labeled:
        raise InputError(f"{source}: no labeled images found; put images in labeled/images and "
                         f"their label maps (same file names) in labeled/labels.")
    validation = []
    if (root / "validation" / "images").is_dir():
        validation = _pairs_from_folders(root / "validation" / "images",
                                         root / "validation" / "labels", source)
    unlabeled = _list_images(root / "unlabeled")
    axis = None
    classes_file = root / "classes.json"
    if classes_file.is_file():
        try:
            data = json.loads(classes_file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"Cannot read {classes_file}: {exc}.") from exc
        if isinstance(data, dict):
            unknown = sorted(set(data) - {"classes", "axis"})
            if unknown:
                raise InputError(f"{classes_file}: unknown key(s) {unknown}; allowed: "
                                 f"'classes', 'axis'.")
            axis = data.get("axis")
            data = data.get("classes")
        classes = parse_classes(data, str(classes_file))
    else:
        values: set[int] = set()
        for _, lab in labeled:
            arr = sitk.GetArrayViewFromImage(io._read_label_image(lab))
            values.update(int(v) for v in np.unique(arr) if v != 0)
        if not values:
            raise InputError(f"{source}: the label maps in labeled/labels contain no foreground "
                             f"(non-zero) value.")
        classes = [ClassInfo(f"label_{v}", v) for v in sorted(values)]
    manifest = Manifest(classes=classes, labeled=labeled, unlabeled=unlabeled,
                        validation=validation, axis=axis, root=root)
    _check_manifest(manifest, source)
    return manifest


# --------------------------------------------------------------------------------------------
# preprocessed slices
# --------------------------------------------------------------------------------------------


@dataclass
class SliceSet:
    """Preprocessed 2D slices held in memory.

    ``images`` float32 [N, S, S] in [0, 1]; ``labels`` uint8 [N, S, S] class indices or None;
    ``source[i]`` = (image file, slice index along the slicing axis) of slice i.
    """

    images: np.ndarray
    labels: Optional[np.ndarray]
    source: list[tuple[str, int]]

    def __len__(self) -> int:
        return int(self.images.shape[0])


def build_slices(pairs_or_images: Sequence[Union[tuple[PathLike, PathLike], PathLike]],
                 classes: Sequence[ClassInfo], size: int, axis: int | None,
                 percentiles: tuple[float, float] | None = None,
                 skip_empty: bool = False) -> SliceSet:
    """Load, validate, slice, normalise and resize images (and labels) into a :class:`SliceSet`.

    ``pairs_or_images``: (image, label) pairs (labeled set) or image paths (unlabeled set).
    Each file is read with :func:`io.load_image` / :func:`io.load_label`, cut along ``axis``
    (None = each volume's :func:`io.default_axis`), min-max normalised **per image / per
    volume** (whole volume at once, optional percentile clipping), then every slice is resized
    to ``size`` x ``size`` (bilinear for images, nearest for labels; non-square slices are
    stretched). ``skip_empty`` drops labeled slices without foreground (image-only sets: constant
    slices). A labeled set without any foreground voxel raises InputError naming the files.
    Writes nothing.
    """
    items = list(pairs_or_images)
    labeled = bool(items) and isinstance(items[0], (tuple, list))
    if any(isinstance(it, (tuple, list)) != labeled for it in items):
        raise InputError("build_slices needs either only (image, label) pairs or only image "
                         "paths, not a mix.")
    values = [c.value for c in classes]
    size = int(size)
    if size < 8:
        raise InputError(f"Slice size must be at least 8 pixels, got {size}.")
    images_out: list[np.ndarray] = []
    labels_out: list[np.ndarray] = []
    source: list[tuple[str, int]] = []
    any_foreground = False
    for item in items:
        image_path, label_path = (item[0], item[1]) if labeled else (item, None)
        image = io.load_image(image_path)
        img_slices, used_axis = io.to_slices(image, axis)
        img_slices = io.normalize(img_slices, percentiles)
        lab_slices = None
        if labeled:
            label = io.load_label(label_path, image, values)
            raw, _ = io.to_slices(label, used_axis)
            lab_slices = io.label_to_index(raw, values)
            any_foreground = any_foreground or bool(lab_slices.any())
        for k in range(img_slices.shape[0]):
            if skip_empty:
                if lab_slices is not None and not lab_slices[k].any():
                    continue
                if lab_slices is None and img_slices[k].min() == img_slices[k].max():
                    continue
            images_out.append(io.resize(img_slices[k], size, is_label=False))
            if lab_slices is not None:
                labels_out.append(io.resize(lab_slices[k], size, is_label=True))
            source.append((str(image_path), k))
    if labeled and not any_foreground:
        names = ", ".join(str(it[1]) for it in items[:5]) + (" ..." if len(items) > 5 else "")
        raise InputError(f"The labeled set contains no foreground voxel: every label map is "
                         f"empty or background only ({names}). Check the label files and the "
                         f"class values {values}.")
    images_arr = (np.stack(images_out).astype(np.float32, copy=False) if images_out
                  else np.zeros((0, size, size), np.float32))
    labels_arr = None
    if labeled:
        labels_arr = (np.stack(labels_out).astype(np.uint8, copy=False) if labels_out
                      else np.zeros((0, size, size), np.uint8))
    return SliceSet(images=images_arr, labels=labels_arr, source=source)


# --------------------------------------------------------------------------------------------
# slicing axis
# --------------------------------------------------------------------------------------------

# an axis competes with the largest-spacing axis when its spacing is at least this share of it
AXIS_SPACING_SHARE = 0.8
# ... and replaces it when its slices hold all present classes together this much more often
AXIS_MIN_GAIN = 0.10


def _classes_together(index: np.ndarray) -> Optional[np.ndarray]:
    """Per SimpleITK axis (x, y, z): [foreground slices, slices holding every class present in the
    volume]; None when fewer than two classes are present. ``index``: class-index array [z, y, x]."""
    present = [c for c in np.unique(index) if c != 0]
    if len(present) < 2:
        return None
    masks = [index == c for c in present]
    counts = np.zeros((3, 2), np.int64)
    for axis in range(3):
        other = tuple(a for a in range(3) if a != 2 - axis)
        has = np.stack([m.any(axis=other) for m in masks])  # [classes, slices]
        counts[axis] = has.any(0).sum(), has.all(0).sum()
    return counts


def choose_axis(pairs: Sequence[tuple[PathLike, PathLike]], classes: Sequence[ClassInfo]) -> tuple[Optional[int], str]:
    """The slicing axis for a run whose options and manifest leave it unset, from its labeled volumes.

    By default each volume is sliced along its largest spacing (:func:`io.default_axis`). When the
    spacing leaves a choice (near-isotropic volumes: every labeled volume has another axis whose
    spacing is at least ``AXIS_SPACING_SHARE`` of its largest) and the labels hold two or more
    classes, the axis whose foreground slices most often show all present classes together is
    taken if it beats the default axis by ``AXIS_MIN_GAIN`` (pooled over the labeled volumes): a
    2D model then sees neighbouring classes side by side instead of having to tell them apart
    alone. Returns ``(axis or None for the default rule, reason)``. Reads the labeled files only.
    """
    values = [c.value for c in classes]
    if len(values) < 2:
        return None, "one class: largest spacing"
    candidates = {0, 1, 2}
    pooled = np.zeros((3, 2), np.int64)
    default_counts = np.zeros(2, np.int64)
    for image_path, label_path in pairs:
        image = io.load_image(image_path)
        if image.GetDimension() == 2 or 1 in image.GetSize():
            return None, "2D images"
        spacing = np.asarray(image.GetSpacing(), float)
        candidates &= {a for a in range(3) if spacing[a] >= AXIS_SPACING_SHARE * spacing.max()}
        if len(candidates) < 2:  # the spacing decides: no label needs reading
            return None, "anisotropic spacing: largest spacing"
        label = io.load_label(label_path, image, values)
        counts = _classes_together(io.label_to_index(sitk.GetArrayFromImage(label), values))
        if counts is not None:
            pooled += counts
            default_counts += counts[io.default_axis(image)]
    if default_counts[0] == 0:
        return None, "no labeled volume holds two classes: largest spacing"
    share = pooled[:, 1] / np.maximum(pooled[:, 0], 1)
    default_share = default_counts[1] / default_counts[0]
    best = max(sorted(candidates, reverse=True), key=lambda a: share[a])  # ties: the higher axis
    summary = ", ".join(f"{'xyz'[a]} {share[a]:.0%}" for a in sorted(candidates))
    if share[best] - default_share < AXIS_MIN_GAIN:
        return None, f"near-isotropic, slices holding all classes: {summary}; largest spacing kept"
    return best, f"near-isotropic, slices holding all classes: {summary}; axis {'xyz'[best]}"


# --------------------------------------------------------------------------------------------
# augmentation
# --------------------------------------------------------------------------------------------


def augment(image: np.ndarray, label: np.ndarray | None,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
    """Paper augmentation, applied jointly: rotation by U(-20, 20) degrees, then horizontal and
    vertical flips, each with p = 0.5.

    Rotation: ``scipy.ndimage.rotate`` (reshape=False, constant 0 outside), bilinear for the
    image, nearest for the label. The same random draws are made whether or not ``label`` is
    given.
    """
    from scipy import ndimage

    angle = float(rng.uniform(-20.0, 20.0))
    flip_h = bool(rng.random() < 0.5)
    flip_v = bool(rng.random() < 0.5)
    img = ndimage.rotate(image, angle, reshape=False, order=1, mode="constant", cval=0.0)
    lab = None
    if label is not None:
        lab = ndimage.rotate(label, angle, reshape=False, order=0, mode="constant", cval=0)
    if flip_h:
        img = img[:, ::-1]
        lab = lab[:, ::-1] if lab is not None else None
    if flip_v:
        img = img[::-1, :]
        lab = lab[::-1, :] if lab is not None else None
    img = np.ascontiguousarray(img, dtype=image.dtype)
    if lab is not None:
        lab = np.ascontiguousarray(lab, dtype=label.dtype)
    return img, lab
