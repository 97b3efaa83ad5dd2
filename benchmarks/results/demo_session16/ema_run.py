"""Runs demo_var.py with an EMA of the trained weights (decay from env EMA, with the (1+t)/(10+t) warm-up)
used for scoring instead of the last weights. Prototype for benchmarking only."""
import os, sys, runpy
import torch
from CPCSAMLib.training import step as st
from CPCSAMLib import infer
DECAY = float(os.environ["EMA"])
EMA, T = {}, [0]
_orig = st.TrainStep.__call__
def _call(self, *a, **k):
    out = _orig(self, *a, **k)
    T[0] += 1
    d = min(DECAY, (1 + T[0]) / (10 + T[0]))
    with torch.no_grad():
        for n, p in self.objective.model.named_parameters():
            if p.requires_grad:
                if n not in EMA:
                    EMA[n] = p.detach().float().clone()
                else:
                    EMA[n].mul_(d).add_(p.detach().float(), alpha=1 - d)
    return out
st.TrainStep.__call__ = _call
_fc = infer.Predictor.from_checkpoint.__func__
def _from_checkpoint(cls, *a, **k):
    p = _fc(cls, *a, **k)
    res = p.model.load_state_dict({n: v.to(next(p.model.parameters()).dtype) for n, v in EMA.items()}, strict=False)
    assert not res.unexpected_keys, res.unexpected_keys
    print("EMA loaded:", len(EMA), "tensors after", T[0], "steps", flush=True)
    return p
infer.Predictor.from_checkpoint = classmethod(_from_checkpoint)
sys.argv = [sys.argv[1]] + sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
