#!/usr/bin/env python
"""Build the bundled BUSI demo subset ``CPCSAMLib/demo_data/busi`` from the prepared BUSI data.

Selection (deterministic):
- labeled: the names of ``--labeled-list`` (default ``labeled_10.txt``, the paper's 10/431 setting;
  benchmarks/results/demo_session16 measured ``labeled_20.txt``);
- unlabeled: 30 of the remaining train names, every k-th with k = len(rest) // 30, from the first;
- validation (held-apart demo test set): 43 names of ``val.txt``, every k-th likewise (every 2nd: half
  of val, so that the demo's mean Dice is close to the whole val set's; an earlier selection of
  12, every 7th, held mostly tiny lesions and scored about 0.3 below val for every model).

Each image is downscaled so that its shorter side is 256 px (never enlarged), so that the
pipeline's resize to LiteMedSAM's 256 x 256 input only shrinks it, as it shrinks the original
images: a longer side of 256 made the pipeline enlarge the shorter side, and the encoder saw
visibly blurrier images than from the originals (labeled-only demo training scored about 0.06 Dice
lower; benchmarks/results/demo_session12). Bilinear with anti-aliasing for images, nearest
neighbour for masks (which stay 0/255); saved as 8-bit PNG under its original
file name. Writes ``manifest.json``; ``README.md`` (attribution) is kept as written by hand.

Usage: python scripts/make_demo_data.py [--source /work/shared/data/busi] [--output DIR] [--labeled-list NAME]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from skimage.transform import resize

SHORT_SIDE = 256
NUM_UNLABELED = 30
NUM_VALIDATION = 43


def every_kth(names: list[str], count: int) -> list[str]:
    k = max(len(names) // count, 1)
    return names[::k][:count]


def read_list(path: Path) -> list[str]:
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]


def downscale(arr: np.ndarray, is_mask: bool) -> np.ndarray:
    h, w = arr.shape
    scale = min(1.0, SHORT_SIDE / min(h, w))
    shape = (max(1, round(h * scale)), max(1, round(w * scale)))
    if is_mask:
        out = resize(arr, shape, order=0, preserve_range=True, anti_aliasing=False)
        return np.where(out > 127, 255, 0).astype(np.uint8)
    out = resize(arr.astype(np.float32), shape, order=1, preserve_range=True, anti_aliasing=True)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def convert(src: Path, dst: Path, is_mask: bool) -> None:
    arr = sitk.GetArrayFromImage(sitk.ReadImage(str(src)))
    if arr.ndim == 3:  # RGB(A) -> first channel (prepared BUSI is grayscale already)
        arr = arr[..., 0]
    dst.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(downscale(arr, is_mask)), str(dst), True)


def main() -> None:
    repo = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=repo.parent / "shared" / "data" / "busi")
    parser.add_argument("--output", type=Path, default=repo / "CPCSAMLib" / "demo_data" / "busi")
    parser.add_argument("--labeled-list", default="labeled_10.txt", help="labeled names: a file in --source, or a path")
    args = parser.parse_args()
    src, out = args.source, args.output

    train = read_list(src / "train.txt")
    labeled = read_list(src / args.labeled_list)
    rest = [n for n in train if n not in set(labeled)]
    unlabeled = every_kth(rest, NUM_UNLABELED)
    validation = every_kth(read_list(src / "val.txt"), NUM_VALIDATION)

    for name in labeled + validation:
        convert(src / "images" / name, out / "images" / name, is_mask=False)
        convert(src / "masks" / name, out / "masks" / name, is_mask=True)
    for name in unlabeled:
        convert(src / "images" / name, out / "images" / name, is_mask=False)

    manifest = {
        "classes": [{"name": "lesion", "value": 255}],
        "labeled": [{"image": f"images/{n}", "label": f"masks/{n}"} for n in labeled],
        "unlabeled": [f"images/{n}" for n in unlabeled],
        "validation": [{"image": f"images/{n}", "label": f"masks/{n}"} for n in validation],
        "axis": None,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    wanted = {f"images/{n}" for n in labeled + unlabeled + validation} | {f"masks/{n}" for n in labeled + validation}
    for stale in sorted(p for p in list(out.glob("images/*")) + list(out.glob("masks/*"))
                        if f"{p.parent.name}/{p.name}" not in wanted):
        stale.unlink()  # left from an earlier selection
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"{len(labeled)} labeled, {len(unlabeled)} unlabeled, {len(validation)} validation; "
          f"{total / 1e6:.2f} MB in {out}")


if __name__ == "__main__":
    main()
