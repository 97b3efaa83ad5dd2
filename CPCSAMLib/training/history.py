"""Listeners that follow training for people: the history (and its curve) and the progress bar."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional

from ..io import atomic_path

LOSSES = ("loss", "loss_s", "loss_cross", "loss_c")


def empty_history() -> Dict[str, list]:
    return {k: [] for k in ("iteration",) + LOSSES + ("lr", "val_iteration", "val_dice")}


class History:
    """Losses and learning rate per iteration, validation Dice per validation (stored in model_last.pt)."""

    def __init__(self, data: Optional[Dict[str, list]] = None) -> None:
        self.data = data or empty_history()

    def __call__(self, event: dict) -> None:
        if event["event"] == "iteration":
            self.data["iteration"].append(event["iteration"])
            for k in LOSSES:
                self.data[k].append(event.get(k))
            self.data["lr"].append(event["lr"])
        elif event["event"] == "validation":
            self.data["val_iteration"].append(event["iteration"])
            self.data["val_dice"].append(event["dice"])


class ProgressBar:
    """A tqdm bar on stderr, advanced by ``iteration`` events."""

    def __init__(self, total: int, initial: int) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, initial=initial, desc="CPC-SAM", unit="it", dynamic_ncols=True)

    def __call__(self, event: dict) -> None:
        if event["event"] == "iteration":
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{event['loss']:.3f}", lr=f"{event['lr']:.1e}")
        elif event["event"] in ("finished", "error"):
            self.bar.close()


def plot_curves(history: Dict[str, list], path: Path) -> Optional[Path]:
    """Training-curve PNG: losses per iteration and validation Dice."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    path = Path(path)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    it = history.get("iteration", [])
    for key in LOSSES:
        values = [float("nan") if v is None else v for v in history.get(key) or []]
        if values:
            axes[0].plot(it, values, label=key, linewidth=1)
    axes[0].set_xlabel("iteration")
    axes[0].set_ylabel("loss")
    axes[0].set_yscale("log")
    axes[0].legend()
    if history.get("val_iteration"):
        axes[1].plot(history["val_iteration"], history["val_dice"], marker="o")
        axes[1].set_ylabel("validation Dice (mean over classes)")
        axes[1].set_ylim(0, 1)
    else:  # no validation set: the schedule instead of an empty panel
        axes[1].plot(it, history.get("lr") or [], linewidth=1)
        axes[1].set_ylabel("learning rate (no validation set)")
    axes[1].set_xlabel("iteration")
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=100)
    finally:
        plt.close(fig)
    return path
