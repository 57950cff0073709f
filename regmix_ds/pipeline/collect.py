"""The collect stage: every proxy's `result.json` -> `results.csv`, and what is still to do.

`results.csv` has one row per swarm member: `index`, `status` (done / running / failed /
missing / pending), `round` (the swarm round that drew it), `w:<domain>` for each mixture
weight, `loss:<name>` for each validation set (domains, then targets; empty unless done),
`tokens` and `wall_seconds`. `fit` reads the `done` rows. Each tier (the swarm, the transfer
check's larger proxies) has a table of its own.

A proxy is `done` when its `result.json` exists; otherwise `pending` or `running` when Slurm
holds the array task that trains it (`queued`, from `pipeline.slurm.queued_tasks`); `failed`
when it left `failed.json` or its run directory has not changed for `stale_seconds` (a killed
task writes nothing); `running` when its directory changed recently (metrics.jsonl grows every
step); `missing` when it has none. Without Slurm's answer a task still waiting in the queue
counts as missing.
"""
from __future__ import annotations

import csv
import math
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from regmix_ds.core.config import ExperimentConfig
from regmix_ds.core.errors import RegmixError
from regmix_ds.core.files import atomic_output, newest_mtime, read_json
from regmix_ds.core.layout import Tier, TierDir
from regmix_ds.core.manifest import Manifest
from regmix_ds.core.mixture import Mixture
from regmix_ds.pipeline.proxies import group_size, swarm_indices

STATUSES = ("done", "running", "failed", "missing", "pending")


@dataclass(frozen=True)
class ProxyRow:
    """One member as collect found it: its status, its mixture and round, and its result.json once done."""

    index: int
    status: str
    mixture: Mixture
    result: dict[str, Any] | None
    round: int = 1
    """The swarm round that drew it (1, or a later `swarm --next-round`)."""


@dataclass(frozen=True)
class Collection:
    """Every swarm member's row, in swarm order: what `collect` wrote to results.csv."""

    rows: list[ProxyRow]

    def indices(self, *statuses: str) -> list[int]:
        """The swarm indices of the members with one of `statuses`, in swarm order."""
        return [row.index for row in self.rows if row.status in statuses]

    def counts(self) -> Counter:
        """How many members have each status."""
        return Counter(row.status for row in self.rows)


def collect(experiment: ExperimentConfig, stale_seconds: float = 1800.0,
            queued: Mapping[int, str] | None = None, tier: Tier = "swarm") -> Collection:
    """Read the state of every member of a tier and write its `results.csv` atomically.

    `queued`: array task id -> 'pending' or 'running', for the tasks Slurm holds (None: not asked).
    """
    now = time.time()
    held = held_by_slurm(experiment, queued or {}, tier)
    rows = [_proxy_row(experiment.work.tier(tier), index, stale_seconds, now, held.get(index))
            for index in swarm_indices(experiment, tier)]
    collection = Collection(rows)
    write_results(experiment.work.tier(tier).results, collection, _loss_names(experiment, rows))
    return collection


def held_by_slurm(experiment: ExperimentConfig, queued: Mapping[int, str], tier: Tier = "swarm") -> dict[int, str]:
    """Index -> the state of the queued array task that trains it (a task trains its group)."""
    size = group_size(experiment, tier)
    return {index: state for task, state in queued.items() for index in range(task, task + size)}


def _proxy_row(where: TierDir, index: int, stale_seconds: float, now: float, held: str | None) -> ProxyRow:
    mixture, metadata = Mixture.load_with_metadata(where.mixture(index))
    round_ = _round_of(metadata, where.mixture(index))
    run = where.proxy(index)
    if run.is_done():
        result = read_json(run.result)
        _check_result(result, run.result, mixture)
        return ProxyRow(index, "done", mixture, result, round_)
    if held is not None:
        status = held
    elif not run.path.is_dir():
        status = "missing"
    elif run.failed.is_file() or now - newest_mtime(run.path) > stale_seconds:
        status = "failed"
    else:
        status = "running"
    return ProxyRow(index, status, mixture, None, round_)


def _round_of(metadata: Mapping[str, Any], path: Path) -> int:
    """A member's round from its mixture file (files from before rounds existed are round 1)."""
    value = metadata.get("round", 1)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise RegmixError(path, f'"round" must be a positive integer, got {value!r}')
    return value


def _check_result(result: Any, path: Path, mixture: Mixture) -> None:
    if not isinstance(result, dict) or not isinstance(result.get("valid_loss"), dict):
        raise RegmixError(path, 'not a proxy result (no "valid_loss" mapping)')
    if result.get("mixture_hash") != mixture.content_hash():
        raise RegmixError(path, "trained on a different mixture than the swarm's (mixture_hash differs)")
    for name, loss in result["valid_loss"].items():
        if not isinstance(loss, (int, float)) or not math.isfinite(loss):
            raise RegmixError(path, f"validation loss of {name!r} is not a finite number: {loss!r}")


def _loss_names(experiment: ExperimentConfig, rows: list[ProxyRow]) -> list[str]:
    """Validation sets in manifest order (domains, then targets); any others after them."""
    seen = [name for row in rows if row.result for name in row.result["valid_loss"]]
    manifest = experiment.work.manifest
    ordered = list(Manifest.load(manifest).valid) if manifest.is_file() else []
    return ordered + [name for name in dict.fromkeys(seen) if name not in ordered]


def write_results(path: Path, collection: Collection, loss_names: list[str]) -> None:
    """Write `results.csv` atomically: one row per member, numbers as exact reprs, blank where unknown."""
    domains = list(collection.rows[0].mixture.domains)
    header = ["index", "status", "round", *(f"w:{d}" for d in domains), *(f"loss:{n}" for n in loss_names),
              "tokens", "wall_seconds"]
    with atomic_output(path) as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        for row in collection.rows:
            result = row.result or {}
            losses = result.get("valid_loss", {})
            writer.writerow([
                row.index, row.status, row.round, *(repr(row.mixture.weights.get(d, 0.0)) for d in domains),
                *(repr(losses[n]) if n in losses else "" for n in loss_names),
                result.get("tokens", ""), result.get("wall_seconds", ""),
            ])
