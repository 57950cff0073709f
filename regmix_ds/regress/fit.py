"""Fit: a regression from mixture weights to a target loss, judged by cross-validation on the proxy runs.

Two regressors:

* `lightgbm`: RegMix's settings (at most 1000 trees, learning rate 0.01, other settings
  LightGBM's defaults) plus row subsampling (`subsample` 0.8, LightGBM bagging). The tree
  count is chosen by k-fold cross-validation inside the training runs (early stopping on the
  mean fold loss), never on evaluation data, and the final model is refit on all runs with
  that count. On RegMix's 512 runs, subsampling raised the cross-validated Spearman from 0.983
  to 0.986 (mean over 5 fold seeds; chosen on the training runs only); `subsample: 1.0` is
  RegMix's exact setting.
* `linear`: ordinary least squares with an intercept.

A fit writes into its output directory:

* `model.json`: the sidecar: regressor, domain order, target, tree count, training support
  (each domain's largest weight), settings, input paths and hashes, and the linear
  coefficients or the sha256 of `model.txt`;
* `model.txt`: the LightGBM booster in LightGBM's own text format (no pickle anywhere);
* `fit_report.json`: cross-validated Spearman, Pearson and RMSE (and the held-out ones);
* `cv_predictions.csv`: each run's out-of-fold prediction next to its measured target.
"""
from __future__ import annotations

import csv
import dataclasses
import functools
import hashlib
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
from scipy import stats

from regmix_ds.core.config import FitConfig
from regmix_ds.core.errors import RegmixError
from regmix_ds.core.files import atomic_output, file_hash, read_json, write_json_atomic, write_text_atomic
from regmix_ds.core.layout import FitDir
from regmix_ds.core.settings import Invalid, load_section
from regmix_ds.regress.tables import RunTable, Target, WeightTable, read_regmix_tables, read_results, read_weights
from regmix_ds.regress.treescore import LeafBoxes, TopK, full_lowest_k, lowest_k

FORMAT = "regmix-ds/fit-1"


def lightgbm_params(settings: FitConfig) -> dict[str, Any]:
    """LightGBM parameters: RegMix's (defaults but trees and learning rate), made deterministic."""
    params = {
        "objective": "regression",
        "metric": "l2",
        "learning_rate": settings.learning_rate,
        "min_data_in_leaf": settings.min_data_in_leaf,
        "seed": settings.seed,
        "deterministic": True,
        "force_row_wise": True,
        "num_threads": settings.threads,
        "verbose": -1,
    }
    if settings.subsample < 1:
        params.update(bagging_fraction=settings.subsample, bagging_freq=1)
    return params


class LinearModel:
    """`intercept + weights @ coefficients`, fitted by least squares."""

    regressor = "linear"

    def __init__(self, intercept: float, coefficients: np.ndarray):
        self.intercept = float(intercept)
        self.coefficients = np.asarray(coefficients, dtype=np.float64)

    @classmethod
    def fit(cls, weights: np.ndarray, target: np.ndarray) -> LinearModel:
        """Least squares of `target` on `[1, weights]`: the intercept, then one coefficient per domain."""
        design = np.column_stack([np.ones(len(weights)), weights])
        solution = np.linalg.lstsq(design, target, rcond=None)[0]
        return cls(solution[0], solution[1:])

    def predict(self, weights: np.ndarray) -> np.ndarray:
        """The predicted target of each row of `weights`."""
        return self.intercept + np.asarray(weights, dtype=np.float64) @ self.coefficients

    def lowest_k(self, weights: np.ndarray, k: int, progress: bool = False) -> TopK:
        """The k lowest-predicted rows, best first, from scoring every row (`progress` only matches TreeModel)."""
        scores = self.predict(weights)
        best = full_lowest_k(scores, k)
        return TopK(best, scores[best], 1.0)


class TreeModel:
    """A LightGBM booster; `lowest_k` finds the best rows without scoring every tree of every row."""

    regressor = "lightgbm"

    def __init__(self, booster: lgb.Booster):
        self.booster = booster

    @classmethod
    def fit(cls, weights: np.ndarray, target: np.ndarray, settings: FitConfig, trees: int) -> TreeModel:
        """A booster trained with `lightgbm_params(settings)` for exactly `trees` rounds."""
        data = lgb.Dataset(weights, target, params={"verbose": -1})
        return cls(lgb.train(lightgbm_params(settings), data, num_boost_round=trees))

    @property
    def trees(self) -> int:
        return self.booster.num_trees()

    def predict(self, weights: np.ndarray) -> np.ndarray:
        """The booster's prediction for each row of `weights`, with all its trees."""
        return self.booster.predict(np.asarray(weights, dtype=np.float64), num_iteration=self.trees)

    @functools.cached_property
    def boxes(self) -> LeafBoxes | None:
        """The trees' leaf boxes for `lowest_k` (built on first use: about a second for 1000 trees)."""
        return LeafBoxes.from_booster(self.booster)

    def lowest_k(self, weights: np.ndarray, k: int, progress: bool = False) -> TopK:
        """The k lowest-predicted rows, best first, ranked as full prediction ranks them but pruned by `boxes`."""
        return lowest_k(self.booster, weights, k, boxes=self.boxes, progress=progress)


Regressor = LinearModel | TreeModel


def fit_regressor(weights: np.ndarray, target: np.ndarray, settings: FitConfig, trees: int | None) -> Regressor:
    """One model on all the given rows (trees: the count cross-validation chose)."""
    if settings.regressor == "linear":
        return LinearModel.fit(weights, target)
    return TreeModel.fit(weights, target, settings, trees or settings.trees)


@dataclass(frozen=True)
class CrossValidation:
    """What k-fold cross-validation gives: the tree count to keep and every run's out-of-fold prediction."""

    trees: int | None
    """The tree count picked inside the folds (None for the linear model)."""
    predictions: np.ndarray
    """Each run's prediction by the model of the fold that held it out."""


def fold_indices(runs: int, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Seeded k-fold split: (training positions, held-out positions) per fold."""
    if runs < folds:
        raise Invalid(FitConfig, "folds", f"{runs} runs but {folds} folds: need at least one run per fold")
    order = np.random.default_rng(seed).permutation(runs)
    held_out = [np.sort(part) for part in np.array_split(order, folds)]
    return [(np.setdiff1d(np.arange(runs), part), part) for part in held_out]


def cross_validate(weights: np.ndarray, target: np.ndarray, settings: FitConfig) -> CrossValidation:
    """Out-of-fold predictions for every run; for LightGBM also the tree count to keep."""
    folds = fold_indices(len(target), settings.folds, settings.seed)
    predictions = np.empty(len(target))
    if settings.regressor == "linear":
        for train, test in folds:
            predictions[test] = LinearModel.fit(weights[train], target[train]).predict(weights[test])
        return CrossValidation(None, predictions)
    result = lgb.cv(
        lightgbm_params(settings),
        lgb.Dataset(weights, target, params={"verbose": -1}),
        num_boost_round=settings.trees,
        folds=folds,
        callbacks=[lgb.early_stopping(settings.early_stopping, verbose=False)],
        return_cvbooster=True,
    )
    trees = len(result["valid l2-mean"])
    for booster, (_, test) in zip(result["cvbooster"].boosters, folds):
        predictions[test] = booster.predict(weights[test], num_iteration=trees)
    return CrossValidation(trees, predictions)


def quality(measured: np.ndarray, predicted: np.ndarray) -> dict[str, float | None]:
    """Spearman, Pearson and RMSE (correlations are None when either side is constant)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        spearman = stats.spearmanr(measured, predicted).statistic
        pearson = stats.pearsonr(measured, predicted).statistic if len(measured) > 1 else math.nan
    rmse = float(np.sqrt(np.mean((measured - predicted) ** 2)))

    def finite(value: float) -> float | None:
        return float(value) if np.isfinite(value) else None

    return {"spearman": finite(spearman), "pearson": finite(pearson), "rmse": rmse, "runs": len(measured)}


def format_quality(metrics: Mapping[str, Any]) -> str:
    """`Spearman 0.9921, Pearson 0.9892, RMSE 0.0483` (n/a for an undefined correlation)."""

    def shown(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.4f}"

    return f"Spearman {shown(metrics['spearman'])}, Pearson {shown(metrics['pearson'])}, RMSE {metrics['rmse']:.4g}"


@dataclass(frozen=True)
class FittedModel:
    """A fitted regression plus what is needed to use it again: domains, target, support, inputs."""

    model: Regressor
    domains: tuple[str, ...]
    target: Target
    settings: FitConfig
    support_max: Mapping[str, float]
    """Each domain's largest weight among the training runs: the region the proxies covered."""
    inputs: Mapping[str, Mapping[str, str]]
    runs: int
    path: str = field(default="", compare=False)

    @property
    def trees(self) -> int | None:
        return self.model.trees if isinstance(self.model, TreeModel) else None

    def predict_table(self, table: WeightTable) -> np.ndarray:
        """Predictions for a mixtures table whose domains must be exactly the model's."""
        return self.model.predict(table.aligned(self.domains))

    def training_table(self) -> RunTable:
        """The training runs, read again from the recorded inputs (which must be unchanged)."""
        for role, entry in self.inputs.items():
            if file_hash(entry["path"]) != entry["sha256"]:
                raise RegmixError(entry["path"], f"changed since the fit in {self.path} ({role}); fit again")
        if "results" in self.inputs:
            return read_results(self.inputs["results"]["path"])
        return read_regmix_tables(self.inputs["mixtures"]["path"], self.inputs["losses"]["path"])

    def training_data(self) -> tuple[np.ndarray, np.ndarray]:
        """(weights in the model's domain order, target) of the training runs."""
        table = self.training_table()
        return table.mixtures.aligned(self.domains), self.target.values(table, self.path)

    def sidecar(self, booster_text: str | None, files: FitDir) -> dict[str, Any]:
        """The content of model.json (`booster_text`: model.txt's text, None for the linear model)."""
        data: dict[str, Any] = {
            "format": FORMAT,
            "regressor": self.model.regressor,
            "domains": list(self.domains),
            "target": self.target.to_json(),
            "trees": self.trees,
            "runs": self.runs,
            "support_max": dict(self.support_max),
            "settings": dataclasses.asdict(self.settings),
            "inputs": {role: dict(entry) for role, entry in self.inputs.items()},
        }
        if isinstance(self.model, LinearModel):
            data["linear"] = {
                "intercept": self.model.intercept,
                "coefficients": dict(zip(self.domains, self.model.coefficients.tolist())),
            }
        else:
            data["booster"] = {"file": files.booster.name, "sha256": hashlib.sha256(booster_text.encode()).hexdigest()}
        return data

    def save(self, out_dir: str | Path) -> None:
        """Writes model.txt (LightGBM) then model.json, whose hash ties the two together."""
        files = FitDir(Path(out_dir))
        booster_text = self.model.booster.model_to_string() if isinstance(self.model, TreeModel) else None
        if booster_text is not None:
            write_text_atomic(files.booster, booster_text)
        write_json_atomic(files.sidecar, self.sidecar(booster_text, files))

    @classmethod
    def load(cls, model_dir: str | Path) -> FittedModel:
        """Read a saved fit; anything missing, malformed or not matching is a one-line error."""
        path = FitDir(Path(model_dir)).sidecar
        if not Path(model_dir).is_dir():
            raise RegmixError(model_dir, "not a directory (expected the output of regmix-ds fit)")
        data = read_json(path)
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise RegmixError(path, f"not a regmix-ds model (expected format {FORMAT!r})")
        try:
            domains = tuple(str(d) for d in data["domains"])
            target = Target.from_json(data["target"])
            settings = _saved_settings(data["settings"], path)
            support = {str(k): float(v) for k, v in data["support_max"].items()}
            inputs = {str(r): {"path": str(e["path"]), "sha256": str(e["sha256"])} for r, e in data["inputs"].items()}
            runs = int(data["runs"])
            model = _load_regressor(data, domains, Path(model_dir))
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise RegmixError(path, f"malformed model file ({type(err).__name__}: {err})") from None
        return cls(model, domains, target, settings, support, inputs, runs, str(model_dir))


def _saved_settings(data: Any, path: Path) -> FitConfig:
    try:
        return load_section(FitConfig, data, "settings")
    except RegmixError as err:
        raise RegmixError(path, f"malformed settings ({err})") from None


def _load_regressor(data: Mapping[str, Any], domains: tuple[str, ...], model_dir: Path) -> Regressor:
    if data["regressor"] == "linear":
        linear = data["linear"]
        coefficients = np.array([float(linear["coefficients"][d]) for d in domains])
        intercept = float(linear["intercept"])
        if not (np.isfinite(coefficients).all() and math.isfinite(intercept)):
            raise ValueError("non-finite coefficient")
        return LinearModel(intercept, coefficients)
    if data["regressor"] != "lightgbm":
        raise ValueError(f"unknown regressor {data['regressor']!r}")
    booster_path = model_dir / str(data["booster"]["file"])
    try:
        text = booster_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise RegmixError(booster_path, f"cannot read the booster ({err})") from None
    if hashlib.sha256(text.encode()).hexdigest() != data["booster"]["sha256"]:
        raise RegmixError(booster_path,
                          f"does not match {FitDir(model_dir).sidecar.name} (changed or corrupt); fit again")
    try:
        booster = lgb.Booster(model_str=text)
    except lgb.basic.LightGBMError as err:
        raise RegmixError(booster_path, f"not a LightGBM model ({str(err).splitlines()[0]})") from None
    if booster.num_feature() != len(domains) or booster.num_trees() != int(data["trees"]):
        raise RegmixError(booster_path, f"does not match {FitDir(model_dir).sidecar.name} (features or tree count)")
    return TreeModel(booster)


def fit(
    table: RunTable, target: Target, settings: FitConfig, out_dir: str | Path, evaluation: RunTable | None = None
) -> dict[str, Any]:
    """Cross-validate, refit on all runs, optionally evaluate on held-out runs, then write the outputs.

    Everything is computed before the first file is written, so a bad input leaves nothing.
    """
    target = target.resolved(table)
    measured = target.values(table)
    weights = table.weights
    held_out = _evaluation_data(evaluation, target, table.domains) if evaluation is not None else None
    validation = cross_validate(weights, measured, settings)
    model = fit_regressor(weights, measured, settings, validation.trees)
    support = dict(zip(table.domains, weights.max(axis=0).tolist()))
    fitted = FittedModel(model, table.domains, target, settings, support, table.inputs, len(measured), str(out_dir))
    report = {
        "target": target.label,
        "target_terms": target.to_json(),
        "regressor": settings.regressor,
        "runs": len(measured),
        "domains": list(table.domains),
        "trees": validation.trees,
        "cross_validation": {"folds": settings.folds,
                             "metrics": {target.label: quality(measured, validation.predictions)}},
        "settings": dataclasses.asdict(settings),
        "inputs": {role: dict(entry) for role, entry in table.inputs.items()},
    }
    if held_out is not None:
        eval_weights, eval_measured, eval_inputs = held_out
        report["evaluation"] = {
            "metrics": {target.label: quality(eval_measured, model.predict(eval_weights))},
            "inputs": eval_inputs,
        }
    files = FitDir(Path(out_dir))
    _write_cv_predictions(files.cv_predictions, table.index, measured, validation.predictions)
    fitted.save(files.path)
    write_json_atomic(files.report, report)
    return report


def _evaluation_data(evaluation: RunTable, target: Target, domains: tuple[str, ...]):
    return (
        evaluation.mixtures.aligned(domains),
        target.values(evaluation, "--eval-losses"),
        {role: dict(entry) for role, entry in evaluation.inputs.items()},
    )


def _write_cv_predictions(path: Path, index, measured: np.ndarray, predicted: np.ndarray) -> None:
    with atomic_output(path) as handle:
        writer = csv.writer(handle)
        writer.writerow(["index", "measured", "predicted"])
        for row, m, p in zip(index, measured, predicted):
            writer.writerow([row, repr(float(m)), repr(float(p))])


def read_cv_predictions(model_dir: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(measured, out-of-fold predicted) as `fit` wrote them."""
    path = FitDir(Path(model_dir)).cv_predictions
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            rows = list(csv.DictReader(handle))
        measured = np.array([float(r["measured"]) for r in rows])
        predicted = np.array([float(r["predicted"]) for r in rows])
    except FileNotFoundError:
        raise RegmixError(path, "file not found (written by regmix-ds fit)") from None
    except (OSError, KeyError, TypeError, ValueError, csv.Error) as err:
        raise RegmixError(path, f"malformed ({type(err).__name__}: {err})") from None
    return measured, predicted


def predict_file(model_dir: str | Path, mixtures_path: str | Path, out_path: str | Path) -> int:
    """Write `index,predicted` for every row of a mixtures CSV; returns the row count."""
    fitted = FittedModel.load(model_dir)
    table = read_weights(mixtures_path)
    predicted = fitted.predict_table(table)
    with atomic_output(out_path) as handle:
        writer = csv.writer(handle)
        writer.writerow(["index", "predicted"])
        writer.writerows([row, repr(float(value))] for row, value in zip(table.index, predicted))
    return len(predicted)
