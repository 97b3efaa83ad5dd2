"""Scratch: the product's self-prompted inference (predict_probs) on BUSI val from saved models, cached val embeddings."""
import warnings, sys, json; warnings.filterwarnings("ignore")
import numpy as np, torch
from pathlib import Path
from CPCSAMLib import io
from CPCSAMLib.infer import Predictor
torch.set_num_threads(1)
root = Path("/work/shared/data/busi"); val = (root / "val.txt").read_text().split()
E = torch.load("/work/scratch/s5/val_emb.pt")
gts = {n: io.to_slices(io.load_label(root / "masks" / n, io.load_image(root / "images" / n), [255]))[0][0] > 0 for n in val}
out = {}
for path in sys.argv[1:]:
    m = Predictor.from_checkpoint(path).model.eval()
    sc = {"unprompted": [], "self_prompt": []}
    for n in val:
        gt = gts[n]
        with torch.no_grad():
            for mode in sc:
                p = m.predict_probs(None, self_prompt=mode == "self_prompt", embeddings=E[n]).float()
                p = torch.nn.functional.interpolate(p, size=gt.shape, mode="bilinear", align_corners=False)
                pm = p.argmax(1)[0].numpy() == 1
                sc[mode].append(float(1.0 if pm.sum() + gt.sum() == 0 else 2 * (pm & gt).sum() / (pm.sum() + gt.sum())))
    out[path] = sc
    print(path, {k: (round(100 * np.mean(v), 2), int(sum(np.array(v) < 0.05))) for k, v in sc.items()}, flush=True)
json.dump(out, open(sys.argv[0].replace(".py", ".json"), "w"))
