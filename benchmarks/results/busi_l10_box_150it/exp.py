"""Scratch experiment: BUSI labeled_N, frozen LiteMedSAM; train one method, score last model on val
(unprompted and self-prompted) at the original resolution. Usage: exp.py OUT METHOD ITERS [extra TrainConfig k=v]"""
import warnings, sys, json, time, os
warnings.filterwarnings("ignore")
import numpy as np, torch
from pathlib import Path
from CPCSAMLib import dataset as ds, io
from CPCSAMLib.config import TrainConfig
from CPCSAMLib.training import run_training
from CPCSAMLib.infer import Predictor

out = Path(sys.argv[1]); method = sys.argv[2]; iters = int(sys.argv[3])
kw = {}
for a in sys.argv[4:]:
    k, v = a.split("="); kw[k] = json.loads(v)
root = Path(os.environ.get("BUSI", "../shared/data/busi"))
lab = kw.pop("labeled_list", "labeled_10.txt")
ntest = kw.pop("ntest", 86)
train = (root/"train.txt").read_text().split(); labeled = (root/lab).read_text().split()
val = (root/"val.txt").read_text().split()[:ntest]
classes = [ds.ClassInfo("lesion", 255)]
man = ds.Manifest(classes=classes, labeled=[(root/"images"/n, root/"masks"/n) for n in labeled],
                  unlabeled=[root/"images"/n for n in train if n not in set(labeled)], validation=[], axis=None)
cfg = TrainConfig(method=method, iterations=iters, overwrite=True,
                  **{"batch_size": 4, "freeze_encoder": True, "decoder_init": "pretrained", "val_every": 10**9,
                     "embedding_store": os.environ.get("STORE", "embedding_store"), "save_every": 10**9, **kw})
t0 = time.time()
res = run_training(man, out, cfg, progress=False)
ttrain = time.time() - t0
pred = Predictor.from_checkpoint(res.model, device=cfg.device, precision=cfg.precision)
m = pred.model
scores = {"unprompted": [], "self_prompt": []}
pixels = {k: [0, 0] for k in scores}  # predicted, reference (all val images together)
for n in val:
    img = io.load_image(root/"images"/n); gt = io.to_slices(io.load_label(root/"masks"/n, img, [255]))[0][0] > 0
    sl = io.normalize(io.to_slices(img)[0])
    x = torch.from_numpy(io.resize(sl[0], 256, False)[None, None].astype(np.float32)).to(pred.device)
    with torch.no_grad(), pred._autocast():
        emb = m.encode(x)
        for mode in scores:
            p = m.predict_probs(x, self_prompt=mode == "self_prompt", embeddings=emb).float()
            p = torch.nn.functional.interpolate(p.cpu(), size=gt.shape, mode="bilinear", align_corners=False)
            pm = p.argmax(1)[0].numpy() == 1
            d = 1.0 if pm.sum() + gt.sum() == 0 else 2 * (pm & gt).sum() / (pm.sum() + gt.sum())
            scores[mode].append(float(d))
            pixels[mode][0] += int(pm.sum()); pixels[mode][1] += int(gt.sum())
summary = {"method": method, "iters": iters, "config": kw, "train_s": round(ttrain), "iteration": res.iteration,
           "device": str(pred.device),
           **{k: round(100 * float(np.mean(v)), 2) for k, v in scores.items()},
           "empty_unprompted": None, "pixels_pred_ref": pixels}
print(json.dumps(summary))
(out/"scores.json").write_text(json.dumps({"summary": summary, "cases": scores}))
