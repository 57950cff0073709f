"""How often the transfer check's bootstrap intervals hold the true rank correlation.

`regress.transfer.rank_agreement` gives percentile-bootstrap intervals for Spearman and Kendall
over the compared mixtures. Here pairs are drawn from a bivariate normal whose population
Spearman (6/pi asin(rho/2)) and Kendall (2/pi asin(rho)) are known, at the sizes a transfer check
compares (16 mixtures by default), many times; the measured coverage is how often the interval
held the truth. Run with `python benchmarks/rank_intervals.py [--pairs 16] [--repeats 400]`;
prints a line per true correlation and a final JSON line.
"""
from __future__ import annotations

import argparse
import json
import math

import numpy as np

from regmix_ds.regress.transfer import rank_agreement


def draw_pairs(rng: np.random.Generator, rho: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    """n pairs from a standard bivariate normal with correlation rho."""
    first = rng.standard_normal(n)
    second = rho * first + math.sqrt(1 - rho**2) * rng.standard_normal(n)
    return first, second


def coverage(rho: float, pairs: int, repeats: int, resamples: int, confidence: float, seed: int) -> dict:
    """The share of intervals that held the population Spearman and Kendall."""
    true_spearman = 6 / math.pi * math.asin(rho / 2)
    true_kendall = 2 / math.pi * math.asin(rho)
    rng = np.random.default_rng(seed)
    held_spearman = held_kendall = 0
    for repeat in range(repeats):
        small, large = draw_pairs(rng, rho, pairs)
        found = rank_agreement(small, large, resamples=resamples, confidence=confidence, seed=repeat, threshold=0.0)
        held_spearman += found.spearman_interval[0] <= true_spearman <= found.spearman_interval[1]
        held_kendall += found.kendall_interval[0] <= true_kendall <= found.kendall_interval[1]
    return {"rho": rho, "true_spearman": true_spearman, "true_kendall": true_kendall, "pairs": pairs,
            "nominal": confidence, "spearman_coverage": held_spearman / repeats,
            "kendall_coverage": held_kendall / repeats, "repeats": repeats}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=16, help="mixtures compared (default 16, transfer.count)")
    parser.add_argument("--repeats", type=int, default=400, help="simulated checks per correlation (default 400)")
    parser.add_argument("--resamples", type=int, default=500, help="bootstrap resamples per check (default 500)")
    args = parser.parse_args()
    rows = []
    for rho in (0.5, 0.8, 0.95):
        row = coverage(rho, args.pairs, args.repeats, args.resamples, 0.95, seed=int(rho * 100))
        rows.append(row)
        print(f"Spearman {row['true_spearman']:.3f}: coverage {row['spearman_coverage']:.3f}; Kendall "
              f"{row['true_kendall']:.3f}: coverage {row['kendall_coverage']:.3f} (nominal 0.95, {args.pairs} pairs, "
              f"{args.repeats} checks)", flush=True)
    print(json.dumps({"benchmark": "rank_intervals", "rows": rows}))


if __name__ == "__main__":
    main()
