"""Mirrored inference on 3D volumes: a trained Hippocampus model on the first N val volumes, scored in
3D per class (DSC %, anterior and posterior averaged), unprompted and self-prompted, with and without
--mirror. The frozen-encoder test-slice store of the run is read if given (the unmirrored slices).
Usage (repository root): hippocampus_mirror.py MODEL DATA N [STORE]"""
import sys
import warnings
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

warnings.filterwarnings("ignore")
torch.set_num_threads(2)
from CPCSAMLib import io  # noqa: E402
from CPCSAMLib.infer import Predictor  # noqa: E402
from CPCSAMLib.training.embeddings import EmbeddingStore  # noqa: E402

model, data, n = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
p = Predictor.from_checkpoint(model, "cpu")
if len(sys.argv) > 4:
    p.embedding_store = EmbeddingStore(sys.argv[4], p.model, p.amp_dtype)
names = [l.strip() for l in open(data / "val.txt") if l.strip()][:n]
scores = {}
for name in names:
    image = io.load_image(data / "images" / name)
    ref = io.label_to_index(sitk.GetArrayFromImage(io.load_label(data / "labels" / name, image, p.label_values)),
                            p.label_values)
    for sp in (False, True):
        for mirror in (False, True):
            pred = io.label_to_index(sitk.GetArrayFromImage(p.predict_image(image, self_prompt=sp, mirror=mirror)),
                                     p.label_values)
            d = [2 * ((pred == c) & (ref == c)).sum() / max(1, (pred == c).sum() + (ref == c).sum()) for c in (1, 2)]
            scores.setdefault((sp, mirror), []).append(100 * np.mean(d))
    print(name, {f"{'self' if k[0] else 'unpr'}{'+mirror' if k[1] else ''}": round(v[-1], 2) for k, v in scores.items()},
          flush=True)
for (sp, mirror), v in scores.items():
    print(f"{'self-prompted' if sp else 'unprompted'}{' + mirror' if mirror else ''}: {np.mean(v):.2f}")
