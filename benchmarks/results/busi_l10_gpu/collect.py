"""One line of results.jsonl for a finished run of run.sh: its summary, per-case scores and history."""
import json, sys
from pathlib import Path

folder, name, rc, wall = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
row = {"name": name, "rc": rc, "wall_s": wall}
if (folder / "scores.json").is_file():
    row.update(json.loads((folder / "scores.json").read_text()))
print(json.dumps(row), flush=True)
