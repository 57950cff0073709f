"""Report: PNG plots of a fit and of the mixtures simulate chose.

* `predicted_vs_measured.png`: each proxy run's cross-validated (out-of-fold) prediction
  against its measured target, with Spearman, Pearson and RMSE; after `fit --regressor auto`
  one panel per surrogate tried, side by side, the kept one marked;
* `weights.png` (with one or more best.json): the chosen weight of every domain with its
  bootstrap interval, next to the prior; several best.json (say one per surrogate) side by side;
* `domain_vs_target.png`: each domain's weight against the target across the proxy runs;
* `rounds.png` (a swarm of more than one round): each run's target by swarm index, coloured by
  round, with the best so far: what each `swarm --next-round` bought;
* `transfer.png` (with a transfer.json): the small proxies' target loss against the larger
  ones' for the mixtures trained at both sizes, the verdict as its title.
"""
from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from regmix_ds.core.errors import RegmixError
from regmix_ds.core.files import read_json, write_set
from regmix_ds.core.layout import FitDir
from regmix_ds.core.mixture import Mixture
from regmix_ds.regress.fit import FittedModel, format_quality, quality, read_cv_predictions
from regmix_ds.regress.tables import run_rounds

PANEL_COLUMNS = 4


def _png(figure: Figure) -> bytes:
    # Figure objects, not pyplot: no global backend or figure registry to manage.
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def surrogate_panels(columns: Mapping[str, np.ndarray], kept: str) -> dict[str, np.ndarray]:
    """Panel title -> out-of-fold predictions: one per surrogate tried, else the kept one alone."""
    tried = {name.split(":", 1)[1]: values for name, values in columns.items() if ":" in name}
    if not tried:
        return {kept: columns["predicted"]}
    return {f"{name} (kept)" if name == kept else name: values for name, values in tried.items()}


def predicted_vs_measured(measured: np.ndarray, panels: Mapping[str, np.ndarray], label: str):
    """Scatter of out-of-fold predictions against measurements, with the diagonal: one panel per surrogate."""
    figure = Figure(figsize=(5.5 * len(panels), 5))
    for axes, (name, predicted) in zip(np.atleast_1d(figure.subplots(1, len(panels), sharey=True)), panels.items()):
        axes.scatter(measured, predicted, s=10, alpha=0.6)
        low, high = float(min(measured.min(), predicted.min())), float(max(measured.max(), predicted.max()))
        axes.plot([low, high], [low, high], color="grey", linewidth=1, linestyle="--")
        axes.set_xlabel(f"measured {label}")
        axes.set_title(f"{name}\n{format_quality(quality(measured, predicted))}", fontsize=10)
    figure.axes[0].set_ylabel(f"predicted {label} (cross-validated)")
    return figure


def _series_label(best: Mapping) -> str:
    """`gp, optimize`: which surrogate and proposer chose a best.json's mixture."""
    model = best.get("model") or {}
    return f"{model.get('regressor', 'chosen')}, {best.get('proposer', 'topk')}"


def chosen_weights(best: dict, mixture: Mixture, compared: Sequence[tuple[dict, Mixture]] = ()):
    """Bars per domain: the prior, then each chosen mixture (with its interval, when there is one)."""
    entries = [(best, mixture), *compared]
    domains = list(mixture.domains)
    positions = np.arange(len(domains))
    width = 0.8 / (len(entries) + 1)
    figure = Figure(figsize=(max(6, (0.3 + 0.2 * len(entries)) * len(domains) + 2), 4.5))
    axes = figure.subplots()
    prior = best.get("prior") or {}
    offset = -0.4 + width / 2
    axes.bar(positions + offset, [prior.get(d, 0.0) for d in domains], width=width, label="prior", color="lightgrey")
    for number, (entry, chosen_mixture) in enumerate(entries, start=1):
        chosen = chosen_mixture.vector(domains)
        intervals = entry.get("intervals", {}).get("weights")
        errors = None
        if intervals:
            bounds = np.array([intervals[d] for d in domains])
            errors = np.clip(np.vstack([chosen - bounds[:, 0], bounds[:, 1] - chosen]), 0, None)
        label = "chosen" if not compared else _series_label(entry)
        axes.bar(positions + offset + number * width, chosen, width=width, yerr=errors, capsize=3, label=label)
    axes.set_xticks(positions, domains, rotation=60, ha="right")
    axes.set_ylabel("weight")
    axes.set_title(_weights_title(best, compared))
    axes.legend()
    return figure


def _weights_title(best: dict, compared: Sequence) -> str:
    intervals = best.get("intervals", {})
    shown = ""
    if intervals.get("weights"):
        shown = (f" ({100 * intervals['confidence']:.0f}% nominal {intervals.get('method', 'percentile')} intervals, "
                 f"{intervals['bootstrap']} refits)")
    if compared:
        return f"chosen mixtures{shown}"
    return f"predicted {best.get('target', 'target')}: {best.get('predicted_target', float('nan')):.4g}{shown}"


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


def round_progress(index: Sequence[str], rounds: Mapping[str, int], target: np.ndarray, label: str):
    """Each run's target by swarm index, one colour per round, and the best found so far."""
    order = np.argsort([int(i) for i in index])
    members = np.array([int(index[i]) for i in order])
    values, run_round = target[order], np.array([rounds[index[i]] for i in order])
    figure = Figure(figsize=(7, 4.5))
    axes = figure.subplots()
    for round_ in sorted(set(run_round.tolist())):
        chosen = run_round == round_
        axes.scatter(members[chosen], values[chosen], s=14, label=f"round {round_} ({chosen.sum()} runs)")
    axes.step(members, np.minimum.accumulate(values), where="post", color="black", lw=1, label="best so far")
    axes.set(xlabel="swarm member", ylabel=label, title="What each round found")
    axes.legend()
    return figure


def transfer_scatter(comparison: Mapping):
    """Small proxies' target loss against the larger ones' for the mixtures trained at both sizes."""
    pairs = comparison["paired_losses"]
    small = np.array([pair["small"] for pair in pairs.values()])
    large = np.array([pair["large"] for pair in pairs.values()])
    figure = Figure(figsize=(6, 5))
    axes = figure.subplots()
    axes.scatter(small, large, s=18)
    axes.set(xlabel=f"{comparison['target']} (swarm proxies)", ylabel=f"{comparison['target']} (larger proxies)")
    axes.set_title(comparison["verdict"], fontsize=8, wrap=True)
    return figure


def _transfer_comparison(path: str | os.PathLike) -> dict:
    comparison = read_json(path)
    if not isinstance(comparison, dict) or not {"paired_losses", "verdict", "target"} <= comparison.keys():
        raise RegmixError(path, "not a transfer.json of regmix-ds transfer")
    pairs = comparison["paired_losses"]
    if not isinstance(pairs, dict) or not all(
            isinstance(p, dict) and all(isinstance(p.get(k), (int, float)) and not isinstance(p.get(k), bool)
                                        for k in ("small", "large")) for p in pairs.values()):
        raise RegmixError(path, "paired_losses must map each mixture to numbers 'small' and 'large'")
    return comparison


def report(model_dir: str | os.PathLike, out_dir: str | os.PathLike,
           best_paths: Sequence[str | os.PathLike] | str | os.PathLike | None = None,
           transfer: str | os.PathLike | None = None) -> list[Path]:
    """Write the report's PNGs into `out_dir`; inputs are all read before the first one is written."""
    fitted = FittedModel.load(model_dir)
    measured, columns = read_cv_predictions(model_dir)
    weights, target = fitted.training_data()
    if best_paths is None or isinstance(best_paths, (str, os.PathLike)):
        best_paths = [] if best_paths is None else [best_paths]
    bests = []
    for path in best_paths:
        mixture = Mixture.load(path)
        mixture.check_domains(fitted.domains, path)
        bests.append((read_json(path), mixture))
    comparison = _transfer_comparison(transfer) if transfer is not None else None
    results = fitted.inputs.get("results")
    rounds = run_rounds(results["path"]) if results is not None else {}
    if len(measured) != len(target):
        raise RegmixError(FitDir(Path(model_dir)).cv_predictions, "does not match the training runs; fit again")
    label = fitted.target.label
    panels = surrogate_panels(columns, fitted.model.regressor)
    out_dir = Path(out_dir)
    pngs = {
        out_dir / "predicted_vs_measured.png": _png(predicted_vs_measured(measured, panels, label)),
        out_dir / "domain_vs_target.png": _png(domain_vs_target(fitted.domains, weights, target, label)),
    }
    if bests:
        pngs[out_dir / "weights.png"] = _png(chosen_weights(*bests[0], compared=bests[1:]))
    if len(set(rounds.values())) > 1:
        index = fitted.training_table().mixtures.index
        pngs[out_dir / "rounds.png"] = _png(round_progress(index, rounds, target, label))
    if comparison is not None:
        pngs[out_dir / "transfer.png"] = _png(transfer_scatter(comparison))
    write_set(pngs)  # killed at any instant: the previous report or this one, never a mix
    return list(pngs)
