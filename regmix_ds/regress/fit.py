"""Fit: a surrogate from mixture weights to a target loss, chosen and judged by cross-validation on the proxy runs.

The surrogates (`regress.surrogates`: one interface) are `linear`, `lightgbm` (RegMix's, the
default), `loglinear` (the data-mixing law), `gp` (a Gaussian process) and `bagged` (averaged
LightGBM models). Every one is judged by k-fold cross-validation inside the training runs: each
run's out-of-fold prediction against its measured target (Spearman, Pearson, RMSE). With
`regressor: auto` every surrogate is cross-validated on the same folds and the one with the
highest Spearman (RegMix ranks candidates, so the ranking is what matters) is kept; the others
are saved too, to simulate or report on. Evaluation runs (`--eval-*`), when given, are only
reported, for every surrogate tried: never used to choose.

On RegMix's 512 runs, LightGBM's row subsampling raised the cross-validated Spearman from 0.983
to 0.986 (mean over 5 fold seeds; chosen on the training runs only); `subsample: 1.0` is RegMix's
exact setting.

A fit writes into its output directory:

* `model.json`: the sidecar: regressor, domain order, target, tree count, training support
  (each domain's largest weight), settings, input paths and hashes, and the surrogate's
  parameters (linear coefficients, the law's floor and slopes, the GP's inputs, alpha and
  hyperparameters) or the sha256 of `model.txt`;
* `model.txt`: the LightGBM booster in LightGBM's own text format (no pickle anywhere);
* `fit_report.json`: cross-validated Spearman, Pearson and RMSE of the kept surrogate and of
  every one tried (and the held-out ones);
* `cv_predictions.csv`: each run's out-of-fold prediction next to its measured target (with
  `auto`, a `predicted:<surrogate>` column for every surrogate tried);
* `candidates/<surrogate>/` (with `auto`) and `losses/<loss>/` (with `all_losses`): fit
  directories of their own, the same files but the report.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
from scipy import stats

from regmix_ds.core.config import FitConfig
from regmix_ds.core.errors import RegmixError
from regmix_ds.core.files import atomic_output, check_outputs, file_hash, json_text, read_json, settle, write_set
from regmix_ds.core.layout import FitDir
from regmix_ds.core.settings import Invalid, load_section
from regmix_ds.regress.gp import GaussianProcess
from regmix_ds.regress.surrogates import FAMILY, Candidate, Folds, LinearModel, LogLinearModel, Surrogate, out_of_fold
from regmix_ds.regress.tables import RunTable, Target, WeightTable, read_regmix_tables, read_results, read_weights
from regmix_ds.regress.trees import BaggedTrees, TreeModel, cross_validated_trees

FORMAT = "regmix-ds/fit-1"
"""Readers of this format accept every surrogate; a file written before `loglinear`, `gp` and `bagged` existed
is still one of its files."""
JSON_SURROGATES = {"linear": LinearModel, "loglinear": LogLinearModel, "gp": GaussianProcess}
"""Surrogates saved entirely in model.json, under their own name."""


MIN_TRAINING_RUNS = 2
"""Runs a fold's surrogate is fitted on, at the least: one row is no regression (and LightGBM refuses it)."""


def fold_indices(runs: int, folds: int, seed: int) -> Folds:
    """Seeded k-fold split: (training positions, held-out positions) per fold."""
    if runs < folds:
        raise Invalid(FitConfig, "folds", f"{runs} runs but {folds} folds: need at least one run per fold")
    smallest_training = runs - math.ceil(runs / folds)
    if smallest_training < MIN_TRAINING_RUNS:  # LightGBM cannot even build a dataset of one row
        raise Invalid(FitConfig, "folds", f"{runs} runs in {folds} folds leave {smallest_training} to fit on in a "
                                          f"fold; need at least {MIN_TRAINING_RUNS}")
    order = np.random.default_rng(seed).permutation(runs)
    held_out = [np.sort(part) for part in np.array_split(order, folds)]
    return [(np.setdiff1d(np.arange(runs), part), part) for part in held_out]


def cross_validated(regressor: str, weights: np.ndarray, target: np.ndarray, settings: FitConfig,
                    folds: Folds) -> Candidate:
    """Surrogate `regressor` cross-validated on `folds`, then refit on every run.

    A surrogate's own hyperparameters (the GP's kernel, the law's floor) are fitted again inside
    each fold, so no held-out run shapes its own prediction; the trees' count is chosen on the folds.
    """
    if regressor in ("lightgbm", "bagged"):
        return cross_validated_trees(regressor, weights, target, settings, folds)
    fit_one = JSON_SURROGATES[regressor].fit
    return Candidate(regressor, fit_one(weights, target), out_of_fold(fit_one, weights, target, folds))


def tried_regressors(settings: FitConfig) -> tuple[str, ...]:
    """The surrogates a fit cross-validates: all of them for `auto`, else the one asked for."""
    return FAMILY if settings.regressor == "auto" else (settings.regressor,)


def best_by_spearman(candidates: Sequence[Candidate], measured: np.ndarray) -> Candidate:
    """The candidate whose out-of-fold predictions rank the runs best (the first one on a tie)."""
    return max(candidates, key=lambda c: quality(measured, c.predictions)["spearman"] or -math.inf)


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
    """A fitted surrogate plus what is needed to use it again: domains, target, support, inputs."""

    model: Surrogate
    domains: tuple[str, ...]
    target: Target
    settings: FitConfig
    support_max: Mapping[str, float]
    """Each domain's largest weight among the training runs: the region the proxies covered."""
    inputs: Mapping[str, Mapping[str, str]]
    runs: int
    path: str = field(default="", compare=False)
    losses: tuple[str, ...] = ()
    """The losses with a model of their own in `losses/<loss>/` (fit.all_losses)."""
    candidates: tuple[str, ...] = ()
    """The surrogates `auto` tried, each kept in `candidates/<surrogate>/`."""

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

    def loss_model(self, name: str) -> FittedModel:
        """The saved model of loss `name` (one of `losses`), which must come from the same runs."""
        loss = FittedModel.load(FitDir(Path(self.path)).loss(name).path)
        if loss.inputs != self.inputs or loss.domains != self.domains:
            raise RegmixError(loss.path, f"not fitted on the runs of {self.path}; fit again")
        return loss

    def sidecar(self, booster_text: str | None, files: FitDir) -> dict[str, Any]:
        """The content of model.json (`booster_text`: model.txt's text, None for a JSON-only surrogate)."""
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
        if self.losses:
            data["losses"] = list(self.losses)
        if self.candidates:
            data["candidates"] = list(self.candidates)
        if booster_text is None:
            data[self.model.regressor] = self.model.to_json(self.domains)
            return data
        data["booster"] = {"file": files.booster.name, "sha256": hashlib.sha256(booster_text.encode()).hexdigest()}
        if isinstance(self.model, BaggedTrees):
            data["bagged"] = {"members": self.settings.members, "member_trees": self.model.member_trees}
        return data

    def rendered(self, out_dir: str | Path) -> dict[Path, str]:
        """model.txt (trees) and model.json as text by path; model.json's hash ties the two together."""
        files = FitDir(Path(out_dir))
        booster_text = self.model.booster.model_to_string() if isinstance(self.model, TreeModel) else None
        texts = {files.booster: booster_text} if booster_text is not None else {}
        texts[files.sidecar] = json_text(files.sidecar, self.sidecar(booster_text, files))
        return texts

    def save(self, out_dir: str | Path) -> None:
        """Writes model.txt and model.json as one set."""
        write_set(self.rendered(out_dir))

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
            model = _load_regressor(data, domains, settings, Path(model_dir))
            losses = tuple(str(name) for name in data.get("losses", ()))
            candidates = tuple(str(name) for name in data.get("candidates", ()))
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise RegmixError(path, f"malformed model file ({type(err).__name__}: {err})") from None
        return cls(model, domains, target, settings, support, inputs, runs, str(model_dir), losses, candidates)


def _saved_settings(data: Any, path: Path) -> FitConfig:
    try:
        return load_section(FitConfig, data, "settings")
    except RegmixError as err:
        raise RegmixError(path, f"malformed settings ({err})") from None


def _load_regressor(data: Mapping[str, Any], domains: tuple[str, ...], settings: FitConfig,
                    model_dir: Path) -> Surrogate:
    regressor = data["regressor"]
    if regressor in JSON_SURROGATES:
        return JSON_SURROGATES[regressor].from_json(data[regressor], domains)
    if regressor not in ("lightgbm", "bagged"):
        raise ValueError(f"unknown regressor {regressor!r}")
    booster = _load_booster(data, domains, model_dir)
    if regressor == "bagged":
        return BaggedTrees(booster, settings, int(data["bagged"]["member_trees"]))
    return TreeModel(booster, settings)


def _load_booster(data: Mapping[str, Any], domains: tuple[str, ...], model_dir: Path) -> lgb.Booster:
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
    return booster


@dataclass(frozen=True)
class FitResult:
    """Everything a fit computed, before anything is written."""

    chosen: Candidate
    tried: list[Candidate]
    losses: dict[str, Candidate]
    measured: np.ndarray


def fit(
    table: RunTable, target: Target, settings: FitConfig, out_dir: str | Path, evaluation: RunTable | None = None
) -> dict[str, Any]:
    """Cross-validate, refit on all runs, optionally evaluate on held-out runs, then write the outputs.

    Everything is computed before the first file is written, so a bad input leaves nothing.
    """
    files = FitDir(Path(out_dir))
    check_outputs([files.sidecar, files.booster, files.report, files.cv_predictions],
                  [entry["path"] for entry in table.inputs.values()])
    target = target.resolved(table)
    measured = target.values(table)
    held_out = _evaluation_data(evaluation, target, table.domains) if evaluation is not None else None
    folds = fold_indices(len(measured), settings.folds, settings.seed)
    tried = [cross_validated(name, table.weights, measured, settings, folds) for name in tried_regressors(settings)]
    chosen = best_by_spearman(tried, measured)
    losses = {}
    if settings.all_losses:
        losses = {name: cross_validated(chosen.regressor, table.weights, loss_values(table, name), settings, folds)
                  for name in table.losses}
    result = FitResult(chosen, tried, losses, measured)
    report = fit_report(result, table, target, settings, held_out)
    texts = _rendered(result, table, target, settings, files)
    texts[files.report] = json_text(files.report, report)
    # One set: a fit killed at any instant leaves the previous fit whole (model, report and
    # predictions agreeing), or the new one.
    write_set(texts, inputs=[entry["path"] for entry in table.inputs.values()])
    return report


def fit_report(result: FitResult, table: RunTable, target: Target, settings: FitConfig,
               held_out: tuple | None) -> dict[str, Any]:
    """The content of fit_report.json."""
    measured, chosen = result.measured, result.chosen
    report = {
        "target": target.label,
        "target_terms": target.to_json(),
        "regressor": chosen.regressor,
        "runs": len(measured),
        "domains": list(table.domains),
        "trees": chosen.trees,
        "cross_validation": {"folds": settings.folds,
                             "metrics": {target.label: quality(measured, chosen.predictions)}},
        "selection": {
            "requested": settings.regressor,
            "by": "cross-validated Spearman",
            "candidates": {c.regressor: {"metrics": quality(measured, c.predictions), "trees": c.trees}
                           for c in result.tried},
        },
        "settings": dataclasses.asdict(settings),
        "inputs": {role: dict(entry) for role, entry in table.inputs.items()},
    }
    if result.losses:
        report["losses"] = {name: {"metrics": quality(loss_values(table, name), loss.predictions)}
                            for name, loss in result.losses.items()}
    if held_out is not None:
        eval_weights, eval_measured, eval_inputs = held_out
        report["evaluation"] = {
            "metrics": {target.label: quality(eval_measured, chosen.model.predict(eval_weights))},
            "candidates": {c.regressor: quality(eval_measured, c.model.predict(eval_weights)) for c in result.tried},
            "inputs": eval_inputs,
        }
    return report


def loss_values(table: RunTable, name: str) -> np.ndarray:
    """The measured loss `name` of every run."""
    return Target(((name, 1.0),)).values(table)


def _rendered(result: FitResult, table: RunTable, target: Target, settings: FitConfig,
              files: FitDir) -> dict[Path, str]:
    """Every file of the fit as text by path: the kept model, each surrogate tried, each loss's model."""
    support = dict(zip(table.domains, table.weights.max(axis=0).tolist()))

    def model_files(candidate: Candidate, what: Target, place: FitDir, own: FitConfig | None = None,
                    **listed) -> dict[Path, str]:
        own = own or dataclasses.replace(settings, regressor=candidate.regressor, target=what.label)
        return FittedModel(candidate.model, table.domains, what, own, support, table.inputs, len(table.index),
                           str(place.path), **listed).rendered(place.path)

    texts: dict[Path, str] = {}
    candidates = result.tried if len(result.tried) > 1 else []
    for candidate in candidates:
        place = files.candidate(candidate.regressor)
        texts[place.cv_predictions] = _cv_predictions_csv(table.index, result.measured,
                                                          {"predicted": candidate.predictions})
        texts.update(model_files(candidate, target, place))
    for name, loss in result.losses.items():
        texts.update(model_files(loss, Target(((name, 1.0),)), files.loss(name)))
    columns = {"predicted": result.chosen.predictions}
    columns.update({f"predicted:{c.regressor}": c.predictions for c in candidates})
    texts[files.cv_predictions] = _cv_predictions_csv(table.index, result.measured, columns)
    texts.update(model_files(result.chosen, target, files, settings, losses=tuple(result.losses),
                             candidates=tuple(c.regressor for c in candidates)))
    return texts


def _evaluation_data(evaluation: RunTable, target: Target, domains: tuple[str, ...]):
    return (
        evaluation.mixtures.aligned(domains),
        target.values(evaluation, "--eval-losses"),
        {role: dict(entry) for role, entry in evaluation.inputs.items()},
    )


def _cv_predictions_csv(index, measured: np.ndarray, predicted: Mapping[str, np.ndarray]) -> str:
    handle = io.StringIO()
    writer = csv.writer(handle)
    writer.writerow(["index", "measured", *predicted])
    for row, position in zip(index, range(len(measured))):
        writer.writerow([row, repr(float(measured[position])),
                         *(repr(float(column[position])) for column in predicted.values())])
    return handle.getvalue()


def read_cv_predictions(model_dir: str | Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(measured, {surrogate: out-of-fold predicted}) as `fit` wrote them; the kept surrogate is `predicted`."""
    path = FitDir(Path(model_dir)).cv_predictions
    settle(path)  # a fit killed mid-commit is finished first, as every reader of a set does
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle)
            rows = list(reader)
            columns = [c for c in reader.fieldnames or () if c.startswith("predicted")]
        if "predicted" not in columns:
            raise KeyError("predicted")
        measured = np.array([float(r["measured"]) for r in rows])
        predicted = {c: np.array([float(r[c]) for r in rows]) for c in columns}
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
