"""``cpcsam demo``: CPC-SAM on the BUSI subset bundled with the package, a few minutes on CPU.

10 labeled and 30 unlabeled training images; 43 held-apart images are predicted and scored after
training (they are not used for checkpoint selection: the demo keeps the last model).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Optional

import numpy as np

from . import dataset as ds
from . import io
from .config import DEMO_DEFAULTS, DEMO_MIRROR, TrainConfig
from .training import plot_curves, run_training

DEMO_DIR = Path(__file__).resolve().parent / "demo_data" / "busi"


def _overlay(image: np.ndarray, pred: np.ndarray, gt: np.ndarray, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 4))
    ax.imshow(image, cmap="gray")
    if gt.any():
        ax.contour(gt, levels=[0.5], colors="lime", linewidths=1.2)
    if pred.any():
        ax.contour(pred, levels=[0.5], colors="red", linewidths=1.2)
    ax.set_title(title, fontsize=9)
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def run_demo(output: str | Path = "demo_output", config: Optional[TrainConfig] = None,
             mirror: bool = DEMO_MIRROR) -> dict:
    """Trains, predicts the held-apart images (``mirror``: also mirrored, see
    :meth:`Predictor.predict_slices`), prints Dice, writes overlays and the curve."""
    from .infer import Predictor
    from .metrics import dice

    cfg = config or TrainConfig(**DEMO_DEFAULTS)
    output = Path(output)
    manifest = ds.load_manifest(DEMO_DIR / "manifest.json")
    held_apart = list(manifest.validation)
    train_manifest = dataclasses.replace(manifest, validation=[])
    print(f"CPC-SAM demo: {len(manifest.labeled)} labeled, {len(manifest.unlabeled)} unlabeled BUSI images, "
          f"{len(held_apart)} held apart; backbone {cfg.backbone}; up to {cfg.iterations} iterations"
          + (f" or {cfg.max_minutes:g} minutes" if cfg.max_minutes else ""), flush=True)
    result = run_training(train_manifest, output / "model", cfg)
    predictor = Predictor.from_checkpoint(result.model, cfg.device)
    (output / "overlays").mkdir(parents=True, exist_ok=True)
    scores = []
    for image_path, label_path in held_apart:
        image = io.load_image(image_path)
        pred = io.to_slices(predictor.predict_image(image, mirror=mirror))[0][0] > 0
        gt = io.to_slices(io.load_label(label_path, image, manifest.label_values))[0][0] > 0
        d = dice(pred, gt)
        scores.append(d)
        name = Path(image_path).stem
        _overlay(io.to_slices(image)[0][0], pred, gt, output / "overlays" / f"{name}.png",
                 f"{name}  Dice {d:.3f}  (green: reference, red: CPC-SAM)")
        print(f"  {name:16s} Dice {d:.3f}")
    summary = {"mirror": mirror, "iterations": result.iteration, "status": result.status,
               "mean_dice": float(np.mean(scores)),
               "per_image_dice": {Path(p).stem: float(s) for (p, _), s in zip(held_apart, scores)},
               "seconds": round(result.seconds, 1), "model": result.model}
    plot_curves(result.history, output / "training_curve.png")
    (output / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"mean Dice on {len(scores)} held-apart images: {summary['mean_dice']:.3f} after {result.iteration} "
          f"iterations ({result.seconds / 60:.1f} min). Overlays: {output / 'overlays'}; curve: "
          f"{output / 'training_curve.png'}")
    return summary
