"""Statistics of the comparison: spread over seeds and paired per-case differences with a bootstrap
interval over cases. Pure numpy; the inputs are plain dictionaries."""
from __future__ import annotations

import math
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

BOOTSTRAP_SEED = 0
BOOTSTRAP_RESAMPLES = 10000


def mean_sd(values: Sequence[Optional[float]]) -> dict:
    """Mean and sample SD (n - 1) of the finite values; SD is None with fewer than two values."""
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return {"mean": None, "sd": None, "n": 0}
    sd = float(np.std(finite, ddof=1)) if len(finite) > 1 else None
    return {"mean": float(np.mean(finite)), "sd": sd, "n": len(finite)}


def case_scores(rows: Sequence[Mapping], metric: str = "dice") -> Dict[str, float]:
    """Per case, the metric averaged over its classes (rows as written by ``metrics.case_metrics``).
    NaN values are left out; a case whose values are all NaN is left out."""
    by_case: Dict[str, List[float]] = {}
    for row in rows:
        value = row.get(metric)
        if value is not None and math.isfinite(value):
            by_case.setdefault(str(row["case"]), []).append(float(value))
    return {case: float(np.mean(values)) for case, values in by_case.items()}


def average_over_seeds(per_seed: Mapping[int, Mapping[str, float]]) -> Dict[str, float]:
    """{seed: {case: score}} -> {case: mean over the seeds that scored the case}."""
    cases: Dict[str, List[float]] = {}
    for scores in per_seed.values():
        for case, value in scores.items():
            cases.setdefault(case, []).append(value)
    return {case: float(np.mean(values)) for case, values in cases.items()}


def bootstrap_interval(values: Sequence[float], resamples: int = BOOTSTRAP_RESAMPLES,
                       seed: int = BOOTSTRAP_SEED, level: float = 0.95) -> tuple:
    """Percentile bootstrap interval of the mean (cases resampled with replacement, fixed seed)."""
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        return (None, None)
    rng = np.random.default_rng(seed)
    means = arr[rng.integers(0, arr.size, size=(resamples, arr.size))].mean(axis=1)
    tail = (1.0 - level) / 2.0 * 100.0
    return float(np.percentile(means, tail)), float(np.percentile(means, 100.0 - tail))


def paired_difference(method: Mapping[int, Mapping[str, float]], baseline: Mapping[int, Mapping[str, float]],
                      resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> dict:
    """Method minus baseline per case, each averaged over its seeds first, on the cases both scored.

    Returns the mean difference, its 95 % bootstrap interval over cases, and how many cases are
    better, worse or equal.
    """
    m, b = average_over_seeds(method), average_over_seeds(baseline)
    cases = sorted(set(m) & set(b))
    diffs = np.array([m[c] - b[c] for c in cases], dtype=float)
    low, high = bootstrap_interval(diffs, resamples, seed)
    return {"cases": len(cases), "mean": float(diffs.mean()) if cases else None, "ci_low": low, "ci_high": high,
            "better": int((diffs > 0).sum()), "worse": int((diffs < 0).sum()), "equal": int((diffs == 0).sum()),
            "method_seeds": sorted(method), "baseline_seeds": sorted(baseline)}
