"""python -m benchmarks with tighter pseudo-labels: a pixel whose mean probability of its argmax class is
below TAU (env) becomes background in every CPC-SAM target (cross, consistency). Prototype."""
import os, runpy, sys
import torch
from CPCSAMLib import losses
TAU = float(os.environ["TAU"])
def pseudo_label(*prob_tensors):
    with torch.no_grad():
        mean = torch.stack([p.detach().float() for p in prob_tensors], dim=0).mean(dim=0)
        conf, label = mean.max(dim=1)
        return torch.where(conf >= TAU, label, torch.zeros_like(label))
losses.pseudo_label = pseudo_label
print("tight pseudo-labels, tau", TAU, flush=True)
sys.argv = ["benchmarks"] + sys.argv[1:]
runpy.run_module("benchmarks", run_name="__main__", alter_sys=True)
