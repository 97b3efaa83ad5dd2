"""3D DSC per class of a Hippocampus model on val volumes: raw prediction vs keeping the largest 3D
connected component per class (nnU-Net's post-processing)."""
import sys, os, json, warnings, numpy as np, torch, SimpleITK as sitk
warnings.filterwarnings("ignore")
from pathlib import Path
from scipy import ndimage
from CPCSAMLib.infer import Predictor
from CPCSAMLib.metrics import dice as dsc
from CPCSAMLib.training.embeddings import EmbeddingStore
model, data, n, store, out = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
torch.set_num_threads(int(os.environ.get("THREADS", "2")))
p = Predictor.from_checkpoint(model, "cpu")
p.embedding_store = EmbeddingStore(Path(store), p.model, p.amp_dtype)
def largest(mask, conn):
    lab, k = ndimage.label(mask, structure=ndimage.generate_binary_structure(3, conn))
    if k <= 1:
        return mask
    sizes = np.bincount(lab.ravel())[1:]
    return lab == (1 + sizes.argmax())
rows = []
for name in (data / "val.txt").read_text().split()[:n]:
    img = sitk.ReadImage(str(data / "images" / name))
    ref = sitk.GetArrayFromImage(sitk.ReadImage(str(data / "labels" / name)))
    for mode in ("unprompted", "self_prompt"):
        pred = sitk.GetArrayFromImage(p.predict_image(img, self_prompt=mode == "self_prompt"))
        fg = largest(pred > 0, 3)
        for c in p.label_values:
            r, q = ref == c, pred == c
            q26 = largest(q, 3)
            rows.append(dict(case=name, mode=mode, cls=c, raw=dsc(q, r), lcc26=dsc(q26, r), lcc6=dsc(largest(q, 1), r),
                             fglcc=dsc(q & fg, r), pred=int(q.sum()), pred_lcc=int(q26.sum()), ref=int(r.sum())))
json.dump(rows, open(out, "w"))
for mode in ("unprompted", "self_prompt"):
    rr = [r for r in rows if r["mode"] == mode]
    print(mode, {k: round(100 * float(np.mean([r[k] for r in rr])), 2) for k in ("raw", "lcc26", "lcc6", "fglcc")},
          "pred/ref", round(sum(r["pred"] for r in rr) / sum(r["ref"] for r in rr), 2),
          "lcc pred/ref", round(sum(r["pred_lcc"] for r in rr) / sum(r["ref"] for r in rr), 2))
