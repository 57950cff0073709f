"""Report: PNG plots of a fit and of the mixture simulation chose.

* `predicted_vs_measured.png`: each proxy run's cross-validated (out-of-fold) prediction
  against its measured target, with Spearman, Pearson and RMSE;
* `weights.png` (with a best.json): the chosen weight of every domain with its bootstrap
  interval, next to the prior;
* `domain_vs_target.png`: each domain's weight against the target across the proxy runs.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from regmix_ds.core.errors import RegmixError
from regmix_ds.core.files import atomic_output, read_json
from regmix_ds.core.layout import FitDir
from regmix_ds.core.mixture import Mixture
from regmix_ds.regress.fit import FittedModel, format_quality, quality, read_cv_predictions

PANEL_COLUMNS = 4


def _save(figure: Figure, path: Path) -> Path:
    # Figure objects, not pyplot: no global backend or figure registry to manage.
    with atomic_output(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=110, bbox_inches="tight")
    return path


def predicted_vs_measured(measured: np.ndarray, predicted: np.ndarray, label: str):
    """Scatter of out-of-fold predictions against measurements, with the diagonal."""
    scores = quality(measured, predicted)
    figure = Figure(figsize=(5.5, 5))
    axes = figure.subplots()
    axes.scatter(measured, predicted, s=10, alpha=0.6)
    low, high = float(min(measured.min(), predicted.min())), float(max(measured.max(), predicted.max()))
    axes.plot([low, high], [low, high], color="grey", linewidth=1, linestyle="--")
    axes.set_xlabel(f"measured {label}")
    axes.set_ylabel(f"predicted {label} (cross-validated)")
    axes.set_title(format_quality(scores), fontsize=10)
    return figure


def chosen_weights(best: dict, mixture: Mixture):
    """Bars: chosen weight (with interval, when there is one) next to the prior, per domain."""
    domains = list(mixture.domains)
    positions = np.arange(len(domains))
    chosen = mixture.vector(domains)
    prior = best.get("prior") or {}
    intervals = best.get("intervals", {}).get("weights")
    figure = Figure(figsize=(max(6, 0.5 * len(domains) + 2), 4.5))
    axes = figure.subplots()
    axes.bar(positions - 0.2, [prior.get(d, 0.0) for d in domains], width=0.4, label="prior", color="lightgrey")
    errors = None
    if intervals:
        bounds = np.array([intervals[d] for d in domains])
        errors = np.clip(np.vstack([chosen - bounds[:, 0], bounds[:, 1] - chosen]), 0, None)
    axes.bar(positions + 0.2, chosen, width=0.4, yerr=errors, capsize=3, label="chosen", color="tab:blue")
    axes.set_xticks(positions, domains, rotation=60, ha="right")
    axes.set_ylabel("weight")
    title = f"predicted {best.get('target', 'target')}: {best.get('predicted_target', float('nan')):.4g}"
    if intervals:
        title += f" ({100 * best['intervals']['confidence']:.0f}% intervals, {best['intervals']['bootstrap']} refits)"
    axes.set_title(title)
    axes.legend()
    return figure


def domain_vs_target(domains: tuple[str, ...], weights: np.ndarray, target: np.ndarray, label: str):
    """One panel per domain: its weight in each proxy run against the run's target."""
    rows = math.ceil(len(domains) / PANEL_COLUMNS)
    figure = Figure(figsize=(3.2 * PANEL_COLUMNS, 2.6 * rows))
    grid = figure.subplots(rows, PANEL_COLUMNS, sharey=True, squeeze=False)
    for panel, axes in enumerate(grid.flat):
        if panel >= len(domains):
            axes.set_visible(False)
            continue
        axes.scatter(weights[:, panel], target, s=6, alpha=0.5)
        axes.set_title(domains[panel], fontsize=9)
        axes.set_xlabel("weight", fontsize=8)
    for axes in grid[:, 0]:
        axes.set_ylabel(label, fontsize=8)
    figure.tight_layout()
    return figure


def report(model_dir: str | os.PathLike, out_dir: str | os.PathLike,
           best_path: str | os.PathLike | None = None) -> list[Path]:
    """Write the report's PNGs into `out_dir`; inputs are all read before the first one is written."""
    fitted = FittedModel.load(model_dir)
    measured, predicted = read_cv_predictions(model_dir)
    weights, target = fitted.training_data()
    best = mixture = None
    if best_path is not None:
        mixture = Mixture.load(best_path)
        best = read_json(best_path)
        mixture.check_domains(fitted.domains, best_path)
    if len(measured) != len(target):
        raise RegmixError(FitDir(Path(model_dir)).cv_predictions, "does not match the training runs; fit again")
    label = fitted.target.label
    out_dir = Path(out_dir)
    written = [
        _save(predicted_vs_measured(measured, predicted, label), out_dir / "predicted_vs_measured.png"),
        _save(domain_vs_target(fitted.domains, weights, target, label), out_dir / "domain_vs_target.png"),
    ]
    if best is not None:
        written.append(_save(chosen_weights(best, mixture), out_dir / "weights.png"))
    return written
