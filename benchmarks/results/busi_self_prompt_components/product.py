"""The product's inference (``DualBranchSAM.predict_probs``, unprompted and self-prompted) on BUSI
val from saved models, decoder only with cached val embeddings (made by ``variants.py``).
Usage: BUSI=... VAL_EMB=val_emb.pt product.py MODEL...; writes product.json (per-case DSC)."""
import warnings, sys, json, os; warnings.filterwarnings("ignore")
import numpy as np, torch
from pathlib import Path
from CPCSAMLib import io
from CPCSAMLib.infer import Predictor


def load_val():
    """Val names, their cached embeddings and reference masks (original resolution)."""
    root = Path(os.environ.get("BUSI", "../shared/data/busi"))
    val = (root / "val.txt").read_text().split()
    emb = torch.load(os.environ["VAL_EMB"])  # {name: embedding [1, 256, 64, 64]}
    gts = {n: io.to_slices(io.load_label(root / "masks" / n, io.load_image(root / "images" / n), [255]))[0][0] > 0
           for n in val}
    return val, emb, gts


def score_model(path, val, emb, gts) -> dict:
    """Per-case DSC of one checkpoint, unprompted and self-prompted."""
    m = Predictor.from_checkpoint(path).model.eval()
    sc = {"unprompted": [], "self_prompt": []}
    for n in val:
        gt = gts[n]
        with torch.no_grad():
            for mode in sc:
                p = m.predict_probs(None, self_prompt=mode == "self_prompt", embeddings=emb[n]).float()
                p = torch.nn.functional.interpolate(p, size=gt.shape, mode="bilinear", align_corners=False)
                pm = p.argmax(1)[0].numpy() == 1
                sc[mode].append(float(1.0 if pm.sum() + gt.sum() == 0 else 2 * (pm & gt).sum() / (pm.sum() + gt.sum())))
    return sc


if __name__ == "__main__":
    torch.set_num_threads(int(os.environ.get("THREADS", "1")))
    data = load_val()
    out = {}
    for path in sys.argv[1:]:
        out[path] = sc = score_model(path, *data)
        print(path, {k: (round(100 * np.mean(v), 2), int(sum(np.array(v) < 0.05))) for k, v in sc.items()}, flush=True)
    json.dump(out, open(sys.argv[0].replace(".py", ".json"), "w"))
