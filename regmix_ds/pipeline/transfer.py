"""The transfer check: train some of the swarm's mixtures again with larger proxies, and compare the ranks.

`select` picks `transfer.count` swarm members spread evenly over the range of the fit's
predictions (the lowest and the highest included), plus the chosen mixture (best.json) and the
natural one (token shares); they become the `transfer` tier (`transfer/swarm/n<i>.json`, each
naming where it came from), trained like the swarm with the larger model and budget of the
`transfer:` section (`slurm/proxies.sh exp.yaml transfer`, or `regmix-ds run-swarm --tier
transfer`), with the same idempotence and requeue. `compare` then pairs each member's larger
loss with its swarm loss (`regress.transfer`), says where the chosen mixture ranks at the larger
size, and writes `transfer/transfer.json`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from regmix_ds.core.config import ExperimentConfig
from regmix_ds.core.errors import RegmixError
from regmix_ds.core.files import write_json_atomic
from regmix_ds.core.manifest import Manifest
from regmix_ds.core.mixture import Mixture
from regmix_ds.pipeline.swarm import write_mixtures
from regmix_ds.regress.fit import FittedModel
from regmix_ds.regress.tables import Target, read_results
from regmix_ds.regress.transfer import Agreement, paired_losses, rank_agreement, rank_of


def select(experiment: ExperimentConfig) -> list[tuple[Mixture, dict[str, Any]]]:
    """The transfer tier's mixtures, each with where it came from (writes nothing)."""
    work, count = experiment.work, experiment.transfer.count
    table = read_results(work.results)
    if len(table.index) < count:
        raise RegmixError("transfer.count", f"{count} mixtures asked, the swarm has {len(table.index)} finished runs")
    fitted = FittedModel.load(work.fit.path)
    predicted = fitted.model.predict(table.mixtures.aligned(fitted.domains))
    order = np.argsort(predicted, kind="stable")
    # Evenly over the predicted range, lowest first (ties of rounding collapse: a tiny swarm may give fewer).
    picks = list(dict.fromkeys(int(order[round(p)]) for p in np.linspace(0, len(order) - 1, count)))
    chosen = [(_as_mixture(table, i), {"source": f"swarm n{table.index[i]}", "swarm_index": int(table.index[i]),
                                        "predicted": float(predicted[i])}) for i in picks]
    manifest = Manifest.load(work.manifest)
    natural = Mixture.from_weights(manifest.token_prior(), source=work.manifest)
    best = Mixture.load(work.best)
    return chosen + [(best, {"source": "chosen"}), (natural, {"source": "natural"})]


def _as_mixture(table, row: int) -> Mixture:
    return Mixture.from_weights(dict(zip(table.domains, table.weights[row].tolist())), renormalize=True,
                                source=table.mixtures.source)


def write_selection(experiment: ExperimentConfig, selection: list[tuple[Mixture, dict[str, Any]]]) -> None:
    """The transfer tier's `swarm/`, written whole; an existing one is kept (its runs may be under way)."""
    tier = experiment.work.tier("transfer")
    settings = {"transfer": dataclasses.asdict(experiment.transfer), "count": len(selection)}
    write_mixtures(tier.swarm.path, selection, settings)


@dataclass(frozen=True)
class Comparison:
    """What the transfer check found."""

    agreement: Agreement
    chosen_rank: int
    ranked: int
    verdict: str


def compare(experiment: ExperimentConfig) -> Comparison:
    """Rank agreement of the swarm's and the larger proxies' target losses; writes `transfer/transfer.json`."""
    work, settings = experiment.work, experiment.transfer
    if not experiment.fit.target:
        raise RegmixError(f"{experiment.path}: fit.target", "required: the loss both sizes are ranked by")
    target = Target.parse(experiment.fit.target, "fit.target")
    small, large = read_results(work.results), read_results(work.tier("transfer").results)
    pairs = paired_losses(small, large, target)
    agreement = rank_agreement(pairs.small, pairs.large, resamples=settings.bootstrap,
                               confidence=settings.confidence, seed=settings.seed, threshold=settings.min_spearman)
    large_losses = target.values(large)
    chosen_row = _row_of_source(experiment, large, "chosen")
    rank = rank_of(large_losses[chosen_row], large_losses)
    larger = settings.preset or settings.model_config
    verdict = agreement.verdict(experiment.require_proxy().preset or "proxies", larger)
    verdict += f"; the chosen mixture ranks {rank} of {len(large_losses)} at {larger}"
    write_json_atomic(work.transfer_report, {
        "verdict": verdict, "transfers": agreement.transfers, **dataclasses.asdict(agreement),
        "chosen_rank": rank, "ranked": len(large_losses), "target": target.label,
        "paired_losses": {key: {"small": float(small_loss), "large": float(large_loss)}
                  for key, small_loss, large_loss in zip(pairs.keys, pairs.small, pairs.large)},
        "large_losses": {key: float(value) for key, value in zip(large.index, large_losses)},
    })
    return Comparison(agreement, rank, len(large_losses), verdict)


def _row_of_source(experiment: ExperimentConfig, large, source: str) -> int:
    """The row of the large table whose mixture file says it came from `source`."""
    tier = experiment.work.tier("transfer")
    for row, index in enumerate(large.index):
        _, metadata = Mixture.load_with_metadata(tier.mixture(int(index)))
        if metadata.get("source") == source:
            return row
    raise RegmixError(tier.results, f"no finished run of the {source} mixture")
