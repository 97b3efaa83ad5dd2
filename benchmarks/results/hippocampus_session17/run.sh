#!/bin/bash
# Hippocampus on one GPU: one benchmark process per (arm, seed), all at once, one shared embedding
# store; 6 unlabeled volumes of train.txt, 30 val volumes scored in 3D, unprompted inference.
# Usage (repository root): HIP=DATA OUT=DIR [ITERS=400] [LIMIT=470] [SEEDS="0 1 2"] [TESTS=30] run.sh ARMS
# ARMS lines: NAME LABELED_LIST METHOD [extra benchmark/training flags; they come last, so e.g.
# --unlabeled-limit 24 overrides the 6 above]
cd "$(dirname "$0")/../../.."   # the repository root
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} OMP_WAIT_POLICY=PASSIVE PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
runs=${RUNS:-/tmp/hip17_runs}; store=${STORE:-/tmp/hip17_store}; mkdir -p "$runs" "$store" "$OUT"
{ date -u; nvidia-smi -L; python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"; } > "$OUT/env.txt" 2>&1
pack() { tar czf "$OUT/runs.tmp.tar.gz" -C "$runs" --exclude=embedding_store --exclude='*.pt' . 2>/dev/null \
         && mv "$OUT/runs.tmp.tar.gz" "$OUT/runs.tar.gz"; }
( while sleep 20; do pack; done ) & packer=$!
pids=()
while read -r name list method extra; do
  [ -z "$name" ] || [[ $name == \#* ]] && continue
  for s in ${SEEDS:-0 1 2}; do
    d=$runs/${name}_s$s; mkdir -p "$d"; ln -sfn "$store" "$d/embedding_store"
    ( t0=$(date +%s)
      timeout "${LIMIT:-470}" python3 -m benchmarks --data "$HIP" --labeled-list "$list" --methods $method \
        --seeds $s --iterations "${ITERS:-400}" --freeze-encoder --batch-size 4 --cache-views 2 \
        --unlabeled-limit 6 --max-test "${TESTS:-30}" --inference unprompted --threads 1 \
        $extra --output "$d" > "$d.log" 2>&1
      echo "${name}_s$s rc=$? seconds=$(( $(date +%s) - t0 ))" >> "$OUT/status.txt" ) &
    pids+=($!)
  done
done < "$1"
for p in "${pids[@]}"; do wait $p; done
kill $packer; pack; cat "$OUT/status.txt"; tail -n 2 "$runs"/*.log | cut -c1-200
