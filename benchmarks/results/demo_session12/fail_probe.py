"""Why demo images fail: per held-apart image, unprompted/self-prompted Dice, pred/GT areas, max lesion prob inside GT."""
import sys, torch, numpy as np
from scipy import ndimage
from CPCSAMLib.infer import Predictor
from CPCSAMLib import io, dataset as ds
from CPCSAMLib.demo import DEMO_DIR
from CPCSAMLib.metrics import dice
from CPCSAMLib.prompts import component_boxes_from_label_maps
torch.set_num_threads(2)
p = Predictor.from_checkpoint(sys.argv[1], "cpu")
m = p.model
man = ds.load_manifest(DEMO_DIR / "manifest.json")
rows = []
for ip, lp in man.validation:
    img = io.load_image(ip)
    gt = io.to_slices(io.load_label(lp, img, man.label_values))[0][0] > 0
    sl = io.normalize(io.to_slices(img)[0])
    x = torch.from_numpy(io.resize(sl[0], 256, False)[None, None].astype(np.float32))
    with torch.no_grad(), p._autocast():
        emb = m.encode(x)
        u1, u2 = m.decode(1, emb).float(), m.decode(2, emb).float()
        probs = 0.5 * (u1.softmax(1) + u2.softmax(1))
        boxes = component_boxes_from_label_maps(probs.argmax(1), m.num_classes, 0.1)
        sp = 0.5 * (m.decode_component_boxes(1, emb, boxes, u1).softmax(1) + m.decode_component_boxes(2, emb, boxes, u2).softmax(1))
    up = torch.nn.functional.interpolate(probs, size=gt.shape, mode="bilinear", align_corners=False)[0, 1].numpy()
    spp = torch.nn.functional.interpolate(sp, size=gt.shape, mode="bilinear", align_corners=False)[0, 1].numpy()
    um, sm = up > 0.5, spp > 0.5
    lab, n = ndimage.label(um)
    hit = len(set(np.unique(lab[gt])) - {0})
    rows.append((ip.name[:18], dice(um, gt), dice(sm, gt), gt.mean(), um.mean(), n, hit, float(up[gt].max()), float(up[gt].mean()), float(up[~gt].max())))
print("name               dU    dSP   gtA   uA    ncomp hit maxPin meanPin maxPout")
for r in sorted(rows, key=lambda r: r[2]):
    print("%-18s %.3f %.3f %.3f %.3f %3d %3d %.3f %.3f %.3f" % r)
a = np.array([r[1:] for r in rows])
print("mean dU %.3f dSP %.3f" % (a[:, 0].mean(), a[:, 1].mean()))
