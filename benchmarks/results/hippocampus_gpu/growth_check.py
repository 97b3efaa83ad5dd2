"""Does a cross target outgrow the prediction it was prompted from? For a trained model and some
volumes: per class, the pixels of decoder 2's unprompted prediction (the student) and of decoder 1
prompted with the centre and the jittered boxes of that prediction (the cross target of decoder 2,
as in CPCObjective), for box margins 0, 0.05 and 0.1; and the reference's pixels.
Usage: growth_check.py MODEL DATA_DIR CASE [CASE ...]   (torch threads: 1; references in
DATA_DIR/labels, or DATA_DIR/masks for BUSI)"""
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

from benchmarks.data import model_input_slices
from CPCSAMLib.infer import Predictor

warnings.filterwarnings("ignore")
torch.set_num_threads(1)
model_path, data = sys.argv[1], Path(sys.argv[2])
pred = Predictor.from_checkpoint(model_path, device="cpu")
m = pred.model
values = [c["value"] for c in pred.classes]
names = [c["name"] for c in pred.classes]
margins = (0.0, 0.05, 0.1)
tot = {}
for case in sys.argv[3:]:
    x, y = model_input_slices(pred, data, case)
    with torch.no_grad():
        emb = m.encode(x)
        u1, u2 = m.decode(1, emb).float(), m.decode(2, emb).float()
        outs = [("reference", y), ("D2 unprompted (student)", u2.argmax(1))]
        for margin in margins:
            boxes = m.prompts_from_maps(u2.argmax(1), "box", np.random.default_rng(0), margin)
            for which in ("center", "random"):
                t = m.decode_prompted(1, emb, boxes, which, unprompted=u1).float().argmax(1)
                outs.append((f"D1 prompted, {which} box, margin {margin:g}", t))
    for what, a in outs:
        for k in range(1, len(values) + 1):
            t = tot.setdefault((what, k), [0, 0])
            t[0] += int((a == k).sum())
            t[1] += int(((a == k) & (y == k)).sum())
print(f"{model_path}: {len(sys.argv) - 3} volumes, 256 px slices")
print("| output | class | pixels | / student | / reference | Dice |\n|---|---|---|---|---|---|")
for (what, k), (p, i) in tot.items():
    s, r = tot[("D2 unprompted (student)", k)][0], tot[("reference", k)][0]
    print(f"| {what} | {names[k - 1]} | {p} | {p / max(1, s):.2f} | {p / max(1, r):.2f} | {200 * i / max(1, p + r):.1f} |")
