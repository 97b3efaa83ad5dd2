"""Scores finished benchmark units again in one inference mode with the current code (decoder only:
test embeddings come from the benchmark's store). Usage: rescore.py BENCH_OUTPUT OUT MODE [THREADS];
writes OUT/<unit>__<MODE>_rescored.json (summary + rows)."""
import json, sys, warnings
from pathlib import Path
warnings.filterwarnings("ignore")
import torch
from benchmarks import data as bd
from benchmarks.runs import score_test_list, summary
from CPCSAMLib.infer import Predictor
from CPCSAMLib.training.embeddings import EmbeddingStore

bench, out, mode = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
torch.set_num_threads(int(sys.argv[4]) if len(sys.argv) > 4 else 1)
out.mkdir(exist_ok=True, parents=True)
run = json.loads((bench / "results" / "run.json").read_text())
test = (Path(run["data"]) / run["test_list"]).read_text().split()[:run["test_cases"]]
plan = bd.Plan(bd.LAYOUTS[run["dataset"]], Path(run["data"]), "train.txt", [], {}, {}, {}, {}, None,
               run["test_list"], test, run["test_total"], None, None, bench)
for path in sorted((bench / "results").glob("*__*__seed?.json")):
    dst = out / f"{path.stem}__{mode}_rescored.json"
    if dst.exists():
        continue
    res = json.loads(path.read_text())
    p = Predictor.from_checkpoint(res["model"], "cpu")
    p.embedding_store = EmbeddingStore(bench / "embedding_store", p.model, p.amp_dtype)
    rows, _ = score_test_list(p, plan, mode)
    s = summary(rows)
    dst.write_text(json.dumps({"key": path.stem, "mode": mode, "metrics": s, "rows": rows,
                               "encoder_calls": p.encoder_calls}))
    print(path.stem, mode, "DSC", round(s["dice"], 2), {k: round(v["dice"], 2) for k, v in s["per_class"].items()},
          "encoder calls", p.encoder_calls, flush=True)
