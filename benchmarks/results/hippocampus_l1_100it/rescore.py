"""Re-scores finished benchmark units in the unprompted mode with the fixed scoring (the running
benchmark process predates the fix: its "unprompted" rows were self-prompted). Writes
<out>/<key>__unprompted_fixed.json (summary + rows); reads test embeddings from the benchmark's store."""
import json, sys, warnings
from pathlib import Path
warnings.filterwarnings("ignore")
import torch
from benchmarks import data as bd
from benchmarks.runs import score_test_list, summary
from CPCSAMLib.infer import Predictor
from CPCSAMLib.training.embeddings import EmbeddingStore

torch.set_num_threads(int(sys.argv[3]) if len(sys.argv) > 3 else 1)
bench, out = Path(sys.argv[1]), Path(sys.argv[2])
out.mkdir(exist_ok=True, parents=True)
run = json.loads((bench / "results" / "run.json").read_text())
test = (Path(run["data"]) / run["test_list"]).read_text().split()[:run["test_cases"]]
plan = bd.Plan(bd.LAYOUTS[run["dataset"]], Path(run["data"]), "train.txt", [], {}, {}, {}, {}, None,
               run["test_list"], test, run["test_total"], None, None, bench)
for path in sorted((bench / "results").glob("*__*__seed?.json")):
    dst = out / f"{path.stem}__unprompted_fixed.json"
    if dst.exists():
        continue
    res = json.loads(path.read_text())
    p = Predictor.from_checkpoint(res["model"], "cpu")
    p.embedding_store = EmbeddingStore(bench / "embedding_store", p.model, p.amp_dtype)
    rows, spc = score_test_list(p, plan, "unprompted")
    s = summary(rows)
    dst.write_text(json.dumps({"key": path.stem, "metrics": s, "rows": rows, "encoder_calls": p.encoder_calls}))
    print(path.stem, "unprompted DSC", round(s["dice"], 2), {k: round(v["dice"], 2) for k, v in s["per_class"].items()},
          "encoder calls", p.encoder_calls, flush=True)
