"""Where a Hippocampus model's extra voxels lie: slices where the reference has the class (fatter
or thinner masks) vs slices where it has none (false-positive slices), unprompted inference."""
import sys, os, warnings, torch, SimpleITK as sitk
warnings.filterwarnings("ignore")
from pathlib import Path
from CPCSAMLib import io
from CPCSAMLib.infer import Predictor
from CPCSAMLib.training.embeddings import EmbeddingStore
model, data, n = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
store = sys.argv[4] if len(sys.argv) > 4 else None
torch.set_num_threads(int(os.environ.get("THREADS", "2")))
p = Predictor.from_checkpoint(model, "cpu")
if store:
    p.embedding_store = EmbeddingStore(Path(store), p.model, p.amp_dtype)
axis = p.card.get("axis")
print("axis", axis, "classes", p.label_values)
tot = {}
for name in (data / "val.txt").read_text().split()[:n]:
    img = sitk.ReadImage(str(data / "images" / name))
    ref, used = io.to_slices(sitk.ReadImage(str(data / "labels" / name)), axis)  # the model's slices
    pred, _ = io.to_slices(p.predict_image(img, self_prompt=False), used)
    for c in p.label_values:
        r, q = ref == c, pred == c
        rs, qs = r.reshape(len(r), -1).sum(1), q.reshape(len(q), -1).sum(1)
        present = rs > 0
        t = tot.setdefault(c, dict(ref=0, pred_on_present=0, pred_on_absent=0, fp_slices=0, absent_slices=0,
                                   missed_slices=0, present_slices=0, tp=0))
        t["ref"] += int(rs.sum()); t["pred_on_present"] += int(qs[present].sum()); t["pred_on_absent"] += int(qs[~present].sum())
        t["fp_slices"] += int((qs[~present] > 0).sum()); t["absent_slices"] += int((~present).sum())
        t["missed_slices"] += int((qs[present] == 0).sum()); t["present_slices"] += int(present.sum())
        t["tp"] += int((r & q).sum())
for c, t in tot.items():
    print(c, t, "pred/ref on present slices %.2f" % (t["pred_on_present"] / t["ref"]),
          "absent-slice voxels / ref %.2f" % (t["pred_on_absent"] / t["ref"]))
