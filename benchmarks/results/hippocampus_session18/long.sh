#!/bin/bash
# usage: long.sh WAITPID METHOD SEED   (labeled_3, 1200 iterations, 24 unlabeled volumes, --tune-neck, all 30 val volumes, 1 thread)
cd "$(dirname "$0")/../../.."
while kill -0 $1 2>/dev/null; do sleep 5; done
O=${OUT:-/work/scratch/s18}/long_$2_s$3
mkdir -p $O ${STORE:-/work/scratch/s13/hip_cpu/embedding_store} && ln -sfn ${STORE:-/work/scratch/s13/hip_cpu/embedding_store} $O/embedding_store
PYTHONWARNINGS=ignore OMP_WAIT_POLICY=PASSIVE .venv/bin/python -m benchmarks --data ../shared/data/hippocampus --labeled-list labeled_3.txt --seeds $3 --iterations 1200 --freeze-encoder --batch-size 4 --cache-views 2 --unlabeled-limit 24 --max-test 30 --inference unprompted --threads 1 --methods $2 --tune-neck --output $O > $O.log 2>&1
