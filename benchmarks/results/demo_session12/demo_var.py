"""Demo training with variations; scores the last model on the demo's 43 held-apart images and the other 43 val.
usage: demo_var.py OUT unl=demo|all key=value ...
env: DEMO_DATA, BUSI, AUG_ORDER, AUG_MODE=strong, PRED_DEVICE (scoring device, default cpu), UNPROMPTED=1 (also score unprompted),
     MIRROR=1 (also score self-prompted with mirror=True, session 16)"""
import dataclasses, json, sys, time
from pathlib import Path
import numpy as np, torch
from CPCSAMLib import dataset as ds, io
from CPCSAMLib.config import DEMO_DEFAULTS, TrainConfig
from CPCSAMLib.demo import DEMO_DIR
import os
DEMO_DIR = Path(os.environ.get("DEMO_DATA", DEMO_DIR))
from CPCSAMLib.training import run_training
from CPCSAMLib.infer import Predictor
from CPCSAMLib.metrics import dice
BUSI = Path(os.environ.get("BUSI", "../shared/data/busi"))
if os.environ.get("AUG_ORDER"):
    _order = int(os.environ["AUG_ORDER"])
    def _augment(image, label, rng):
        from scipy import ndimage
        angle = float(rng.uniform(-20.0, 20.0)); flip_h = bool(rng.random() < 0.5); flip_v = bool(rng.random() < 0.5)
        img = ndimage.rotate(image, angle, reshape=False, order=_order, mode="constant", cval=0.0)
        img = np.clip(img, float(image.min()), float(image.max()))
        lab = None if label is None else ndimage.rotate(label, angle, reshape=False, order=0, mode="constant", cval=0)
        if flip_h:
            img = img[:, ::-1]; lab = lab[:, ::-1] if lab is not None else None
        if flip_v:
            img = img[::-1, :]; lab = lab[::-1, :] if lab is not None else None
        img = np.ascontiguousarray(img, dtype=image.dtype)
        if lab is not None:
            lab = np.ascontiguousarray(lab, dtype=label.dtype)
        return img, lab
    ds.augment = _augment
    print("augment order", _order, flush=True)
if os.environ.get("AUG_MODE") == "strong":
    def _augment_strong(image, label, rng):
        """rotation U(-20, 20) and scale U(0.8, 1.25) in one bilinear resampling, flips, gamma, contrast."""
        from scipy import ndimage
        angle = np.deg2rad(float(rng.uniform(-20.0, 20.0))); scale = float(np.exp(rng.uniform(np.log(0.8), np.log(1.25))))
        flip_h = bool(rng.random() < 0.5); flip_v = bool(rng.random() < 0.5)
        gamma = float(np.exp(rng.uniform(-0.3, 0.3))) if rng.random() < 0.5 else 1.0
        gain, bias = (float(rng.uniform(0.85, 1.15)), float(rng.uniform(-0.05, 0.05))) if rng.random() < 0.5 else (1.0, 0.0)
        c, s_ = np.cos(angle), np.sin(angle)
        m = np.array([[c, -s_], [s_, c]]) / scale  # output -> input coordinates
        centre = (np.array(image.shape) - 1) / 2.0
        offset = centre - m @ centre
        img = ndimage.affine_transform(image, m, offset, order=1, mode="constant", cval=0.0)
        lab = None if label is None else ndimage.affine_transform(label, m, offset, order=0, mode="constant", cval=0)
        if flip_h:
            img = img[:, ::-1]; lab = lab[:, ::-1] if lab is not None else None
        if flip_v:
            img = img[::-1, :]; lab = lab[::-1, :] if lab is not None else None
        img = np.clip(img, 0.0, 1.0) ** gamma * gain + bias
        img = np.clip(img, 0.0, 1.0)
        img = np.ascontiguousarray(img, dtype=image.dtype)
        if lab is not None:
            lab = np.ascontiguousarray(lab, dtype=label.dtype)
        return img, lab
    ds.augment = _augment_strong
    print("augment strong", flush=True)
out = Path(sys.argv[1]); unl = sys.argv[2].split("=")[1].split(",")[0]
over = {k: json.loads(v) for k, v in (kv.split("=", 1) for kv in sys.argv[3:])}
cfg = dict(DEMO_DEFAULTS); cfg.update(over); cfg = TrainConfig(**cfg)
man = ds.load_manifest(DEMO_DIR / "manifest.json")
held = list(man.validation)
if unl == "all":
    lab = {Path(p).name for p, _ in man.labeled}
    names = [n.strip() for n in (BUSI / "train.txt").read_text().split() if n.strip() and n.strip() not in lab]
    unlabeled = [BUSI / "images" / n for n in names]
else:
    unlabeled = list(man.unlabeled)
labeled = list(man.labeled)
if "fullres" in sys.argv[2]:
    labeled = [(BUSI / "images" / Path(p).name, BUSI / "masks" / Path(p).name) for p, _ in man.labeled]
tm = dataclasses.replace(man, labeled=labeled, unlabeled=unlabeled, validation=[])
t = time.time()
res = run_training(tm, out / "model", cfg, progress=False)
ttrain = time.time() - t
torch.set_num_threads(cfg.num_threads or 2)
pred = Predictor.from_checkpoint(res.model, os.environ.get("PRED_DEVICE", "cpu"))
def score(pairs, self_prompt=True, mirror=False):
    s = []
    for ip, lp in pairs:
        img = io.load_image(ip)
        p = io.to_slices(pred.predict_image(img, self_prompt=self_prompt, mirror=mirror))[0][0] > 0
        g = io.to_slices(io.load_label(lp, img, man.label_values))[0][0] > 0
        s.append(dice(p, g))
    return s
demo_names = {Path(p).name for p, _ in held}
vnames = [n.strip() for n in (BUSI / "val.txt").read_text().split() if n.strip()]
other = [(BUSI / "images" / n, BUSI / "masks" / n) for n in vnames if n not in demo_names]
s1 = score(held); s2 = score(other)
unprompted = {}
if os.environ.get("UNPROMPTED"):  # also score the unprompted ensemble
    u1, u2 = score(held, False), score(other, False)
    unprompted = {"demo43_u": round(float(np.mean(u1)), 4), "other43_u": round(float(np.mean(u2)), 4)}
mirrored = {}
if os.environ.get("MIRROR"):  # also score self-prompted with the mirrored pass
    m1, m2 = score(held, True, True), score(other, True, True)
    mirrored = {"demo43_m": round(float(np.mean(m1)), 4), "other43_m": round(float(np.mean(m2)), 4)}
r = {**unprompted, **mirrored, "over": over, "unl": unl, "n_unl": len(unlabeled), "its": res.iteration, "train_s": round(ttrain),
     "demo43": round(float(np.mean(s1)), 4), "other43": round(float(np.mean(s2)), 4)}
(out / "result.json").write_text(json.dumps({**r, "demo_scores": s1, "other_scores": s2,
                                                    **({"demo_scores_u": u1, "other_scores_u": u2} if unprompted else {}),
                                                    **({"demo_scores_m": m1, "other_scores_m": m2} if mirrored else {})}))
print("RESULT", json.dumps(r), flush=True)
