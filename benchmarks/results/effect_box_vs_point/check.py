"""Prompts for the Segment Editor effect on a box-trained model: BUSI val images, the largest lesion
component's centre point (predict_slice_with_points) against its box with a 10 % margin
(predict_slice_with_box), and no prompt (predict_slice, unprompted and self-prompted).
Usage: check.py MODEL N  (env BUSI: the BUSI folder)"""
import json, os, sys

import numpy as np
import torch
from pathlib import Path
from scipy import ndimage

from CPCSAMLib import io
from CPCSAMLib.infer import Predictor

torch.set_num_threads(1)
root = Path(os.environ.get("BUSI", "../shared/data/busi"))
model, n = sys.argv[1], int(sys.argv[2])
pred = Predictor.from_checkpoint(model, device="cpu")
val = (root / "val.txt").read_text().split()[:n]


def dice(a, b):
    return 1.0 if a.sum() + b.sum() == 0 else float(2 * (a & b).sum() / (a.sum() + b.sum()))


res = {"unprompted": [], "self_prompted": [], "centre_point": [], "box": []}
for name in val:
    img = io.load_image(root / "images" / name)
    sl = io.to_slices(img)[0][0]
    gt = io.to_slices(io.load_label(root / "masks" / name, img, [255]))[0][0] > 0
    lab, k = ndimage.label(gt, structure=np.ones((3, 3)))
    comp = lab == 1 + int(np.argmax(ndimage.sum(gt, lab, range(1, k + 1))))
    cy, cx = ndimage.center_of_mass(comp)
    ys, xs = np.nonzero(comp)
    mx, my = 0.1 * (xs.max() - xs.min() + 1), 0.1 * (ys.max() - ys.min() + 1)
    box = (xs.min() - mx, ys.min() - my, xs.max() + mx, ys.max() + my)
    res["unprompted"].append(dice(pred.predict_slice(sl, self_prompt=False) == 1, gt))
    res["self_prompted"].append(dice(pred.predict_slice(sl, self_prompt=True) == 1, gt))
    res["centre_point"].append(dice(pred.predict_slice_with_points(sl, [(cx, cy, 1)]) == 1, gt))
    res["box"].append(dice(pred.predict_slice_with_box(sl, box, 1) == 1, gt))
summary = {k: {"mean_dsc": round(100 * float(np.mean(v)), 2), "below_0.05": int(sum(x < 0.05 for x in v))}
           for k, v in res.items()}
print(json.dumps({"model": model, "prompt_type": pred.prompt_type, "images": len(val), "summary": summary}))
