#!/bin/bash
# Usage: busi60.sh "NAME METHOD SEED" ...  (one 60-minute run per argument, one after the other;
# the session-5 report started two of these at the same time, one per method)
# env: BUSI (prepared BUSI folder), STORE (embedding store), OUT (folder for the runs)
cd "$(dirname "$0")/../../.."   # the repository root
export OMP_WAIT_POLICY=PASSIVE PYTHONPATH=$PWD
here=benchmarks/results/busi_l10_60min_s0
for spec in "$@"; do
  set -- $spec; name=$1; method=$2; seed=$3
  out=${OUT:-runs}/$name; mkdir -p $out
  $here/snap.sh $out &   # keeps a copy of model_last.pt each time it is written (every 50 iterations)
  python benchmarks/results/busi_l10_box_150it/exp.py $out $method 10000 num_threads=1 seed=$seed \
    max_minutes=60 save_every=50 > $out.log 2>&1
done
