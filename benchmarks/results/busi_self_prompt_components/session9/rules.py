"""Component-selection rules evaluated offline from components.py outputs (json + npz)."""
import sys, json, numpy as np
from CPCSAMLib.metrics import dice

def load(prefix):
    rows = json.load(open(prefix + ".json"))
    z = np.load(prefix + ".npz")
    def mask(name, key, shape):
        return np.unpackbits(z[f"{name}|{key}"])[: shape[0] * shape[1]].reshape(shape).astype(bool)
    return rows, mask

def rules(r):
    c = r["comps"]
    if not c:
        return {k: [] for k in ("default_union3", "largest", "meanp", "meanp_sized", "maxp_sized", "meanp_min20px",
                                "union_meanp_within05_sized")}
    big = c[0]["size"]
    sized = [i for i, x in enumerate(c) if x["size"] >= 0.1 * big]
    out = {"default_union3": sized[:3], "largest": [0],
           "meanp": [max(range(len(c)), key=lambda i: c[i]["mean_p"])],
           "meanp_sized": [max(sized, key=lambda i: c[i]["mean_p"])],
           "maxp_sized": [max(sized, key=lambda i: c[i]["max_p"])],
           "meanp_min20px": [max([i for i, x in enumerate(c) if x["size"] >= 20] or [0], key=lambda i: c[i]["mean_p"])]}
    best = max(c[i]["mean_p"] for i in sized)
    out["union_meanp_within05_sized"] = [i for i in sized if c[i]["mean_p"] >= best - 0.05][:3]
    return out

for prefix in sys.argv[1:]:
    rows, mask = load(prefix)
    res = {}
    for r in rows:
        gt = mask(r["name"], "gt", r["shape"])
        for rule, idx in rules(r).items():
            pm = np.zeros(r["shape"], bool)
            for i in idx:
                pm |= mask(r["name"], str(i), r["shape"])
            res.setdefault(rule, []).append(dice(pm, gt))
        res.setdefault("U", []).append(r["dice_u"])
        res.setdefault("oracle1", []).append(max([x["dice_prompted"] for x in r["comps"]] or [0]))
    print(prefix.split("/")[-1], len(rows), {k: round(100 * float(np.mean(v)), 2) for k, v in res.items()})
