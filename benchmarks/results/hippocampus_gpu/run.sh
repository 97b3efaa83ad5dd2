#!/bin/bash
# Hippocampus on one GPU: labeled-only and CPC-SAM for both box passes (joint, per_class), labeled_1
# and labeled_3, seeds 0-2: one benchmark process per (box pass, list, seed), all at once, one shared
# embedding store. Usage (repository root): HIP=DATA OUT=DIR [ITERS=200] [TESTS=30] [LIMIT=500] run.sh
# (BPS, LISTS, SEEDS, UNL narrow it for a smoke test). On a machine still warm from an earlier call,
# give a new RUNS folder (default /tmp/hip_runs): the benchmark keeps results it finds there.
cd "$(dirname "$0")/../../.."   # the repository root
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} OMP_WAIT_POLICY=PASSIVE PYTHONUNBUFFERED=1
runs=${RUNS:-/tmp/hip_runs}; store=${STORE:-/tmp/hip_store}; mkdir -p "$runs" "$store" "$OUT"
{ date -u; nvidia-smi -L; python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"; } > "$OUT/env.txt" 2>&1
pack() { tar czf "$OUT/runs.tmp.tar.gz" -C "$runs" --exclude=embedding_store --exclude='*.pt' . 2>/dev/null \
         && mv "$OUT/runs.tmp.tar.gz" "$OUT/runs.tar.gz"; }
( while sleep 30; do pack; done ) & packer=$!
pids=()
for bp in ${BPS:-joint per_class}; do for l in ${LISTS:-labeled_1 labeled_3}; do for s in ${SEEDS:-0 1 2}; do
  d=$runs/${bp}_${l}_s$s; mkdir -p "$d"; ln -sfn "$store" "$d/embedding_store"
  ( t0=$(date +%s)
    timeout "${LIMIT:-500}" python3 -m benchmarks --data "$HIP" --labeled-list $l.txt --methods supervised cpcsam \
      --seeds $s --iterations "${ITERS:-200}" --freeze-encoder --batch-size 4 --cache-views 2 \
      --unlabeled-limit "${UNL:-6}" --max-test "${TESTS:-30}" --inference unprompted self_prompt --threads 1 \
      --box-pass $bp --output "$d" > "$d.log" 2>&1
    echo "${bp}_${l}_s$s rc=$? seconds=$(( $(date +%s) - t0 ))" >> "$OUT/status.txt" ) &
  pids+=($!)
done; done; done
for p in "${pids[@]}"; do wait $p; done
kill $packer; pack; cat "$OUT/status.txt"; tail -n 3 "$runs"/*.log | cut -c1-200
