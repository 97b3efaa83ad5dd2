#!/bin/bash
# usage: tight.sh WAITPID TAU SEED   (session 16 paths under /work/scratch; the embedding store of session 13)
cd /work/main
while kill -0 $1 2>/dev/null; do sleep 5; done
O=/work/scratch/s16/tight${2}_cpcsam_s$3
mkdir -p $O && ln -sfn /work/scratch/s13/hip_cpu/embedding_store $O/embedding_store
TAU=$2 PYTHONPATH=. PYTHONWARNINGS=ignore OMP_WAIT_POLICY=PASSIVE .venv/bin/python /work/scratch/s16/tight_run.py --data ../shared/data/hippocampus --labeled-list labeled_3.txt --seeds $3 --iterations 400 --freeze-encoder --batch-size 4 --cache-views 2 --unlabeled-limit 6 --max-test 8 --inference unprompted --threads 1 --methods cpcsam --tune-neck --output $O > $O.log 2>&1
