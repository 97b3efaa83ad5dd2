"""Tables of busi_l10_gpu.md from results_*.jsonl: per run, per seed pair, and the mean over seeds with a
paired bootstrap interval over the 86 val cases. Usage: analyse.py [results.jsonl ...]"""
import json, sys
from pathlib import Path
import numpy as np

here = Path(__file__).parent
files = sys.argv[1:] or sorted(here.glob("results_*.jsonl"))
runs = {}
for f in files:
    for line in Path(f).read_text().splitlines():
        r = json.loads(line)
        if r["rc"] == 0:
            runs[r["name"]] = r
rng = np.random.default_rng(0)


def interval(d, n=10000):
    idx = rng.integers(0, len(d), (n, len(d)))
    return np.percentile(d[idx].mean(1), [2.5, 97.5])


print("| run | iterations | train s | unprompted | self-prompted |\n|---|---|---|---|---|")
for name, r in sorted(runs.items()):
    s = r["summary"]
    print(f"| {name} | {s['iteration']} | {s['train_s']} | {s['unprompted']:.2f} | {s['self_prompt']:.2f} |")
for cpc, sup, seeds in [("cpc245_s{}", "sup390_s{}", range(5)), ("cpc_gpu4_s{}", "sup_gpu4_s{}", range(3)),
                        ("lora_cpc_gpu4_s{}", "lora_sup_gpu4_s{}", range(1)),
                        ("lora_cpc5_s{}", "lora_sup5_s{}", range(3)), ("lora_cpc5w50_s{}", "lora_sup5_s{}", range(3)),
                        ("lora_cpc5_s{}", "lora_sup360_s{}", range(3)), ("lora_cpc5w50_s{}", "lora_sup463_s{}", range(3)),
                        ("lora_cpc5w50_s{}", "lora_cpc5_s{}", range(3)),
                        ("lora_cpc2_s{}", "lora_sup2_s{}", range(3)), ("lora_cpc2det_s{}", "lora_sup2_s{}", range(3)),
                        ("lora_cpc2det_s{}", "lora_cpc2_s{}", range(3))]:
    pairs = [(runs[cpc.format(s)], runs[sup.format(s)]) for s in seeds
             if cpc.format(s) in runs and sup.format(s) in runs]
    if not pairs:
        continue
    print(f"\n{cpc} - {sup}, {len(pairs)} seeds:")
    for mode in ("unprompted", "self_prompt"):
        diffs = np.array([np.array(c["cases"][mode]) - np.array(u["cases"][mode]) for c, u in pairs]) * 100
        per_seed = ", ".join(f"{d.mean():+.2f} [{interval(d)[0]:+.2f}, {interval(d)[1]:+.2f}]" for d in diffs)
        m = diffs.mean(0)
        lo, hi = interval(m)
        cm = np.mean([c["summary"][mode] for c, _ in pairs]); um = np.mean([u["summary"][mode] for _, u in pairs])
        for k in (3, 5):
            if len(pairs) >= k and k < len(pairs):
                mk = diffs[:k].mean(0); a, b = interval(mk)
                print(f"  {mode}, first {k} seeds: {mk.mean():+.2f} [{a:+.2f}, {b:+.2f}]")
        print(f"  {mode}: CPC-SAM {cm:.2f}, labeled-only {um:.2f}, mean paired {m.mean():+.2f} [{lo:+.2f}, {hi:+.2f}]"
              f" (cases better/worse {int((m > 0).sum())}/{int((m < 0).sum())}); per seed: {per_seed}")
