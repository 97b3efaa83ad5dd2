"""Where do CPC-SAM's extra voxels come from? For a trained model and some volumes (their references
are read only to score): per class, slices split by whether the reference holds the class; in each
group the pixels of decoder 2's unprompted prediction (the student), of the cross target made for it
(decoder 1 prompted with the centre box of the student's largest component, margin as trained, as in
CPCObjective) and of the reference, and how many slices get a prompt.
Usage: fp_prompt_check.py MODEL DATA_DIR CASE [CASE ...]   (256 px slices, torch threads: 2)"""
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

from benchmarks.data import model_input_slices
from CPCSAMLib.infer import Predictor

warnings.filterwarnings("ignore")
torch.set_num_threads(2)
model_path, data = sys.argv[1], Path(sys.argv[2])
pred = Predictor.from_checkpoint(model_path, device="cpu")
m = pred.model
names = [c["name"] for c in pred.classes]
rows = {}  # (class, group) -> [slices, prompted slices, student px, target px, reference px, student&ref, target&ref]
for case in sys.argv[3:]:
    x, y = model_input_slices(pred, data, case)
    with torch.no_grad():
        emb = m.encode(x)
        u1, u2 = m.decode(1, emb).float(), m.decode(2, emb).float()
        student = u2.argmax(1)
        boxes = m.prompts_from_maps(student, "box", np.random.default_rng(0), pred.box_margin)
        target = m.decode_prompted(1, emb, boxes, "center", unprompted=u1).float().argmax(1)
    for k in range(1, len(names) + 1):
        for s in range(y.shape[0]):
            group = "class in reference" if (y[s] == k).any() else "class not in reference"
            r = rows.setdefault((names[k - 1], group), [0] * 7)
            st, tg, rf = student[s] == k, target[s] == k, y[s] == k
            r[0] += 1
            r[1] += int(st.any())
            r[2] += int(st.sum()); r[3] += int(tg.sum()); r[4] += int(rf.sum())
            r[5] += int((st & rf).sum()); r[6] += int((tg & rf).sum())
print(f"{model_path}: {len(sys.argv) - 3} volumes, {pred.box_margin=}")
print("| class | slices | n | prompted | student px | target px | target / student | reference px | student Dice | target Dice |")
print("|---|---|---|---|---|---|---|---|---|---|")
for (name, group), (n, p, st, tg, rf, si, ti) in sorted(rows.items()):
    print(f"| {name} | {group} | {n} | {p} | {st} | {tg} | {tg / max(1, st):.2f} | {rf} | "
          f"{200 * si / max(1, st + rf):.1f} | {200 * ti / max(1, tg + rf):.1f} |")
