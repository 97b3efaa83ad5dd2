import json, sys, numpy as np
a = json.load(open(sys.argv[1] + "/scores.json"))["cases"]; b = json.load(open(sys.argv[2] + "/scores.json"))["cases"]
rng = np.random.default_rng(0)
for mode in a:
    x, y = np.array(a[mode]), np.array(b[mode])
    d = (x - y) * 100
    boots = [d[rng.integers(0, len(d), len(d))].mean() for _ in range(10000)]
    print(mode, f"A {x.mean()*100:.2f} B {y.mean()*100:.2f} diff {d.mean():+.2f} CI [{np.percentile(boots,2.5):+.2f}, {np.percentile(boots,97.5):+.2f}] better {int((d>0.5).sum())} worse {int((d<-0.5).sum())} emptyA {int((x==0).sum())} emptyB {int((y==0).sum())}")
