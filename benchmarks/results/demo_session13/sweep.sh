#!/bin/bash
# The demo setting on one GPU: every line of JOBS at once (one process each, demo_session12/demo_var.py,
# fixed iterations, scored on CUDA self-prompted and unprompted on the 43 held-apart + 43 other val images).
# Usage: sweep.sh JOBS DEADLINE_S   env: BUSI (folder with val.txt, images/, masks/ of the other 43), OUT
# JOBS lines: NAME key=value ...   (demo_var.py overrides; unl=demo always)
# Runs still going at DEADLINE_S seconds are killed (rc 137 in results.jsonl).
cd "$(dirname "$0")/../../.."   # the repository root
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} OMP_WAIT_POLICY=PASSIVE PYTHONUNBUFFERED=1 PRED_DEVICE=${DEV:-cuda} UNPROMPTED=1 OMP_NUM_THREADS=1
runs=${RUNS:-/tmp/demo_sweep_runs}; mkdir -p $runs "$OUT"
{ date -u; nproc; nvidia-smi -L; python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"; } > "$OUT/env.txt" 2>&1
pack() { tar czf "$OUT/logs.tmp.tar.gz" -C $runs --exclude='*.pt' . 2>/dev/null && mv "$OUT/logs.tmp.tar.gz" "$OUT/logs.tar.gz"; }
( while sleep 30; do pack; done ) & packer=$!
pids=()
while read -r name extra; do
  [ -z "$name" ] || [[ $name == \#* ]] && continue
  ( t0=$(date +%s)
    timeout -s KILL $2 python3 benchmarks/results/demo_session12/demo_var.py $runs/$name unl=demo device=\"${DEV:-cuda}\" num_threads=1 max_minutes=null $extra > $runs/$name.log 2>&1
    rc=$?
    python3 - $runs/$name $name $rc $(( $(date +%s) - t0 )) >> "$OUT/results.jsonl" <<'PY'
import json, sys
from pathlib import Path
f, name, rc, wall = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
row = {"name": name, "rc": rc, "wall_s": wall}
if (f / "result.json").is_file():
    row.update(json.loads((f / "result.json").read_text()))
print(json.dumps(row), flush=True)
PY
  ) &
  pids+=($!)
done < "$1"
for p in "${pids[@]}"; do wait $p; done
kill $packer; pack
echo "all done"; cut -c1-300 "$OUT/results.jsonl"
