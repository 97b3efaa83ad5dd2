#!/bin/bash
# BUSI labeled_10 on one GPU: all runs of jobs.txt at the same time (one process each), scored on val
# by exp.py (unprompted and self-prompted). Usage: run.sh JOBS_FILE
# env: BUSI (BUSI folder), STORE (embedding store), OUT (results: results.jsonl, logs.tar.gz, env.txt)
# JOBS_FILE lines: NAME METHOD ITERS [extra exp.py k=v ...]
cd "$(dirname "$0")/../../.."   # the repository root
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} OMP_WAIT_POLICY=PASSIVE PYTHONUNBUFFERED=1
here=benchmarks/results/busi_l10_gpu
runs=${RUNS:-/tmp/busi_gpu_runs}; mkdir -p $runs "$OUT"
{ date -u; nvidia-smi -L; python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"; } > "$OUT/env.txt" 2>&1
pack() { tar czf "$OUT/logs.tmp.tar.gz" -C $runs --exclude='*.pt' . 2>/dev/null && mv "$OUT/logs.tmp.tar.gz" "$OUT/logs.tar.gz"; }
( while sleep 20; do pack; done ) & packer=$!
pids=()
while read -r name method iters extra; do
  [ -z "$name" ] || [[ $name == \#* ]] && continue
  ( t0=$(date +%s)
    python3 benchmarks/results/busi_l10_box_150it/exp.py $runs/$name $method $iters $extra > $runs/$name.log 2>&1
    rc=$?
    python3 $here/collect.py $runs/$name $name $rc $(( $(date +%s) - t0 )) >> "$OUT/results.jsonl" ) &
  pids+=($!)
done < "$1"
for p in "${pids[@]}"; do wait $p; done
kill $packer; pack
echo "all done"; cat "$OUT/results.jsonl" | cut -c1-400
