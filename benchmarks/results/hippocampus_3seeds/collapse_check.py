"""Where do the anterior voxels go? For a trained Hippocampus model and some volumes with references:
voxels and Dice per class of (a) each decoder's unprompted prediction, (b) decoder 1 prompted with the
centre boxes of decoder 2's prediction (the centre part of the cross target that supervises decoder 2's
unprompted output, as in CPCObjective; the random-box pass left out) and (c) decoder 1 prompted with the
reference's own boxes.
Usage: collapse_check.py MODEL DATA_DIR CASE [CASE ...]   (torch threads: 1)"""
import sys, warnings
warnings.filterwarnings("ignore")
from pathlib import Path
import numpy as np, torch
from benchmarks.data import model_input_slices
from CPCSAMLib.infer import Predictor

torch.set_num_threads(1)
model_path, data = sys.argv[1], Path(sys.argv[2])
pred = Predictor.from_checkpoint(model_path, device="cpu")
m = pred.model
values = [c["value"] for c in pred.classes]
names = [c["name"] for c in pred.classes]
rng = np.random.default_rng(0)
tot = {}
for case in sys.argv[3:]:
    x, y = model_input_slices(pred, data, case)
    with torch.no_grad():
        emb = m.encode(x)
        u1, u2 = m.decode(1, emb).float(), m.decode(2, emb).float()
        from2 = m.prompts_from_maps(u2.argmax(1), pred.prompt_type, rng, pred.box_margin)
        c1 = m.decode_prompted(1, emb, from2, "center", unprompted=u1).float()
        own = m.prompts_from_maps(y, pred.prompt_type, rng, pred.box_margin)
        g1 = m.decode_prompted(1, emb, own, "center", unprompted=u1).float()
    for what, lg in (("D1 unprompted", u1), ("D2 unprompted", u2), ("D1 prompted by D2's boxes (the cross target of D2)", c1),
                     ("D1 prompted by reference boxes", g1)):
        a = lg.argmax(1)
        for k in range(1, len(values) + 1):
            t = tot.setdefault((what, k), [0, 0, 0])
            t[0] += int((a == k).sum()); t[1] += int((y == k).sum()); t[2] += int(((a == k) & (y == k)).sum())
print(f"{model_path}: {len(sys.argv) - 3} volumes, 256 px slices")
print("| output | class | predicted px | reference px | Dice |\n|---|---|---|---|---|")
for (what, k), (p, g, i) in tot.items():
    print(f"| {what} | {names[k - 1]} | {p} | {g} | {200 * i / max(1, p + g):.1f} |")
