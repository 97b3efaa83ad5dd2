"""Scratch: BUSI val DSC (unprompted, self-prompted) of the checkpoints a run saved along the way
(snapshots of model_last.pt), decoder only with cached val embeddings. Usage: BUSI=... VAL_EMB=val_emb.pt
score_snaps.py RUN_DIR...; writes RUN_DIR/val_curve.json."""
import warnings, sys, json, os; warnings.filterwarnings("ignore")
import numpy as np, torch
from pathlib import Path
from CPCSAMLib import io
from CPCSAMLib.infer import Predictor
torch.set_num_threads(int(os.environ.get("THREADS", "1")))
root = Path(os.environ.get("BUSI", "../shared/data/busi")); val = (root / "val.txt").read_text().split()
E = torch.load(os.environ["VAL_EMB"])  # {name: embedding [1, 256, 64, 64]} of val.txt, as exp.py encodes them
gts = {n: io.to_slices(io.load_label(root / "masks" / n, io.load_image(root / "images" / n), [255]))[0][0] > 0 for n in val}
for run in map(Path, sys.argv[1:]):
    start = json.loads((run / "events.jsonl").open().readline())["time"]
    files = sorted((p for p in (run / "snapshots").glob("*.pt") if p.stat().st_mtime > start), key=lambda p: p.stat().st_mtime)
    files.append(run / "model_last.pt")
    curve = []
    for f in files:
        ck = torch.load(f, map_location="cpu", weights_only=False)
        it = int(ck["iteration"])
        if curve and curve[-1]["iteration"] == it:
            continue
        m = Predictor.from_checkpoint(f).model.eval()
        sc = {"unprompted": [], "self_prompt": []}
        for n in val:
            gt = gts[n]
            with torch.no_grad():
                for mode in sc:
                    p = m.predict_probs(None, self_prompt=mode == "self_prompt", embeddings=E[n]).float()
                    p = torch.nn.functional.interpolate(p, size=gt.shape, mode="bilinear", align_corners=False)
                    pm = p.argmax(1)[0].numpy() == 1
                    sc[mode].append(float(1.0 if pm.sum() + gt.sum() == 0 else 2 * (pm & gt).sum() / (pm.sum() + gt.sum())))
        row = {"iteration": it, **{k: round(100 * float(np.mean(v)), 2) for k, v in sc.items()}, "cases": sc}
        curve.append(row)
        print(run.name, it, row["unprompted"], row["self_prompt"], flush=True)
    (run / "val_curve.json").write_text(json.dumps(curve))
