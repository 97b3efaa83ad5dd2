#!/bin/bash
# usage: rescore.sh WAITPID SRC_DIR METHOD SEED : scores SRC_DIR's trained model (session 17, 8 volumes) on all 30 val volumes
# (Run as recorded here in session 18. Since then the benchmark itself scores a kept unit again when
# --max-test or --test-list differ, so emptying "inference" below is no longer needed.)
cd "$(dirname "$0")/../../.."
while kill -0 $1 2>/dev/null; do sleep 5; done
O=${OUT:-/work/scratch/s18}/re_$(basename $2)
mkdir -p $O/results ${STORE:-/work/scratch/s13/hip_cpu/embedding_store} && ln -sfn ${STORE:-/work/scratch/s13/hip_cpu/embedding_store} $O/embedding_store && ln -sfn $2/runs $O/runs
cp $2/results/embedding_store.json $O/results/
K=$3__labeled_3__seed$4
.venv/bin/python -c "
import json,sys; d=json.load(open('$2/results/$K.json')); d['inference']={}; json.dump(d,open('$O/results/$K.json','w'))"
PYTHONWARNINGS=ignore OMP_WAIT_POLICY=PASSIVE .venv/bin/python -m benchmarks --data ../shared/data/hippocampus --labeled-list labeled_3.txt --seeds $4 --iterations 1200 --freeze-encoder --batch-size 4 --cache-views 2 --unlabeled-limit 24 --max-test 30 --inference unprompted --threads 1 --methods $3 --tune-neck --output $O > $O.log 2>&1
