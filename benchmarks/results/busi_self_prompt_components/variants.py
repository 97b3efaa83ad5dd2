"""Inference variants on BUSI val from saved models (a scratch implementation of each; decoder only).
Usage: BUSI=... VAL_EMB=val_emb.pt variants.py MODEL...; VAL_EMB is written on the first run (the val
images encoded once, as exp.py encodes them) and read by later runs and by product.py."""
import warnings, sys, json, os; warnings.filterwarnings("ignore")
import numpy as np, torch
from pathlib import Path
from scipy import ndimage
from CPCSAMLib import io
from CPCSAMLib.infer import Predictor
from CPCSAMLib.prompts import _box
torch.set_num_threads(1)
root = Path(os.environ.get("BUSI", "../shared/data/busi")); val = (root / "val.txt").read_text().split()
cache = Path(os.environ.get("VAL_EMB", "val_emb.pt"))
models = sys.argv[1:]
P = Predictor.from_checkpoint(models[0]); m = P.model
if cache.exists():
    E = torch.load(cache)
else:
    E = {}
    for n in val:
        img = io.load_image(root / "images" / n)
        sl = io.normalize(io.to_slices(img)[0])
        x = torch.from_numpy(io.resize(sl[0], 256, False)[None, None].astype(np.float32))
        with torch.no_grad():
            E[n] = m.encode(x)
    torch.save(E, cache)
gts = {n: io.to_slices(io.load_label(root / "masks" / n, io.load_image(root / "images" / n), [255]))[0][0] > 0 for n in val}

def dsc(pm, gt):
    return 1.0 if pm.sum() + gt.sum() == 0 else 2 * (pm & gt).sum() / (pm.sum() + gt.sum())

def up(p, shape):
    return torch.nn.functional.interpolate(p, size=shape, mode="bilinear", align_corners=False)

def boxes_pass(m, emb, boxes):
    """mean fg prob of both decoders for each box [K,4] -> [K,256,256]"""
    k = len(boxes)
    b = torch.from_numpy(np.stack(boxes).astype(np.float32))[:, None]
    present = torch.ones(k, 1, dtype=torch.bool)
    e = emb.expand(k, -1, -1, -1)
    p = 0
    for br in (1, 2):
        p = p + 0.5 * m.decode_boxes(br, e, b, present).float().softmax(1)[:, 1]
    return p

res = {}
for path in models:
    m = Predictor.from_checkpoint(path).model.eval()
    sc = {k: [] for k in ("unprompted", "self", "guard50", "allcomp", "mix", "fgmass")}
    for n in val:
        emb, gt = E[n], gts[n]
        with torch.no_grad():
            u = 0.5 * (m.decode(1, emb).float().softmax(1) + m.decode(2, emb).float().softmax(1))
            um = (u.argmax(1)[0] == 1).numpy()
            lab, k = ndimage.label(um)
            sizes = ndimage.sum(um, lab, range(1, k + 1)) if k else []
            mass = ndimage.sum(u[0, 1].numpy(), lab, range(1, k + 1)) if k else []
            preds = {"unprompted": u[:, 1]}
            if k:
                big = int(np.argmax(sizes)) + 1
                pb = boxes_pass(m, emb, [_box(lab == big, 0.1)])  # [1,S,S]
                preds["self"] = pb
                inter = ((pb[0] > 0.5).numpy() & (lab == big)).sum(); uni = ((pb[0] > 0.5).numpy() | (lab == big)).sum()
                preds["guard50"] = pb if inter / max(uni, 1) >= 0.5 else u[:, 1]
                keep = [i + 1 for i in range(k) if sizes[i] >= 0.1 * max(sizes)]
                pa = boxes_pass(m, emb, [_box(lab == i, 0.1) for i in keep]).max(0, keepdim=True)[0]
                preds["allcomp"] = pa
                preds["mix"] = 0.5 * (pb + u[:, 1])
                hm = int(np.argmax(mass)) + 1
                preds["fgmass"] = boxes_pass(m, emb, [_box(lab == hm, 0.1)])
            for key in sc:
                p = preds.get(key, u[:, 1])
                pm = up(p[None], gt.shape)[0, 0].numpy() > 0.5
                sc[key].append(float(dsc(pm, gt)))
    res[path] = {k: (round(100 * np.mean(v), 2), int(sum(np.array(v) < 0.05))) for k, v in sc.items()}
    print(path, json.dumps(res[path]), flush=True)
keys = list(sc)
print("MEAN", {k: round(np.mean([res[p][k][0] for p in models]), 2) for k in keys})
