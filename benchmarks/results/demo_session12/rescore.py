"""Rescore a model on demo43/other43 with a given inference precision and self_prompt flag."""
import sys, json, numpy as np, torch
from pathlib import Path
from CPCSAMLib import dataset as ds, io
from CPCSAMLib.demo import DEMO_DIR
import os
DEMO_DIR = Path(os.environ.get("DEMO_DATA", DEMO_DIR))
from CPCSAMLib.infer import Predictor
from CPCSAMLib.metrics import dice
BUSI = Path(os.environ.get("BUSI", "../shared/data/busi"))
torch.set_num_threads(int(sys.argv[3]) if len(sys.argv) > 3 else 1)
pred = Predictor.from_checkpoint(sys.argv[1], "cpu", precision=sys.argv[2])
man = ds.load_manifest(DEMO_DIR / "manifest.json")
held = list(man.validation)
demo_names = {Path(p).name for p, _ in held}
vnames = [n.strip() for n in (BUSI / "val.txt").read_text().split() if n.strip()]
other = [(BUSI / "images" / n, BUSI / "masks" / n) for n in vnames if n not in demo_names]
demo_full = [(BUSI / "images" / n, BUSI / "masks" / n) for n in vnames if n in demo_names]
def score(pairs, sp):
    s = []
    for ip, lp in pairs:
        img = io.load_image(ip)
        p = io.to_slices(pred.predict_image(img, self_prompt=sp))[0][0] > 0
        g = io.to_slices(io.load_label(lp, img, man.label_values))[0][0] > 0
        s.append(dice(p, g))
    return round(float(np.mean(s)), 4)
print(sys.argv[1], sys.argv[2], {"demo43": score(held, True), "demo43_fullres": score(demo_full, True), "other43": score(other, True), "demo43_unp": score(held, False)})
