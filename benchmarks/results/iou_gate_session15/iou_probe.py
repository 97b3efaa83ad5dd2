"""Can LiteMedSAM's own IoU head tell a cross prompt's false-positive box from a true one?

For a trained frozen-encoder model and some volumes (their references are read only to score): the
student (decoder 2, unprompted) gives, per slice and class, the box of its largest component (margin
as trained), as CPCObjective does for cross prompting. The original LiteMedSAM prompt encoder and
decoder (unchanged weights, single-mask output) read the same image embedding with that box and
predict the mask's IoU. Boxes are split by whether the reference holds the class on that slice;
prints the IoU prediction's distribution per group and the AUC separating them.
Usage: iou_probe.py MODEL DATA_DIR CASE [CASE ...]"""
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

from benchmarks.data import model_input_slices
from CPCSAMLib.infer import Predictor
from CPCSAMLib.modeling.backbones import build_backbone

warnings.filterwarnings("ignore")
torch.set_num_threads(1)
model_path, data = sys.argv[1], Path(sys.argv[2])
pred = Predictor.from_checkpoint(model_path, device="cpu")
m = pred.model
lite = build_backbone("litemedsam")
names = [c["name"] for c in pred.classes]
scores = {}  # class -> {"true": [...], "false": [...]}, plus the reference's share of the box
for case in sys.argv[3:]:
    x, y = model_input_slices(pred, data, case)
    with torch.no_grad():
        emb = m.encode(x)
        student = m.decode(2, emb).float().argmax(1)
        boxes = m.prompts_from_maps(student, "box", np.random.default_rng(0), pred.box_margin)
        for k in range(len(names)):
            rows = boxes.present[:, k].nonzero(as_tuple=True)[0]
            if rows.numel() == 0:
                continue
            sparse, dense = lite.prompt_encoder(points=None, boxes=boxes.center[rows, k][:, None, :], masks=None)
            _, iou = lite.mask_decoder(image_embeddings=emb[rows].float(), image_pe=lite.prompt_encoder.get_dense_pe(),
                                       sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                       multimask_output=False)
            for r, v in zip(rows.tolist(), iou[:, 0].tolist()):
                group = "true" if (y[r] == k + 1).any() else "false"
                scores.setdefault(names[k], {"true": [], "false": []})[group].append(v)


def auc(pos, neg):
    pos, neg = np.asarray(pos), np.asarray(neg)
    if not len(pos) or not len(neg):
        return float("nan")
    return float(((pos[:, None] > neg[None]).mean() + 0.5 * (pos[:, None] == neg[None]).mean()))


print(f"{model_path}: {len(sys.argv) - 3} volumes")
print("| class | boxes on slices with / without the class | IoU pred. quartiles with | without | AUC | kept at 0.5: with / without |")
print("|---|---|---|---|---|---|")
for name, g in scores.items():
    t, f = np.asarray(g["true"]), np.asarray(g["false"])
    q = lambda a: " / ".join(f"{v:.2f}" for v in np.percentile(a, [25, 50, 75])) if len(a) else "-"
    print(f"| {name} | {len(t)} / {len(f)} | {q(t)} | {q(f)} | {auc(t, f):.3f} | "
          f"{(t >= 0.5).mean() if len(t) else float('nan'):.2f} / {(f >= 0.5).mean() if len(f) else float('nan'):.2f} |")
