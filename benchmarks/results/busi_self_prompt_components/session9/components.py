"""Per-component analysis of self-prompted inference on BUSI val: which component would be right."""
import sys, json, os, warnings, numpy as np, torch
warnings.filterwarnings("ignore")
from pathlib import Path
from scipy import ndimage
from CPCSAMLib import io
from CPCSAMLib.infer import Predictor
from CPCSAMLib.metrics import dice
from CPCSAMLib.prompts import ComponentBoxes, component_box

model_path, data, step, out = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
names = [l.strip() for l in (data / "val.txt").read_text().split() if l.strip()][::step]
torch.set_num_threads(int(os.environ.get("THREADS", "2")))
p = Predictor.from_checkpoint(model_path)
m = p.model
rows = []
masks = {}
E8 = np.ones((3, 3), bool)
for name in names:
    img = io.load_image(str(data / "images" / name))
    sl = io.normalize(io.to_slices(img)[0], p.percentiles)
    gt = io.to_slices(io.load_label(str(data / "masks" / name), img, [255]))[0][0] > 0
    x = np.stack([io.resize(s, p.input_size, is_label=False) for s in sl]).astype(np.float32)
    with torch.no_grad(), p._autocast():
        emb = p._encode_batch(x)
        u1, u2 = m.decode(1, emb).float(), m.decode(2, emb).float()
        probs = 0.5 * (u1.softmax(1) + u2.softmax(1))
        lab = probs.argmax(1)[0].numpy()
        comp, n = ndimage.label(lab == 1, structure=E8)
        sizes = np.bincount(comp.ravel(), minlength=n + 1)[1:]
        order = np.argsort(-sizes)[:6]
        comps = []
        pl = probs[0, 1].numpy()
        for k in order:
            mask = comp == k + 1
            box = component_box(mask, p.box_margin)
            cb = ComponentBoxes(torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long), torch.from_numpy(box[None]))
            pr = 0.5 * (m.decode_component_boxes(1, emb, cb, u1).softmax(1) + m.decode_component_boxes(2, emb, cb, u2).softmax(1))
            pr = torch.nn.functional.interpolate(pr.float(), size=gt.shape, mode="bilinear", align_corners=False)
            pm = pr.argmax(1)[0].numpy() > 0
            # prompted mask inside the box only, for agreement with the unprompted component
            pr256 = pr  # not used
            up = torch.nn.functional.interpolate(torch.from_numpy(mask[None, None].astype(np.float32)), size=gt.shape, mode="nearest")[0, 0].numpy() > 0
            masks[f"{name}|{len(comps)}"] = np.packbits(pm)
            comps.append({"size": int(sizes[k]), "mean_p": float(pl[mask].mean()), "max_p": float(pl[mask].max()),
                          "sum_p": float(pl[mask].sum()), "dice_prompted": dice(pm, gt), "dice_unprompted_comp": dice(up, gt),
                          "agree": dice(pm, up), "prompted_px": int(pm.sum())})
    upred = torch.nn.functional.interpolate(probs.float(), size=gt.shape, mode="bilinear", align_corners=False).argmax(1)[0].numpy() > 0
    masks[f"{name}|gt"] = np.packbits(gt)
    masks[f"{name}|u"] = np.packbits(upred)
    rows.append({"name": name, "shape": list(gt.shape), "gt_frac": float(gt.mean()), "dice_u": dice(upred, gt), "comps": comps})
json.dump(rows, open(out, "w"))
np.savez_compressed(out.replace(".json", ".npz"), **masks)
def pick(key):
    return 100 * np.mean([max(r["comps"], key=lambda c: c[key])["dice_prompted"] if r["comps"] else 0 for r in rows])
print(json.dumps({"model": model_path, "n": len(rows), "U": 100 * np.mean([r["dice_u"] for r in rows]),
                  "largest": pick("size"), "mean_p": pick("mean_p"), "max_p": pick("max_p"), "sum_p": pick("sum_p"),
                  "agree": pick("agree"),
                  "oracle": 100 * np.mean([max([c["dice_prompted"] for c in r["comps"]] or [0]) for r in rows]),
                  "ncomp_mean": float(np.mean([len(r["comps"]) for r in rows]))}))
