"""Self-prompted Dice with/without hflip TTA of the unprompted stage, on the demo's 43 images."""
import sys, torch, numpy as np
from CPCSAMLib.infer import Predictor
from CPCSAMLib import io, dataset as ds
from CPCSAMLib.demo import DEMO_DIR
from CPCSAMLib.metrics import dice
from CPCSAMLib.prompts import component_boxes_from_label_maps
torch.set_num_threads(1)
p = Predictor.from_checkpoint(sys.argv[1], "cpu")
m = p.model
man = ds.load_manifest(DEMO_DIR / "manifest.json")
res = {k: [] for k in ("unp", "sp", "unp_tta", "sp_tta")}
for ip, lp in man.validation:
    img = io.load_image(ip)
    gt = io.to_slices(io.load_label(lp, img, man.label_values))[0][0] > 0
    sl = io.normalize(io.to_slices(img)[0])
    x = torch.from_numpy(io.resize(sl[0], 256, False)[None, None].astype(np.float32))
    with torch.no_grad(), p._autocast():
        emb = m.encode(x); embf = m.encode(x.flip(-1))
        u1, u2 = m.decode(1, emb).float(), m.decode(2, emb).float()
        probs = 0.5 * (u1.softmax(1) + u2.softmax(1))
        f1, f2 = m.decode(1, embf).float().flip(-1), m.decode(2, embf).float().flip(-1)
        probs_t = 0.5 * probs + 0.25 * (f1.softmax(1) + f2.softmax(1))
        out = {}
        for k, pr in (("", probs), ("_tta", probs_t)):
            boxes = component_boxes_from_label_maps(pr.argmax(1), m.num_classes, 0.1)
            sp = 0.5 * (m.decode_component_boxes(1, emb, boxes, u1).softmax(1) + m.decode_component_boxes(2, emb, boxes, u2).softmax(1))
            out["unp" + k], out["sp" + k] = pr, sp
    for k, pr in out.items():
        pm = torch.nn.functional.interpolate(pr, size=gt.shape, mode="bilinear", align_corners=False).argmax(1)[0].numpy() == 1
        res[k].append(dice(pm, gt))
print(sys.argv[1], {k: round(float(np.mean(v)), 4) for k, v in res.items()})
