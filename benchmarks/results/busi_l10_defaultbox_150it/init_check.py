import os, warnings, sys, numpy as np, torch; warnings.filterwarnings("ignore")
from CPCSAMLib.modeling.backbones import build_backbone
from CPCSAMLib.modeling.dual_sam import DualBranchSAM
from CPCSAMLib import io
from pathlib import Path
torch.set_flush_denormal(True); torch.set_num_threads(2)
root = Path(os.environ.get("BUSI", "../shared/data/busi"))
names = (root/"val.txt").read_text().split()[:16]

models = {k: DualBranchSAM(build_backbone(), 1, default_prompt=k).eval() for k in ("none", "box")}
def dice(a,b): return 1.0 if a.sum()+b.sum()==0 else 2*(a&b).sum()/(a.sum()+b.sum())
res = {}
for n in names:
    img = io.load_image(root/"images"/n); lab = io.load_label(root/"masks"/n, img, [255])
    x = io.resize(io.normalize(io.to_slices(img)[0][0]), 256, False)
    y = io.resize(io.to_slices(lab)[0][0].astype(np.uint8), 256, True) > 0
    with torch.no_grad():
        emb = models["none"].encode(torch.from_numpy(x)[None,None].float())
        for k, m in models.items():
            for sp in (False, True):
                p = m.predict_probs(None, self_prompt=sp, embeddings=emb)
                res.setdefault((k, sp), []).append(dice(p.argmax(1)[0].numpy()==1, y))
for k,v in res.items(): print(k, round(100*np.mean(v),2))
