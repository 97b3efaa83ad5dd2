"""Datasets and split lists: what is labeled, unlabeled and tested, and how a test case is loaded.

Two layouts are known:

- ``busi``: 2D ultrasound, ``images/`` and ``masks/`` (0/255), one class (lesion); distances in pixels.
- ``hippocampus``: MSD Task04 NIfTI volumes, ``images/`` and ``labels/``, classes 1 (anterior) and
  2 (posterior); scored in 3D, distances in mm.

Both have ``train.txt``, ``val.txt`` and ``labeled_*.txt`` lists. Unlabeled = the train list minus
the labeled list, or a subset of it chosen with a fixed seed (``--unlabeled-limit``).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from CPCSAMLib import dataset
from CPCSAMLib.errors import InputError

UNLABELED_SUBSET_SEED = 0  # the seed that picks the unlabeled subset (the same for every method and seed)


@dataclasses.dataclass(frozen=True)
class DatasetLayout:
    name: str
    label_folder: str
    classes: tuple  # ((name, value), ...)
    distance_unit: str
    default_labeled_lists: tuple
    default_unlabeled_limit: Optional[int]
    description: str

    def class_infos(self) -> List[dataset.ClassInfo]:
        return [dataset.ClassInfo(name, value) for name, value in self.classes]

    @property
    def class_names(self) -> List[str]:
        return [name for name, _ in self.classes]

    @property
    def label_values(self) -> List[int]:
        return [value for _, value in self.classes]


LAYOUTS: Dict[str, DatasetLayout] = {
    "busi": DatasetLayout("busi", "masks", (("lesion", 255),), "px", ("labeled_10.txt",), None,
                          "BUSI breast ultrasound, 2D, one class (lesion)"),
    "hippocampus": DatasetLayout("hippocampus", "labels", (("anterior", 1), ("posterior", 2)), "mm",
                                 ("labeled_1.txt", "labeled_3.txt"), 20,
                                 "MSD Task04 Hippocampus MRI, 3D, two classes (anterior, posterior)"),
}


def detect_layout(root: Path) -> str:
    """``busi`` when the folder has masks/, ``hippocampus`` when it has labels/."""
    if (root / "masks").is_dir():
        return "busi"
    if (root / "labels").is_dir():
        return "hippocampus"
    raise InputError(f"--data {root}: neither masks/ (BUSI layout) nor labels/ (Hippocampus layout) found; "
                     "give --dataset busi|hippocampus and a folder in that layout")


def read_names(path: Path) -> List[str]:
    if not path.is_file():
        raise InputError(f"split list not found: {path}")
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    return [n for n in names if n and not n.startswith("#")]


def list_path(root: Path, name: str) -> Path:
    path = Path(name).expanduser()
    return path if path.is_absolute() else root / path


def list_stem(name: str) -> str:
    return Path(name).name.rsplit(".", 1)[0]


def choose_unlabeled(candidates: Sequence[str], limit: Optional[int], seed: int = UNLABELED_SUBSET_SEED) -> List[str]:
    """All candidates (list order), or ``limit`` of them drawn with ``seed`` (kept in list order)."""
    if limit is None or limit >= len(candidates):
        return list(candidates)
    picked = set(np.random.default_rng(seed).choice(len(candidates), size=limit, replace=False).tolist())
    return [name for i, name in enumerate(candidates) if i in picked]


def case_name(file_name: str) -> str:
    for suffix in (".nii.gz", ".nii", ".nrrd", ".png", ".jpg", ".bmp", ".tif", ".mha"):
        if file_name.endswith(suffix):
            return file_name[: -len(suffix)]
    return file_name


@dataclasses.dataclass
class Plan:
    """What the benchmark runs on: the data, the lists and the output folder."""

    layout: DatasetLayout
    root: Path
    train_list: str
    train: List[str]
    labeled: Dict[str, List[str]]  # list stem -> names
    labeled_files: Dict[str, str]  # list stem -> the list's file name as given
    unlabeled: Dict[str, List[str]]  # list stem -> unlabeled names used
    unlabeled_candidates: Dict[str, int]  # list stem -> how many train names were not labeled
    unlabeled_limit: Optional[int]
    test_list: str
    test: List[str]
    test_total: int
    val_list: Optional[str]
    validation: Optional[List[str]]
    output: Path

    def pair(self, name: str) -> tuple:
        return self.root / "images" / name, self.root / self.layout.label_folder / name

    def scored_here(self, result: dict) -> bool:
        """Whether a kept result was scored on this plan's test cases (the same list, as many of its
        first cases: ``--max-test``); one that was not must be scored again."""
        return result.get("test_list") == self.test_list and result.get("test_cases") == len(self.test)

    def manifest(self, labeled_stem: str, with_unlabeled: bool) -> dataset.Manifest:
        """The engine's manifest for one labeled list (labeled-only runs get no unlabeled images)."""
        labeled = self.labeled[labeled_stem]
        unlabeled = self.unlabeled[labeled_stem] if with_unlabeled else []
        return dataset.manifest_from_split_lists(
            self.root, labeled + unlabeled, labeled, self.validation, classes=self.layout.class_infos(),
            image_dir="images", mask_dir=self.layout.label_folder)


def make_plan(args) -> Plan:
    root = Path(args.data).expanduser().resolve()
    if not root.is_dir():
        raise InputError(f"--data {root} is not a folder")
    layout = LAYOUTS[args.dataset or detect_layout(root)]
    for sub in ("images", layout.label_folder):
        if not (root / sub).is_dir():
            raise InputError(f"--data {root} has no {sub}/ folder ({layout.name} layout)")
    limit = args.unlabeled_limit if args.unlabeled_limit is not None else layout.default_unlabeled_limit
    if limit is not None and limit < 1:
        raise InputError("--unlabeled-limit must be >= 1")
    if args.max_test is not None and args.max_test < 1:
        raise InputError("--max-test must be >= 1")
    train = read_names(list_path(root, args.train_list))
    train_set = set(train)
    labeled, files, unlabeled, candidates = {}, {}, {}, {}
    for lst in args.labeled_list or layout.default_labeled_lists:
        names = read_names(list_path(root, lst))
        missing = [n for n in names if n not in train_set]
        if missing:
            raise InputError(f"{lst}: {len(missing)} name(s) are not in {args.train_list}, e.g. {missing[0]}")
        stem = list_stem(lst)
        if stem in labeled:
            raise InputError(f"--labeled-list names {stem} twice")
        labeled[stem], files[stem] = names, lst
        rest = [n for n in train if n not in set(names)]
        candidates[stem] = len(rest)
        unlabeled[stem] = choose_unlabeled(rest, limit)
    test_all = read_names(list_path(root, args.test_list))
    test = test_all[: args.max_test] if args.max_test else test_all
    validation = read_names(list_path(root, args.val_list)) if args.val_list else None
    used = set(test) | set(validation or []) | {n for v in labeled.values() for n in v} | \
        {n for v in unlabeled.values() for n in v}
    missing = sorted(n for n in used if not all(p.is_file() for p in (root / "images" / n,
                                                                      root / layout.label_folder / n)))
    if missing:
        raise InputError(f"{len(missing)} listed case(s) lack images/ or {layout.label_folder}/ files in {root}, "
                         f"e.g. {missing[0]}")
    return Plan(layout, root, args.train_list, train, labeled, files, unlabeled, candidates, limit,
                args.test_list, test, len(test_all), args.val_list, validation,
                Path(args.output).expanduser().resolve())


def load_case(plan: Plan, name: str):
    """(SimpleITK image, reference class indices in array order, spacing in array order) of a test case."""
    import SimpleITK as sitk

    from CPCSAMLib import io

    image_path, label_path = plan.pair(name)
    image = io.load_image(image_path)
    label = io.load_label(label_path, image, plan.layout.label_values)
    reference = io.label_to_index(sitk.GetArrayFromImage(label), plan.layout.label_values)
    spacing = tuple(float(s) for s in reversed(image.GetSpacing()))
    return image, reference, spacing


def model_input_slices(predictor, root: Path, case: str):
    """One case of ``root`` (``images/`` with ``labels/`` or ``masks/``) as the predictor's model sees
    it: images ``[N, 1, S, S]`` (float32, scaled as in training) and reference class indices
    ``[N, S, S]`` (int64), slices along the model's axis. For the diagnostic scripts in ``results/``."""
    import torch

    from CPCSAMLib import io

    values = [c["value"] for c in predictor.classes]
    size = predictor.model.input_size
    img = io.load_image(root / "images" / case)
    lab = io.load_label(root / ("labels" if (root / "labels").is_dir() else "masks") / case, img, values)
    sl, used = io.to_slices(img, predictor.card.get("axis"))
    gt, _ = io.to_slices(lab, used)
    sl = io.normalize(sl, predictor.percentiles)
    gti = io.label_to_index(gt, values)
    x = torch.from_numpy(np.stack([io.resize(s, size, False) for s in sl])[:, None].astype(np.float32))
    y = torch.from_numpy(np.stack([io.resize(g, size, True) for g in gti]).astype(np.int64))
    return x, y
