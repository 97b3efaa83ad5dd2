"""Segmentation metrics per case and class: DSC, Jaccard, HD95, ASD; CSV and Markdown reports.

Definitions (binary masks, any dimension, ``spacing`` in the array's axis order, physical
units; default spacing 1 = pixels):

- DSC = 2|P∩G| / (|P|+|G|); Jaccard = |P∩G| / |P∪G|.
- Surfaces: a mask minus its binary erosion with full connectivity (3x3 / 3x3x3 structuring
  element; the array border counts as outside). Surface distances come from
  ``scipy.ndimage.distance_transform_edt(..., sampling=spacing)``.
- HD95 = 95th percentile of the symmetric surface distances: the distances from every surface
  voxel of P to the surface of G and from every surface voxel of G to the surface of P, pooled
  (as ``medpy.metric.binary.hd95``).
- ASD = average symmetric surface distance as ``medpy.metric.binary.assd``: the mean of the two
  directed mean surface distances, (mean d(P->G) + mean d(G->P)) / 2. (It equals the mean of the
  pooled distances when both surfaces have the same number of voxels.)

Empty rule: both masks empty -> DSC = JC = 1, HD95 = ASD = 0; exactly one empty -> DSC = JC = 0,
HD95 = ASD = NaN. NaNs are left out of means and standard deviations and counted separately.
"""

from __future__ import annotations

import csv
import io as _stdio
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

import numpy as np

from .errors import InputError

PathLike = Union[str, "os.PathLike[str]"]

METRICS = ("dice", "jaccard", "hd95", "asd")
METRIC_TITLES = {"dice": "DSC", "jaccard": "Jaccard", "hd95": "HD95", "asd": "ASD"}
EMPTY_RULE = ("Empty-mask rule: prediction and reference both empty -> DSC = Jaccard = 1, "
              "HD95 = ASD = 0; exactly one of them empty -> DSC = Jaccard = 0, HD95 = ASD = NaN "
              "(left out of mean and std; the number of NaNs is reported).")


def _pair(pred: Any, gt: Any) -> tuple[np.ndarray, np.ndarray]:
    p, g = np.asarray(pred).astype(bool), np.asarray(gt).astype(bool)
    if p.shape != g.shape:
        raise InputError(f"Prediction shape {p.shape} differs from reference shape {g.shape}.")
    return p, g


def _spacing(spacing: float | Sequence[float] | None, ndim: int) -> tuple[float, ...]:
    if spacing is None:
        return (1.0,) * ndim
    if np.isscalar(spacing):
        return (float(spacing),) * ndim
    sp = tuple(float(s) for s in spacing)
    if len(sp) != ndim or any(not s > 0 for s in sp):
        raise InputError(f"Spacing {sp} must hold {ndim} positive values (array axis order).")
    return sp


def dice(pred: Any, gt: Any) -> float:
    """Dice similarity coefficient of two binary masks (both empty -> 1)."""
    p, g = _pair(pred, gt)
    total = int(p.sum()) + int(g.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(p, g).sum()) / total


def jaccard(pred: Any, gt: Any) -> float:
    """Jaccard index (IoU) of two binary masks (both empty -> 1)."""
    p, g = _pair(pred, gt)
    union = int(np.logical_or(p, g).sum())
    if union == 0:
        return 1.0
    return int(np.logical_and(p, g).sum()) / union


def _surface(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    structure = ndimage.generate_binary_structure(mask.ndim, mask.ndim)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def surface_distances(pred: Any, gt: Any, spacing: float | Sequence[float] | None = None
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances (P->G, G->P) of two non-empty binary masks, in spacing units."""
    from scipy import ndimage

    p, g = _pair(pred, gt)
    sp = _spacing(spacing, p.ndim)
    if not p.any() or not g.any():
        raise InputError("Surface distances need two non-empty masks.")
    # Crop to the bounding box of both masks plus one voxel: distances are unchanged, and the
    # one-voxel margin keeps the surfaces identical (the array border stays where it was).
    both = p | g
    box = []
    for axis in range(p.ndim):
        other = tuple(a for a in range(p.ndim) if a != axis)
        idx = np.flatnonzero(both.any(axis=other))
        box.append(slice(max(idx[0] - 1, 0), min(idx[-1] + 2, p.shape[axis])))
    p, g = p[tuple(box)], g[tuple(box)]
    sp_, sg = _surface(p), _surface(g)
    dist_to_g = ndimage.distance_transform_edt(~sg, sampling=sp)
    dist_to_p = ndimage.distance_transform_edt(~sp_, sampling=sp)
    return dist_to_g[sp_], dist_to_p[sg]


def _empty_case(p: np.ndarray, g: np.ndarray) -> float | None:
    """0.0 when both empty, NaN when exactly one is empty, None when both are non-empty."""
    pe, ge = not p.any(), not g.any()
    if pe and ge:
        return 0.0
    if pe or ge:
        return math.nan
    return None


def hd95(pred: Any, gt: Any, spacing: float | Sequence[float] | None = None) -> float:
    """95th percentile Hausdorff distance (pooled symmetric surface distances, as medpy)."""
    p, g = _pair(pred, gt)
    empty = _empty_case(p, g)
    if empty is not None:
        return empty
    d_pg, d_gp = surface_distances(p, g, spacing)
    return float(np.percentile(np.concatenate([d_pg, d_gp]), 95))


def asd(pred: Any, gt: Any, spacing: float | Sequence[float] | None = None) -> float:
    """Average symmetric surface distance, as ``medpy.metric.binary.assd``:
    (mean d(P->G) + mean d(G->P)) / 2."""
    p, g = _pair(pred, gt)
    empty = _empty_case(p, g)
    if empty is not None:
        return empty
    d_pg, d_gp = surface_distances(p, g, spacing)
    return float((d_pg.mean() + d_gp.mean()) / 2.0)


def case_metrics(pred_idx: Any, gt_idx: Any, class_names: Sequence[str],
                 spacing: float | Sequence[float] | None = None, case: str = "") -> list[dict]:
    """Metrics of one case for each class (class i+1 <-> ``class_names[i]``).

    ``pred_idx`` / ``gt_idx``: class-index maps of equal shape; ``spacing`` in array axis order.
    Each row: case, class, dice, jaccard, hd95, asd, pred_voxels, gt_voxels.
    """
    pred_idx, gt_idx = np.asarray(pred_idx), np.asarray(gt_idx)
    if pred_idx.shape != gt_idx.shape:
        raise InputError(f"Case {case!r}: prediction shape {pred_idx.shape} differs from "
                         f"reference shape {gt_idx.shape}.")
    sp = _spacing(spacing, pred_idx.ndim)
    rows = []
    for index, name in enumerate(class_names, start=1):
        p, g = pred_idx == index, gt_idx == index
        empty = _empty_case(p, g)
        if empty is None:
            d_pg, d_gp = surface_distances(p, g, sp)
            h = float(np.percentile(np.concatenate([d_pg, d_gp]), 95))
            a = float((d_pg.mean() + d_gp.mean()) / 2.0)
        else:
            h = a = empty
        rows.append({"case": str(case), "class": str(name), "dice": dice(p, g),
                     "jaccard": jaccard(p, g), "hd95": h, "asd": a,
                     "pred_voxels": int(p.sum()), "gt_voxels": int(g.sum())})
    return rows


def _stats(values: Sequence[float]) -> dict:
    arr = np.asarray(values, dtype=float)
    finite = arr[~np.isnan(arr)]
    return {"mean": float(finite.mean()) if finite.size else math.nan,
            "std": float(finite.std()) if finite.size else math.nan,
            "n": int(finite.size), "nan": int(arr.size - finite.size)}


def summarize(rows: Sequence[Mapping[str, Any]]) -> dict:
    """Mean, std (population, ddof=0), count and NaN count of each metric, per class and overall.

    Returns ``{"num_cases": int, "per_class": {class: {metric: {mean, std, n, nan}}},
    "overall": {metric: {...}}}`` (overall pools all case/class rows).
    """
    classes: list[str] = []
    for r in rows:
        if r["class"] not in classes:
            classes.append(r["class"])
    per_class = {c: {m: _stats([r[m] for r in rows if r["class"] == c]) for m in METRICS}
                 for c in classes}
    overall = {m: _stats([r[m] for r in rows]) for m in METRICS}
    return {"num_cases": len({r["case"] for r in rows}), "per_class": per_class,
            "overall": overall}


def _fmt(stat: dict, digits: int) -> str:
    if stat["n"] == 0:
        text = "n/a"
    else:
        text = f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"
    if stat["nan"]:
        text += f" ({stat['nan']} NaN)"
    return text


def markdown_report(rows: Sequence[Mapping[str, Any]], unit: str = "mm") -> str:
    """Markdown table of mean ± std per class (and over all classes) with the empty rule."""
    summary = summarize(rows)
    n_cases = summary["num_cases"]
    lines = [f"# Segmentation metrics ({n_cases} case{'' if n_cases == 1 else 's'})", "",
             f"| class | cases | DSC | Jaccard | HD95 ({unit}) | ASD ({unit}) |",
             "|---|---|---|---|---|---|"]
    entries = list(summary["per_class"].items())
    if len(entries) > 1:
        entries.append(("all classes", summary["overall"]))
    for name, stats in entries:
        n = stats["dice"]["n"] + stats["dice"]["nan"]
        lines.append(f"| {name} | {n} | {_fmt(stats['dice'], 4)} | {_fmt(stats['jaccard'], 4)} "
                     f"| {_fmt(stats['hd95'], 2)} | {_fmt(stats['asd'], 2)} |")
    lines += ["", "Mean ± standard deviation (population) over cases. HD95: 95th percentile of the "
              "pooled symmetric surface distances; ASD: average symmetric surface distance "
              "(medpy `assd`). Distances use the voxel spacing of the files.", "", EMPTY_RULE, ""]
    return "\n".join(lines)


def write_reports(rows: Sequence[Mapping[str, Any]], csv_path: PathLike, md_path: PathLike,
                  unit: str = "mm") -> None:
    """Write the per-case rows as CSV and the summary as Markdown (both atomically)."""
    from .io import write_text_atomic

    fields = ["case", "class", *METRICS, "pred_voxels", "gt_voxels"]
    buf = _stdio.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (f"{r[k]:.6g}" if isinstance(r.get(k), float) else r.get(k, ""))
                         for k in fields})
    write_text_atomic(csv_path, buf.getvalue())
    write_text_atomic(md_path, markdown_report(rows, unit))


def case_names(paths: Sequence[PathLike]) -> list[str]:
    """One distinct case name per reference file.

    The file name without extension when those are distinct (``a.nrrd`` -> ``a``); otherwise
    the path below the files' common folder, without extension (``p1/label.png`` and
    ``p2/label.png`` -> ``p1/label`` and ``p2/label``). The same file given twice raises
    InputError (each case has its own reference file).
    """
    from .io import extension

    def strip(text: str, p: Path) -> str:
        ext = extension(p)
        return text[: -len(ext)] if ext and text.lower().endswith(ext) else text

    files = [Path(p) for p in paths]
    resolved = [p.resolve() for p in files]
    for i, r in enumerate(resolved):
        if r in resolved[:i]:
            j = resolved.index(r)
            raise InputError(f"The reference file {files[i]} is given twice (pairs {j + 1} and "
                             f"{i + 1}); each case needs its own reference file.")
    names = [strip(p.name, p) for p in files]
    if len(set(names)) == len(names):
        return names
    common = Path(os.path.commonpath([str(r.parent) for r in resolved]))
    return [strip(r.relative_to(common).as_posix(), r) for r in resolved]


def evaluate_files(pred_paths: Sequence[PathLike], gt_paths: Sequence[PathLike],
                   classes: Sequence[Any], out_dir: PathLike, overwrite: bool = False) -> dict:
    """Evaluate predicted label files against reference label files (paired by position).

    ``classes``: the validated class list (:class:`CPCSAMLib.dataset.ClassInfo` objects, from
    :func:`CPCSAMLib.dataset.parse_classes`). Values in the files are mapped to class indices;
    distances use each reference file's spacing (mm for medical formats, pixels for PNG). Cases
    are named by :func:`case_names`. Every file is read and checked before anything is written;
    existing reports in ``out_dir`` are refused unless ``overwrite``. Writes ``metrics.csv`` and
    ``metrics.md`` into ``out_dir``; returns ``{"rows", "summary", "csv", "markdown"}``.
    """
    import SimpleITK as sitk

    from . import io

    names = [c.name for c in classes]
    values = [c.value for c in classes]
    preds, gts = [Path(p) for p in pred_paths], [Path(g) for g in gt_paths]
    if not preds or len(preds) != len(gts):
        raise InputError(f"Give as many prediction files as reference files (got {len(preds)} "
                         f"predictions and {len(gts)} references).")
    out = Path(out_dir)
    csv_path, md_path = out / "metrics.csv", out / "metrics.md"
    existing = [str(p) for p in (csv_path, md_path) if p.exists()]
    if existing and not overwrite:
        raise InputError(f"Metrics already exist: {', '.join(existing)}. Pass --overwrite to "
                         f"replace them, or choose another output folder.")
    cases = case_names(gts)
    reference = {**io.EVALUATION_WORDING, "what": "Reference",
                 "values": "Give every class of the references (--classes NAME=VALUE), or fix "
                           "the reference label map."}
    rows: list[dict] = []
    unit = "mm"
    for pred_path, gt_path, case in zip(preds, gts, cases):
        gt = io._read_label_image(gt_path, "Reference")
        io.check_label(gt, gt_path, gt, values, reference)
        pred = io.load_label(pred_path, gt, values, io.EVALUATION_WORDING)
        gt_idx = io.label_to_index(sitk.GetArrayViewFromImage(gt), values)
        pred_idx = io.label_to_index(sitk.GetArrayViewFromImage(pred), values)
        if io.extension(gt_path) in io.IMAGE_2D_EXTENSIONS:
            unit = "px"
        spacing = tuple(reversed(gt.GetSpacing()))
        rows += case_metrics(pred_idx, gt_idx, names, spacing, case)
    if unit == "px" and any(io.extension(g) not in io.IMAGE_2D_EXTENSIONS for g in gts):
        unit = "mm or px"
    write_reports(rows, csv_path, md_path, unit=unit)
    return {"rows": rows, "summary": summarize(rows), "csv": str(csv_path),
            "markdown": str(md_path)}
