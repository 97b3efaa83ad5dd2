"""Run the demo with option overrides: demo_exp.py OUT key=value ..."""
import json, sys, time
from CPCSAMLib.config import DEMO_DEFAULTS, TrainConfig
from CPCSAMLib.demo import run_demo
out = sys.argv[1]
over = {}
for kv in sys.argv[2:]:
    k, v = kv.split("=", 1)
    over[k] = json.loads(v)
cfg = dict(DEMO_DEFAULTS); cfg.update(over)
t = time.time()
s = run_demo(out, TrainConfig(**cfg))
print("TOTAL", round(time.time() - t, 1), "s", json.dumps(over), "mean", round(s["mean_dice"], 4), "its", s["iterations"])
