"""BUSI val DSC (unprompted, self-prompted) of the checkpoints a run saved along the way (snapshots
of model_last.pt, then model_last.pt), decoder only with cached val embeddings.
Usage: BUSI=... VAL_EMB=val_emb.pt score_snaps.py RUN_DIR...; writes RUN_DIR/val_curve.json."""
import warnings, sys, json, os; warnings.filterwarnings("ignore")
import numpy as np, torch
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "busi_self_prompt_components"))
from product import load_val, score_model  # noqa: E402

torch.set_num_threads(int(os.environ.get("THREADS", "1")))
data = load_val()
for run in map(Path, sys.argv[1:]):
    start = json.loads((run / "events.jsonl").open().readline())["time"]
    files = sorted((p for p in (run / "snapshots").glob("*.pt") if p.stat().st_mtime > start), key=lambda p: p.stat().st_mtime)
    files.append(run / "model_last.pt")
    curve = []
    for f in files:
        it = int(torch.load(f, map_location="cpu", weights_only=False)["iteration"])
        if curve and curve[-1]["iteration"] == it:
            continue
        sc = score_model(f, *data)
        row = {"iteration": it, **{k: round(100 * float(np.mean(v)), 2) for k, v in sc.items()}, "cases": sc}
        curve.append(row)
        print(run.name, it, row["unprompted"], row["self_prompt"], flush=True)
    (run / "val_curve.json").write_text(json.dumps(curve))
