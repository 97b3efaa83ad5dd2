#!/bin/bash
# usage: lane.sh WAIT_PID "name|args" ...   runs each job after WAIT_PID exits, one after another
cd /work/main
w=$1; shift
while kill -0 $w 2>/dev/null; do sleep 10; done
for job in "$@"; do
  name=${job%%|*}; args=${job#*|}
  PYTHONPATH=. PYTHONWARNINGS=ignore OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/results/demo_session12/demo_var.py /work/scratch/s15/neck/$name unl=demo max_minutes=null iterations=300 num_threads=1 $args > /work/scratch/s15/neck/$name.log 2>&1
done
