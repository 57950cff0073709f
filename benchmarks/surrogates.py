"""Which surrogate ranks RegMix's runs best: chosen on the 512 training runs, reported on the 256 test runs.

Default: `fit --regressor auto` on RegMix's released 1M-parameter proxy runs (target Pile-CC,
../shared/regmix-data) with the test runs given as evaluation runs, which `fit` only reports:
every surrogate's cross-validated Spearman, Pearson and RMSE (5 folds inside the training runs;
`auto` keeps the highest Spearman) and its test Spearman. The same numbers as

    regmix-ds fit --mixtures train_mixture_1m.csv --losses train_pile_loss_1m.csv \\
      --eval-mixtures test_mixture_1m.csv --eval-losses test_pile_loss_1m.csv --target pile_cc --regressor auto

Options, all on the training runs only:
  --fold-seeds 0,1,2,3,4  every surrogate's cross-validated Spearman under several fold splits
                          (is the choice robust to the split?)
  --gp-variants           the GP with each kernel (matern52, rbf) and embedding (sqrt, identity)
  --bagging-variants      bagged LightGBM members trained on every run (seeds only, what `bagged`
                          does) against members trained on bootstrap resamples
The last line is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from regmix_ds.core.config import FitConfig
from regmix_ds.regress.fit import cross_validated, fit, fold_indices, quality
from regmix_ds.regress.gp import EMBEDDINGS, KERNELS, GaussianProcess
from regmix_ds.regress.surrogates import FAMILY, out_of_fold
from regmix_ds.regress.tables import Target, read_regmix_tables
from regmix_ds.regress.trees import cross_validated_trees, train_booster

DATA = Path(__file__).resolve().parents[2] / "shared" / "regmix-data" / "data"


def training_runs():
    table = read_regmix_tables(DATA / "train_mixture_1m.csv", DATA / "train_pile_loss_1m.csv")
    return table, Target.parse("pile_cc").values(table)


def rounded(metrics: dict) -> dict:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}


def auto_with_test() -> dict:
    """fit --regressor auto, evaluated on the test runs."""
    table, _ = training_runs()
    test = read_regmix_tables(DATA / "test_mixture_1m.csv", DATA / "test_pile_loss_1m.csv")
    with tempfile.TemporaryDirectory(prefix="regmix-bench-surrogates-") as tmp:
        start = time.perf_counter()
        report = fit(table, Target.parse("pile_cc"), FitConfig(regressor="auto"), Path(tmp), evaluation=test)
        seconds = time.perf_counter() - start
    rows = {name: {"cv": rounded(entry["metrics"]), "test": rounded(report["evaluation"]["candidates"][name])}
            for name, entry in report["selection"]["candidates"].items()}
    for name, row in rows.items():
        print(f"{name:10s} cross-validated Spearman {row['cv']['spearman']:.4f}  test Spearman "
              f"{row['test']['spearman']:.4f}", flush=True)
    return {"auto_choice": report["regressor"], "surrogates": rows, "fit_seconds": round(seconds, 1)}


def fold_seed_spread(seeds: list[int]) -> dict:
    """Cross-validated Spearman of every surrogate per fold seed."""
    table, target = training_runs()
    spread = {}
    for name in FAMILY:
        scores = []
        for seed in seeds:
            folds = fold_indices(len(target), 5, seed)
            candidate = cross_validated(name, table.weights, target, FitConfig(seed=seed), folds)
            scores.append(round(quality(target, candidate.predictions)["spearman"], 4))
        spread[name] = {"spearman": scores, "mean": round(float(np.mean(scores)), 4)}
        print(f"{name:10s} {spread[name]}", flush=True)
    wins = [max(FAMILY, key=lambda n, i=i: spread[n]["spearman"][i]) for i in range(len(seeds))]
    return {"fold_seeds": seeds, "cross_validated": spread, "best_per_seed": wins}


def gp_variants() -> dict:
    """Cross-validated Spearman and RMSE of each GP kernel and embedding."""
    table, target = training_runs()
    folds = fold_indices(len(target), 5, 0)
    variants = {}
    for kind in KERNELS:
        for embedding in EMBEDDINGS:
            predictions = out_of_fold(lambda w, y, k=kind, e=embedding: GaussianProcess.fit(w, y, k, e),
                                      table.weights, target, folds)
            variants[f"{kind}/{embedding}"] = rounded(quality(target, predictions))
            print(f"gp {kind}/{embedding}: {variants[f'{kind}/{embedding}']}", flush=True)
    return {"gp_variants": variants}


def bagging_variants() -> dict:
    """Bagged LightGBM: members on every run (their seeds differ) against members on bootstrap resamples."""
    table, target = training_runs()
    settings = FitConfig(regressor="bagged")
    folds = fold_indices(len(target), 5, 0)
    trees = cross_validated_trees("lightgbm", table.weights, target, settings, folds).trees

    def resampled(weights, values):
        members = []
        for m in range(settings.members):
            rows = np.random.default_rng([settings.seed, m]).integers(0, len(values), len(values))
            members.append(train_booster(weights[rows], values[rows], settings, trees, settings.seed + m))
        return _Mean(members)

    seeds_only = cross_validated("bagged", table.weights, target, settings, folds).predictions
    result = {"seeds": rounded(quality(target, seeds_only)),
              "bootstrap": rounded(quality(target, out_of_fold(resampled, table.weights, target, folds)))}
    print(result, flush=True)
    return {"bagging_variants": result, "trees": trees}


class _Mean:
    def __init__(self, boosters):
        self.boosters = boosters

    def predict(self, weights):
        return np.mean([b.predict(weights) for b in self.boosters], axis=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fold-seeds", help="comma-separated fold seeds (training runs only)")
    parser.add_argument("--gp-variants", action="store_true")
    parser.add_argument("--bagging-variants", action="store_true")
    args = parser.parse_args()
    if args.fold_seeds:
        summary = fold_seed_spread([int(s) for s in args.fold_seeds.split(",")])
    elif args.gp_variants:
        summary = gp_variants()
    elif args.bagging_variants:
        summary = bagging_variants()
    else:
        summary = auto_with_test()
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
