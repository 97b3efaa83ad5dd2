"""Inference-only probe on a trained demo model: Dice on the 86 BUSI val images (the demo's bundled copies of its 43 held-apart images, the originals of the other 43)
for unprompted, self-prompted (default) and self-prompted with a horizontal-flip ensemble (the mean
of the probabilities of the image and of its mirror image, mirrored back).
Usage (repository root): tta_probe.py MODEL OUT.json"""
import json, sys, warnings
from pathlib import Path
import numpy as np, torch
warnings.filterwarnings("ignore")
torch.set_num_threads(2)
from CPCSAMLib import io
from CPCSAMLib import dataset as ds
from CPCSAMLib.infer import Predictor
from CPCSAMLib.metrics import dice
pred = Predictor.from_checkpoint(sys.argv[1], "cpu")
m = pred.model
man = ds.load_manifest(Path("CPCSAMLib/demo_data/busi/manifest.json"))
held = {Path(p).name: (p, lp) for p, lp in man.validation}  # the demo's bundled copies
busi = Path("../shared/data/busi")
names = [l.strip() for l in open(busi / "val.txt") if l.strip()]

from CPCSAMLib.prompts import component_boxes_from_label_maps, ComponentBoxes

def mirror(boxes, size):
    b = boxes.boxes.clone()
    b[:, 0], b[:, 2] = size - 1 - boxes.boxes[:, 2], size - 1 - boxes.boxes[:, 0]
    return ComponentBoxes(boxes.index, boxes.cls, b)

@torch.no_grad()
def variants(x):
    """x [1, S, S]: probabilities of each variant, [1, C + 1, S, S]."""
    xf = np.ascontiguousarray(x[:, :, ::-1])
    out = {}
    with pred._autocast():
        emb, embf = pred._encode_batch(x), pred._encode_batch(xf)
        u = [m.decode(b, emb).float() for b in (1, 2)]
        uf = [m.decode(b, embf).float().flip(-1) for b in (1, 2)]
        pu = 0.5 * (u[0].softmax(1) + u[1].softmax(1))
        puf = 0.5 * (uf[0].softmax(1) + uf[1].softmax(1))
        out["unprompted"] = pu
        out["unprompted_flip"] = 0.5 * (pu + puf)
        def prompted(prob_map):
            boxes = component_boxes_from_label_maps(prob_map.argmax(1), m.num_classes, pred.box_margin)
            a = 0.5 * (m.decode_component_boxes(1, emb, boxes, u[0]).softmax(1)
                       + m.decode_component_boxes(2, emb, boxes, u[1]).softmax(1))
            bf = mirror(boxes, pred.input_size)
            ff = [m.decode(b, embf).float() for b in (1, 2)]
            f = 0.5 * (m.decode_component_boxes(1, embf, bf, ff[0]).softmax(1)
                       + m.decode_component_boxes(2, embf, bf, ff[1]).softmax(1)).flip(-1)
            return a, f
        a, f = prompted(pu)
        out["self_prompt"] = a
        a2, f2 = prompted(out["unprompted_flip"])
        out["self_prompt_tta"] = 0.5 * (a2 + f2)
        out["self_prompt_flipprompts"] = a2
    return out

res = {}
for name in names:
    n = name if name.endswith(".png") else name + ".png"
    ip, lp = held.get(n, (busi / "images" / n, busi / "masks" / n))
    img = io.load_image(ip)
    sl = io.normalize(io.to_slices(img)[0], pred.percentiles)[0]
    gt = io.to_slices(io.load_label(lp, img, man.label_values))[0][0] > 0
    x = io.resize(sl, pred.input_size, is_label=False).astype(np.float32)[None]
    row = {"held_apart": n in held}
    for key, p in variants(x).items():
        lab = Predictor._labels(p, gt.shape) > 0
        row[key] = float(dice(lab, gt))
    res[n] = row
    print(n, {k: round(v, 3) for k, v in row.items() if k != "held_apart"}, flush=True)
Path(sys.argv[2]).write_text(json.dumps(res, indent=1))
for grp, sel in (("held-apart 43", True), ("other 43", False)):
    rows = [r for r in res.values() if r["held_apart"] == sel]
    print(grp, {k: round(np.mean([r[k] for r in rows]), 4) for k in rows[0] if k != "held_apart"})
