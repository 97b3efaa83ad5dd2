"""Where CPC-SAM's extra voxels are: on x slices without reference foreground, or inside slices with it."""
import os, sys, numpy as np, SimpleITK as sitk, torch
from pathlib import Path
from CPCSAMLib.infer import Predictor
torch.set_num_threads(2)
root = Path(os.environ.get("HIPPOCAMPUS", "../shared/data/hippocampus"))  # usage: fp_slices.py MODEL.pt
names = (root / "val.txt").read_text().split()[:8]
p = Predictor.from_checkpoint(sys.argv[1], "cpu")
tot = np.zeros(4, int)
for n in names:
    img = sitk.ReadImage(str(root / "images" / n)); ref = sitk.GetArrayFromImage(sitk.ReadImage(str(root / "labels" / n)))
    pred = sitk.GetArrayFromImage(p.predict_image(img, self_prompt=False))
    # numpy axes (z, y, x): x slices are the last axis
    has = (ref > 0).any(axis=(0, 1))
    fg_p, fg_r = pred > 0, ref > 0
    fp = fg_p & ~fg_r
    row = np.array([fp[:, :, ~has].sum(), fp[:, :, has].sum(), fg_p.sum(), fg_r.sum()])
    tot += row
    print(n, "FP on slices without ref fg:", row[0], "FP on slices with fg:", row[1], "pred", row[2], "ref", row[3],
          "slices pred-nonempty/without ref:", int((fg_p.any(axis=(0, 1)) & ~has).sum()), "/", int((~has).sum()))
print("TOTAL FP no-fg slices", tot[0], "FP fg slices", tot[1], "pred", tot[2], "ref", tot[3])
