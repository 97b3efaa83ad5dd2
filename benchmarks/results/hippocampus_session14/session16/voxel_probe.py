"""Probe: does keeping the largest 3D connected component per class help Hippocampus predictions?
Predicts the 8 val cases (unprompted, as the benchmark scored them) with each saved model and scores
DSC per class raw and after keeping each class's largest 26-connected 3D component.
usage: voxel_probe.py OUT.json RUN_RESULT_JSON ...  (a benchmark unit's results/<key>.json; session 16 ran
the four --tune-neck units of ../../neck_session15 with an earlier copy that lacked the voxel split)"""
import json, sys, time
from pathlib import Path
import numpy as np, SimpleITK as sitk, torch
from scipy import ndimage
from CPCSAMLib import io
from CPCSAMLib.infer import Predictor
from CPCSAMLib.training.embeddings import EmbeddingStore
torch.set_num_threads(1)
H = Path("../shared/data/hippocampus")
VALUES = [1, 2]
def dsc(a, b):
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else 2.0 * np.logical_and(a, b).sum() / s
def largest(mask):
    lab, n = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    if n <= 1:
        return mask
    sizes = ndimage.sum(mask, lab, range(1, n + 1))
    return lab == (1 + int(np.argmax(sizes)))
out = {}
for rj in sys.argv[2:]:
    r = json.loads(Path(rj).read_text())
    pred = Predictor.from_checkpoint(r["model"], "cpu")
    pred.embedding_store = EmbeddingStore(Path("/work/scratch/s13/hip_cpu/embedding_store"), pred.model, pred.amp_dtype)
    names = [n.strip() for n in (H / "val.txt").read_text().split() if n.strip()][:r["test_cases"]]
    rows = []
    t = time.time()
    for n in names:
        img = io.load_image(H / "images" / n)
        ref = io.label_to_index(sitk.GetArrayFromImage(io.load_label(H / "labels" / n, img, VALUES)), VALUES)
        p = io.label_to_index(sitk.GetArrayFromImage(pred.predict_image(img, axis=r["axis"], self_prompt=False)), VALUES)
        for c in (1, 2):
            pm, gm = p == c, ref == c
            lm = largest(pm)
            ax = tuple(i for i in range(3) if i != 2 - r["axis"])  # array axes other than the slicing axis
            gslice = gm.any(axis=ax)
            ppslice = pm.sum(axis=ax)
            rows.append({"case": n, "class": c, "raw": dsc(pm, gm), "lcc": dsc(lm, gm), "pred": int(pm.sum()),
                         "pred_lcc": int(lm.sum()), "gt": int(gm.sum()),
                         "pred_off_slices": int(ppslice[~gslice].sum()), "fp": int((pm & ~gm).sum()),
                         "fn": int((~pm & gm).sum())})
    key = f"{r['method']}_s{r['seed']}"
    out[key] = rows
    print(key, "raw", round(100 * np.mean([x["raw"] for x in rows]), 2), "lcc", round(100 * np.mean([x["lcc"] for x in rows]), 2),
          "voxels", sum(x["pred"] for x in rows), sum(x["pred_lcc"] for x in rows), sum(x["gt"] for x in rows),
          "off-slice", sum(x["pred_off_slices"] for x in rows), "fp", sum(x["fp"] for x in rows),
          "fn", sum(x["fn"] for x in rows), f"{time.time() - t:.0f}s", flush=True)
    Path(sys.argv[1]).write_text(json.dumps(out))
