#!/bin/bash
# usage: lane.sh WAIT_PID "name|ENV=.. key=value ..." ...   runs each job after WAIT_PID exits, one after another
# args may start with env assignments (DEMO_DATA=...), passed via env
cd /work/main
w=$1; shift
while kill -0 $w 2>/dev/null; do sleep 10; done
for job in "$@"; do
  name=${job%%|*}; args=${job#*|}
  envs=(); rest=()
  for a in $args; do if [[ $a == [A-Z]*=* ]]; then envs+=("$a"); else rest+=("$a"); fi; done
  env "${envs[@]}" PYTHONPATH=. PYTHONWARNINGS=ignore OMP_WAIT_POLICY=PASSIVE .venv/bin/python $RUNNER benchmarks/results/demo_session12/demo_var.py /work/scratch/s16/runs/$name unl=demo max_minutes=null iterations=300 num_threads=1 "${rest[@]}" > /work/scratch/s16/runs/$name.log 2>&1
done
