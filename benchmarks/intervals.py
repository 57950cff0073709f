"""How often simulate's bootstrap intervals hold the truth: coverage on a known law with noise.

The law: the demo's shape. Six domains with the demo corpus's token shares as the prior; each
domain's loss follows a data-mixing law (Ye et al. 2024) L_i(w) = c_i + exp(t_i . w), its own
weight helping most (t_ii = -3, the other t_ij drawn in [-0.5, 0.5], c_i in [2.5, 3.5], seeded);
the target is 0.6 L_1 + 0.3 L_2 + 0.1 L_3, like the demo's 60/30/10 target, so its optimum is
inside the simplex.

One repetition, with its own seed: a swarm of `--runs` mixtures from simulate's own sampler
(Dirichlet over the prior at log-spaced strengths), the law plus Gaussian noise (sd `--noise`)
as their measured target; the surrogate fitted as `fit` fits it (the demo's settings: 4 folds,
min_data_in_leaf 4); simulate's own proposer and `--bootstrap` refits on the same `--candidates`
candidates, kept inside the swarm's support as simulate keeps them. The truth each interval
should hold: for a weight, the same proposer applied to the law itself on the same candidates
(for topk: the average of the law's k best candidates); for the predicted target, the law's
value at the chosen mixture (what training on it would measure, without noise). Every interval
method is computed from the same refits.

Printed per method: `weights` (fraction of repetition x domain intervals that hold the true
weight), `weights_all` (repetitions whose six intervals all hold), `predicted` (repetitions whose
predicted-target interval holds the law's value), and mean widths. The last line is one JSON object.

    python benchmarks/intervals.py [--surrogate lightgbm] [--repetitions 200] [--bootstrap 10]
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from regmix_ds.core.config import FitConfig, SimulateConfig
from regmix_ds.regress.fit import cross_validated, fold_indices
from regmix_ds.regress.intervals import METHODS, bootstrap_interval, weight_intervals
from regmix_ds.regress.proposer import Region
from regmix_ds.regress.simulate import bootstrap_replicates, draw_candidates, propose
from regmix_ds.regress.surrogates import FAMILY, ScoresEveryRow

PRIOR = np.array([0.139, 0.239, 0.061, 0.255, 0.102, 0.204])
"""The demo corpus's token shares (news, code, chat, wiki, math, legal)."""
TARGET = np.array([0.6, 0.3, 0.1, 0.0, 0.0, 0.0])


class SumOfLaws(ScoresEveryRow):
    """sum_i share_i (c_i + exp(t_i . w)): a known truth with the surrogate interface (predict, gradient)."""

    regressor = "truth"
    smooth = True

    def __init__(self, seed: int):
        rng = np.random.default_rng(seed)
        domains = len(PRIOR)
        self.slopes = rng.uniform(-0.5, 0.5, (domains, domains))
        np.fill_diagonal(self.slopes, -3.0)
        self.floors = rng.uniform(2.5, 3.5, domains)

    def predict(self, weights: np.ndarray) -> np.ndarray:
        return (self.floors + np.exp(np.asarray(weights) @ self.slopes.T)) @ TARGET

    def root_gradient(self, roots: np.ndarray) -> np.ndarray:
        grown = np.exp(self.slopes @ roots**2)
        return 2 * roots * ((TARGET * grown) @ self.slopes)


def one_repetition(repetition: int, law: SumOfLaws, candidates: np.ndarray, args) -> dict:
    """Fit, propose and bootstrap on one noisy swarm; which intervals hold the truth, per method."""
    rng = np.random.default_rng([args.seed, repetition])
    swarm = draw_candidates(PRIOR, SimulateConfig(candidates=args.runs, top_k=1), rng)
    target = law.predict(swarm) + rng.normal(0.0, args.noise, len(swarm))
    fit_settings = FitConfig(regressor=args.surrogate, folds=4, min_data_in_leaf=4)
    folds = fold_indices(len(target), fit_settings.folds, fit_settings.seed)
    model = cross_validated(args.surrogate, swarm, target, fit_settings, folds).model
    region = Region(swarm.max(axis=0), (), PRIOR)
    inside = candidates[(candidates <= region.caps).all(axis=1)]
    settings = SimulateConfig(candidates=args.candidates, top_k=args.top_k, bootstrap=args.bootstrap,
                              proposer=args.proposer, confidence=args.confidence, seed=repetition)
    chosen = propose(model, inside, region, settings, only=args.proposer)[args.proposer]
    truth = propose(law, inside, region, settings, only=args.proposer)[args.proposer].weights
    true_loss = float(law.predict(chosen.weights[None, :])[0])
    replicates, predictions = bootstrap_replicates(model, (swarm, target), inside, region, chosen.weights, settings)
    outcome = {}
    for method in METHODS:
        low, high = weight_intervals(chosen.weights, replicates, args.confidence, method, region.caps)
        p_low, p_high = bootstrap_interval(chosen.predicted, predictions, args.confidence, method)
        held = (low - 1e-12 <= truth) & (truth <= high + 1e-12)
        outcome[method] = {"weights": held, "predicted": bool(p_low <= true_loss <= p_high),
                           "weight_width": float(np.mean(high - low)), "predicted_width": float(p_high - p_low)}
    return outcome


def summarise(outcomes: list[dict]) -> dict:
    """Coverage and mean width per method over the repetitions."""
    summary = {}
    for method in METHODS:
        rows = [o[method] for o in outcomes]
        summary[method] = {
            "weights": round(float(np.mean([r["weights"] for r in rows])), 3),
            "weights_all": round(float(np.mean([r["weights"].all() for r in rows])), 3),
            "predicted": round(float(np.mean([r["predicted"] for r in rows])), 3),
            "weight_width": round(float(np.mean([r["weight_width"] for r in rows])), 4),
            "predicted_width": round(float(np.mean([r["predicted_width"] for r in rows])), 4),
        }
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--surrogate", choices=FAMILY, default="lightgbm")
    parser.add_argument("--proposer", choices=("topk", "optimize"), default="topk")
    parser.add_argument("--repetitions", type=int, default=200)
    parser.add_argument("--bootstrap", type=int, default=10, help="refits per repetition (the demo's 10)")
    parser.add_argument("--runs", type=int, default=32, help="proxy runs per swarm (the demo's 32)")
    parser.add_argument("--noise", type=float, default=0.02, help="sd of the measured target around the law")
    parser.add_argument("--candidates", type=int, default=20_000)
    parser.add_argument("--top-k", type=int, default=32, help="the demo's 32")
    parser.add_argument("--confidence", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    law = SumOfLaws(args.seed)
    candidates = draw_candidates(PRIOR, SimulateConfig(candidates=args.candidates),
                                 np.random.default_rng([args.seed, 10**6]))
    start = time.perf_counter()
    outcomes = []
    for repetition in range(args.repetitions):
        outcomes.append(one_repetition(repetition, law, candidates, args))
        if (repetition + 1) % 20 == 0:
            print(f"{repetition + 1} repetitions, {time.perf_counter() - start:.0f} s: "
                  + json.dumps(summarise(outcomes)), flush=True)
    print(json.dumps({"surrogate": args.surrogate, "proposer": args.proposer, "repetitions": args.repetitions,
                      "bootstrap": args.bootstrap, "runs": args.runs, "noise": args.noise,
                      "candidates": args.candidates, "top_k": args.top_k, "nominal": args.confidence,
                      "coverage": summarise(outcomes), "seconds": round(time.perf_counter() - start, 1)}))


if __name__ == "__main__":
    main()
