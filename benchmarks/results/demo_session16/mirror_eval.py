"""Scores saved demo models on held-apart 43 + other 43 BUSI val, self-prompted, with and without mirror."""
import json, sys
from pathlib import Path
import numpy as np, torch
from CPCSAMLib import dataset as ds, io
from CPCSAMLib.demo import DEMO_DIR
from CPCSAMLib.infer import Predictor
from CPCSAMLib.metrics import dice
torch.set_num_threads(1)
BUSI = Path("../shared/data/busi")
man = ds.load_manifest(DEMO_DIR / "manifest.json")
held = list(man.validation)
demo_names = {Path(p).name for p, _ in held}
vnames = [n.strip() for n in (BUSI / "val.txt").read_text().split() if n.strip()]
other = [(BUSI / "images" / n, BUSI / "masks" / n) for n in vnames if n not in demo_names]
for run in sys.argv[1:]:
    pred = Predictor.from_checkpoint(str(Path(run) / "model" / "model_last.pt"), "cpu")
    out = {}
    for mirror in (True,):
        s = []
        for ip, lp in held + other:
            img = io.load_image(ip)
            p = io.to_slices(pred.predict_image(img, mirror=mirror))[0][0] > 0
            g = io.to_slices(io.load_label(lp, img, man.label_values))[0][0] > 0
            s.append(dice(p, g))
        out["mirror" if mirror else "plain"] = s
        print(run, mirror, round(np.mean(s[:43]), 4), round(np.mean(s[43:]), 4), flush=True)
    Path(run, "mirror_eval.json").write_text(json.dumps(out))  # plain scores: result.json
