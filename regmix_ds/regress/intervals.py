"""Bootstrap intervals: from the full-data answer and the refits' answers to a (low, high) pair.

Three methods, for an estimate `point` and B replicates with quantiles q_lo, q_hi:

* `percentile`: [q_lo, q_hi]. Right when the refits scatter around the truth the way the
  estimate does; a refit sees only ~63% of the distinct runs, so near the optimum they are
  biased, and the estimate can fall outside its own interval.
* `basic` (reverse percentile): [2 point - q_hi, 2 point - q_lo]: the refits' offsets from the
  estimate, taken as the estimate's offsets from the truth (a bias the refits show is corrected).
* `normal`: point -+ t sd(replicates), t the Student quantile with B - 1 degrees of freedom
  (the spread is itself estimated from B refits: 2.26 instead of 1.96 at 95% with B = 10).

Which one to trust was measured, not assumed: `benchmarks/intervals.py` draws many swarms from
a known log-linear law with noise, runs simulate's bootstrap on each and counts how often each
interval holds the true answer. The measured coverage is in the README ("Surrogates").
"""
from __future__ import annotations

import numpy as np
from scipy import stats

METHODS = ("percentile", "basic", "normal")


def bootstrap_interval(point: np.ndarray, replicates: np.ndarray, confidence: float,
                       method: str) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) for each entry of `point`; `replicates` has one row per refit."""
    point = np.asarray(point, dtype=np.float64)
    replicates = np.asarray(replicates, dtype=np.float64)
    tail = (1 - confidence) / 2
    if method == "normal":
        spread = stats.t.ppf(1 - tail, len(replicates) - 1) * replicates.std(axis=0, ddof=1)
        return point - spread, point + spread
    low, high = np.quantile(replicates, [tail, 1 - tail], axis=0)
    if method == "basic":
        return 2 * point - high, 2 * point - low
    if method != "percentile":
        raise ValueError(f"unknown interval method {method!r}")
    return low, high


def weight_intervals(point: np.ndarray, replicates: np.ndarray, confidence: float, method: str,
                     caps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Intervals for mixture weights, cut to what a weight can be: [0, its cap]."""
    low, high = bootstrap_interval(point, replicates, confidence, method)
    return np.clip(low, 0.0, caps), np.clip(high, 0.0, caps)
