"""How fast `simulate` finds the best candidates, against LightGBM's own predict on all of them.

On RegMix's 512 proxy runs (../shared/regmix-data), fits the default LightGBM (target Pile-CC),
draws candidates with simulate's own sampler (token prior, strengths 0.1-5) until
`--candidates` of them lie inside the training support, then times
  seconds:          our exact top-k (`regmix_ds.treescore`: bound-and-prune, leaf boxes built
                    inside the timing);
  baseline_seconds: `lightgbm.Booster.predict` on every candidate plus a stable sort;
and checks that both give the same top-k set (`topk_identical`) with the same scores.
Then, for every other surrogate fitted on the same runs (`surrogates`): `fit_seconds`, `seconds`
to find the top k of the same candidates (vectorised scoring of every candidate for the smooth
ones; the pruned exact scorer for `bagged`), and for the smooth ones `optimize_seconds`: the
optimiser's proposal started from that top k. Then times a whole `simulate` run (1,000,000
drawn candidates, `--bootstrap` refits): `bootstrap_seconds`. The last line is one JSON object.

    python benchmarks/simulate.py [--candidates 1000000] [--top-k 128] [--bootstrap 20]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from regmix_ds.core.config import FitConfig, SimulateConfig
from regmix_ds.regress.fit import FittedModel, TreeModel, fit
from regmix_ds.regress.gp import GaussianProcess
from regmix_ds.regress.proposer import Region, minimise, top_k
from regmix_ds.regress.simulate import domain_caps, draw_candidates, resolve_prior, run_simulate
from regmix_ds.regress.surrogates import LinearModel, LogLinearModel
from regmix_ds.regress.tables import Target, read_regmix_tables
from regmix_ds.regress.trees import BaggedTrees
from regmix_ds.regress.treescore import full_lowest_k

ROOT = Path(__file__).resolve().parents[1]

DATA = ROOT.parent / "shared" / "regmix-data"


def timed(run):
    start = time.perf_counter()
    result = run()
    return result, time.perf_counter() - start


def candidates_in_support(fitted: FittedModel, prior: dict, wanted: int) -> np.ndarray:
    """simulate's sampler and support filter, drawing in rounds until `wanted` rows are inside."""
    caps = np.array([domain_caps(fitted, SimulateConfig(), None)[d] for d in fitted.domains])
    vector = np.array([prior[d] for d in fitted.domains])
    kept, round_ = [], 0
    while sum(len(block) for block in kept) < wanted:
        drawn = draw_candidates(vector, SimulateConfig(candidates=wanted), np.random.default_rng([0, round_]))
        kept.append(drawn[(drawn <= caps).all(axis=1)])
        round_ += 1
    return np.ascontiguousarray(np.concatenate(kept)[:wanted])


def other_surrogates(fitted: FittedModel, rows: np.ndarray, k: int) -> dict:
    """Fit, top-k and (smooth) optimiser seconds of every surrogate but lightgbm, on the same candidates."""
    weights, target = fitted.training_data()
    region = Region(np.array([fitted.support_max[d] for d in fitted.domains]))
    fits = {
        "linear": lambda: LinearModel.fit(weights, target),
        "loglinear": lambda: LogLinearModel.fit(weights, target),
        "gp": lambda: GaussianProcess.fit(weights, target),
        "bagged": lambda: BaggedTrees.fit(weights, target, fitted.settings, fitted.trees),
    }
    timings = {}
    for name, fit_one in fits.items():
        model, fit_seconds = timed(fit_one)
        average, seconds = timed(lambda m=model: top_k(m, rows, k))
        timings[name] = {"fit_seconds": round(fit_seconds, 2), "seconds": round(seconds, 3)}
        if model.smooth:
            _, optimize_seconds = timed(lambda m=model, a=average: minimise(m, region, [a.weights, *a.leaders]))
            timings[name]["optimize_seconds"] = round(optimize_seconds, 3)
        print(f"{name}: {timings[name]}", flush=True)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=1_000_000, help="in-support candidates scored by both paths")
    parser.add_argument("--top-k", type=int, default=128, help="best candidates kept")
    parser.add_argument("--bootstrap", type=int, default=20, help="refits in the timed simulate run (0: skip it)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="regmix-bench-simulate-") as tmp:
        table = read_regmix_tables(DATA / "data/train_mixture_1m.csv", DATA / "data/train_pile_loss_1m.csv")
        _, fit_seconds = timed(lambda: fit(table, Target.parse("pile_cc"), FitConfig(), Path(tmp, "fit")))
        fitted = FittedModel.load(Path(tmp, "fit"))
        prior, _ = resolve_prior(fitted, DATA / "token_prior.yaml", None)
        rows = candidates_in_support(fitted, prior, args.candidates)
        booster = fitted.model.booster
        print(f"fit: {fitted.trees} trees in {fit_seconds:.1f} s; scoring {len(rows):,} candidates", flush=True)

        ours, seconds = timed(lambda: TreeModel(booster).lowest_k(rows, args.top_k))
        print(f"ours: {seconds:.2f} s, {ours.work_fraction:.3f} of the row-tree evaluations", flush=True)
        scores, baseline_seconds = timed(lambda: booster.predict(rows))
        baseline = full_lowest_k(scores, args.top_k)
        print(f"baseline (Booster.predict on all): {baseline_seconds:.2f} s", flush=True)
        identical = (set(baseline.tolist()) == set(ours.indices.tolist())
                     and np.array_equal(scores[baseline], ours.scores))

        summary = {
            "candidates": len(rows),
            "top_k": args.top_k,
            "trees": fitted.trees,
            "seconds": round(seconds, 3),
            "baseline_seconds": round(baseline_seconds, 3),
            "ratio": round(baseline_seconds / seconds, 2),
            "topk_identical": bool(identical),
            "work_fraction": round(ours.work_fraction, 4),
        }
        summary["surrogates"] = other_surrogates(fitted, rows, args.top_k)
        if args.bootstrap:
            settings = SimulateConfig(bootstrap=args.bootstrap)
            result, bootstrap_seconds = timed(
                lambda: run_simulate(Path(tmp, "fit"), Path(tmp, "best.json"), settings, DATA / "token_prior.yaml",
                                     progress=False)
            )
            summary.update(
                bootstrap=args.bootstrap,
                bootstrap_seconds=round(bootstrap_seconds, 1),
                simulate_candidates_drawn=result.drawn,
                pile_cc=round(result.mixture.weights["pile_cc"], 4),
                pile_cc_interval=[round(v, 4) for v in result.weight_intervals["pile_cc"]],
                predicted_target=round(result.predicted, 4),
                predicted_target_interval=[round(v, 4) for v in result.predicted_interval],
            )
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
