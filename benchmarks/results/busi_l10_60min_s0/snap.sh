#!/bin/bash
# copies model_last.pt of run folder $1 to snapshots/ whenever it changes, until $1/scores.json exists
d=$1; mkdir -p $d/snapshots; last=""
while [ ! -f $d/scores.json ]; do
  if [ -f $d/model_last.pt ]; then m=$(stat -c %Y $d/model_last.pt); if [ "$m" != "$last" ]; then sleep 5; cp $d/model_last.pt $d/snapshots/model_$(date +%H%M%S).pt; last=$m; fi; fi
  sleep 20
done
