"""The swarm stage: N random mixtures, one per proxy run, sampled around the token prior.

RegMix's sampler, with its parameters passed explicitly: per mixture a strength s is drawn
uniformly from a log-spaced grid and the weights from Dirichlet(s * prior^temperature); weights
under `min_weight` become 0 and the rest are renormalised; the mixture is kept only if every
domain stays under its usage bound (cap x prior share, and at most `max_epochs` passes over its
train tokens at `proxy_tokens`) and it is not within `dedup_distance` (L1) of a kept one.

Output, written all-or-nothing (staged in a hidden directory, then renamed into place):
`n<i>.json` (i = 1..N, as RegMix numbers its proxies), `swarm.csv` (`index` then one column per
domain, RegMix's layout) and `settings.json` (resolved settings, prior and bounds).
"""
from __future__ import annotations

import dataclasses
import io
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from regmix_ds.core.config import ExperimentConfig, SwarmConfig
from regmix_ds.core.errors import RegmixError
from regmix_ds.core.files import replace_directory, write_json_atomic, write_text_atomic
from regmix_ds.core.layout import SwarmDir
from regmix_ds.core.manifest import Manifest
from regmix_ds.core.mixture import Mixture, read_prior
from regmix_ds.core.settings import Invalid

DRAW_BATCH = 1024
"""Candidates drawn per vectorised step. Fixed, so a seed always consumes the same stream."""
DRAWS_PER_MIXTURE = 1000
"""Give up after this many candidates per requested mixture (a cap or dedup that is too tight)."""


@dataclass(frozen=True)
class Swarm:
    """The sampled mixtures, row i-1 being proxy i, with the strength each was drawn at."""

    domains: tuple[str, ...]
    weights: np.ndarray
    strengths: np.ndarray
    draws: int
    """Candidates drawn to find them (acceptance rate = n / draws)."""

    def mixtures(self) -> list[Mixture]:
        """Each row as a renormalised Mixture, in proxy order (the first is proxy 1)."""
        return [
            Mixture.from_weights(dict(zip(self.domains, row)), renormalize=True, source=f"swarm mixture {i}")
            for i, row in enumerate(self.weights, start=1)
        ]


def sampling_prior(path: str | os.PathLike) -> dict[str, float]:
    """A prior file (`core.mixture.read_prior`) renormalised, every share positive: the swarm
    samples around it, and a domain with no share could never be drawn."""
    prior = Mixture.from_weights(read_prior(path), renormalize=True, source=path).weights
    empty = [name for name, share in prior.items() if share <= 0]
    if empty:
        raise RegmixError(path, f"prior share must be > 0, is 0 for {', '.join(empty)}")
    return dict(prior)


def usage_bounds(
    prior: np.ndarray, config: SwarmConfig, tokens: np.ndarray | None = None
) -> np.ndarray:
    """Largest weight each domain may get: cap x prior, and with token counts and
    `proxy_tokens`, no more than `max_epochs` passes over the domain's train tokens."""
    bound = np.minimum(config.cap * prior, 1.0)
    if tokens is not None and config.proxy_tokens is not None:
        bound = np.minimum(bound, config.max_epochs * tokens / config.proxy_tokens)
    return bound


def sample_swarm(
    prior: Mapping[str, float], config: SwarmConfig, tokens: Mapping[str, int] | None = None
) -> Swarm:
    """Draw `config.n` distinct mixtures (see the module docstring) from one seeded generator."""
    config = config.resolved()
    domains = tuple(prior)
    shares = np.array([prior[name] for name in domains], dtype=np.float64)
    token_counts = None if tokens is None else np.array([tokens[name] for name in domains], dtype=np.float64)
    bound = usage_bounds(shares, config, token_counts)
    _check_feasible(shares, config, bound)

    rng = np.random.default_rng(config.seed)
    prior_draws = prior_proposal(rng, shares, config)
    kept = DistinctRows(config.n, len(domains), config.dedup_distance)
    draws = fill(kept, prior_draws, bound, config.n)
    return Swarm(domains, kept.rows, kept.strengths, draws)


def prior_proposal(rng: np.random.Generator, shares: np.ndarray, config: SwarmConfig) -> Proposal:
    """Round 1's draws: Dirichlet(strength x prior^temperature), strength from the log-spaced grid."""
    base = _tempered(shares, config.temperature)
    grid = np.geomspace(config.min_strength, config.max_strength, config.strength_steps)
    return lambda size: _draw(rng, base, grid, size, config.min_weight)


Proposal = Callable[[int], tuple[np.ndarray, np.ndarray]]
"""size -> (`size` candidate mixtures, the Dirichlet strength of each)."""


def fill(kept: DistinctRows, propose: Proposal, bound: np.ndarray, until: int) -> int:
    """Offer `propose`'s candidates inside `bound` to `kept` until it holds `until` mixtures; the draws it took.

    Gives up (one clear error) after DRAWS_PER_MIXTURE candidates per wanted mixture: a cap or a
    dedup distance that is too tight for the count asked.
    """
    draws, budget = 0, DRAWS_PER_MIXTURE * until
    while kept.count < until and draws < budget:
        size = min(DRAW_BATCH, budget - draws)
        candidates, strengths = propose(size)
        within = np.all(candidates <= bound, axis=1)  # NaN rows (all weights under min) fail too
        for index in np.flatnonzero(within):
            kept.offer(candidates[index], strengths[index])
            if kept.count == until:
                size = int(index) + 1  # the rest of the batch was never looked at
                break
        draws += size
    if kept.count < until:
        raise Invalid(
            SwarmConfig, "n",
            f"found only {kept.count} distinct mixtures within the usage caps in {draws} draws, "
            f"{until} requested: ask for fewer, lower dedup_distance or loosen cap/max_epochs",
        )
    return draws


class DistinctRows:
    """Up to `n` kept mixtures, none within `distance` (L1) of another or of an `earlier` one."""

    def __init__(self, n: int, width: int, distance: float, earlier: np.ndarray | None = None):
        self.rows, self.strengths = np.empty((n, width)), np.empty(n)
        self.count, self.distance = 0, distance
        self.earlier = np.empty((0, width)) if earlier is None else earlier

    def offer(self, row: np.ndarray, strength: float) -> None:
        """Keep `row` unless it is a near-duplicate."""
        seen = np.concatenate([self.earlier, self.rows[: self.count]])
        if len(seen) and np.abs(seen - row).sum(axis=1).min() < self.distance:
            return
        self.rows[self.count], self.strengths[self.count] = row, strength
        self.count += 1


def _check_feasible(shares: np.ndarray, config: SwarmConfig, bound: np.ndarray) -> None:
    """Weights sum to 1, so the bounds must too; otherwise no draw could ever be kept."""
    if bound.sum() >= 1.0:
        return
    by_cap = np.minimum(config.cap * shares, 1.0).sum()
    culprit = "cap" if by_cap < 1.0 else "max_epochs"
    raise Invalid(
        SwarmConfig, culprit,
        f"no mixture can satisfy the usage cap: the largest allowed weights sum to {bound.sum():.4g} < 1",
    )


def _tempered(shares: np.ndarray, temperature: float) -> np.ndarray:
    base = shares**temperature
    return base / base.sum()


def _draw(
    rng: np.random.Generator, base: np.ndarray, grid: np.ndarray, size: int, min_weight: float
) -> tuple[np.ndarray, np.ndarray]:
    """`size` candidates, each from Dirichlet(strength * base) at a strength picked from `grid`,
    with weights under `min_weight` zeroed and rows renormalised."""
    picks = rng.integers(len(grid), size=size)
    candidates = np.empty((size, len(base)))
    for step in np.unique(picks):  # one vectorised draw per strength, in grid order
        rows = picks == step
        candidates[rows] = rng.dirichlet(base * grid[step], size=int(rows.sum()))
    candidates[candidates < min_weight] = 0.0
    with np.errstate(invalid="ignore", divide="ignore"):
        candidates /= candidates.sum(axis=1, keepdims=True)
    return candidates, grid[picks]


def swarm_csv(domains: tuple[str, ...], mixtures: list[Mixture]) -> str:
    """RegMix's table layout: `index` (1..N), then one column per domain, full float precision."""
    out = io.StringIO()
    out.write(",".join(("index", *domains)) + "\n")
    for i, mixture in enumerate(mixtures, start=1):
        out.write(",".join([str(i), *(repr(float(w)) for w in mixture.vector(domains))]) + "\n")
    return out.getvalue()


def write_swarm(
    swarm: Swarm, out_dir: str | os.PathLike, config: SwarmConfig, prior: Mapping[str, float],
    tokens: Mapping[str, int] | None = None, force: bool = False,
) -> Path:
    """Write the swarm directory at once: n<i>.json, swarm.csv and settings.json."""
    config = config.resolved()
    members = [(mixture, {"index": i, "strength": float(strength), "seed": config.seed, "preset": config.preset,
                          "round": 1})
               for i, (mixture, strength) in enumerate(zip(swarm.mixtures(), swarm.strengths), start=1)]
    return write_mixtures(Path(out_dir), members, _settings_record(swarm, config, prior, tokens), force)


def write_mixtures(out_dir: Path, members: list[tuple[Mixture, dict[str, Any]]], settings: Mapping[str, Any],
                   force: bool = False) -> Path:
    """A directory of mixtures n1..nN (each file with its metadata), their table and `settings`,
    staged next to `out_dir` and renamed into place: a failure leaves nothing and a reader never
    sees half of it."""
    check_destination(out_dir, force)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = SwarmDir(Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.", suffix=".tmp")))
    try:
        for i, (mixture, metadata) in enumerate(members, start=1):
            mixture.save(staging.mixture(i), **metadata)
        mixtures = [mixture for mixture, _ in members]
        write_text_atomic(staging.table, swarm_csv(mixtures[0].domains, mixtures))
        write_json_atomic(staging.settings, dict(settings))
        move_into_place(staging.path, out_dir, force)
    except BaseException:
        shutil.rmtree(staging.path, ignore_errors=True)
        raise
    return out_dir


def earlier_rounds(swarm_dir: SwarmDir, domains: tuple[str, ...]) -> tuple[list[int], np.ndarray, list[int]]:
    """An existing swarm's indices, its mixtures as rows in `domains` order, and each one's round."""
    indices = swarm_dir.indices()
    if not indices:
        raise RegmixError(swarm_dir.path, "no swarm here to add a round to; run `regmix-ds swarm --config ...` first")
    rows, rounds = [], []
    for index in indices:
        mixture, metadata = Mixture.load_with_metadata(swarm_dir.mixture(index))
        mixture.check_domains(domains, swarm_dir.mixture(index))
        rows.append(mixture.vector(domains))
        rounds.append(int(metadata.get("round", 1)))
    return indices, np.array(rows), rounds


def check_destination(out_dir: Path, force: bool) -> None:
    """Refuse to overwrite an existing swarm (proxies may be training on it) unless forced."""
    if out_dir.exists() and not out_dir.is_dir():
        raise RegmixError(out_dir, "exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise RegmixError(out_dir, "already exists and is not empty; pass --force to replace it")


def move_into_place(staging: Path, out_dir: Path, force: bool) -> None:
    """Rename the staged directory to `out_dir`, replacing an existing one only when forced."""
    check_destination(out_dir, force)
    replace_directory(staging, out_dir)


def _settings_record(
    swarm: Swarm, config: SwarmConfig, prior: Mapping[str, float], tokens: Mapping[str, int] | None
) -> dict[str, Any]:
    shares = np.array([prior[name] for name in swarm.domains])
    counts = None if tokens is None else np.array([tokens[name] for name in swarm.domains], dtype=np.float64)
    bound = usage_bounds(shares, config, counts)
    return {
        "settings": dataclasses.asdict(config),
        "draws": swarm.draws,
        "prior": dict(prior),
        "max_weight": dict(zip(swarm.domains, bound.tolist())),
    }


def make_swarm(
    prior: Mapping[str, float], config: SwarmConfig, out_dir: str | os.PathLike, *,
    tokens: Mapping[str, int] | None = None, force: bool = False,
) -> Swarm:
    """Sample the swarm and write it to `out_dir`: the whole stage, given built inputs."""
    check_destination(Path(out_dir), force)  # fail before sampling, not after
    swarm = sample_swarm(prior, config, tokens)
    write_swarm(swarm, out_dir, config, prior, tokens, force)
    return swarm


def swarm_settings(experiment: ExperimentConfig | None) -> SwarmConfig:
    """The `swarm:` section, its epoch cap set for the proxies actually configured; defaults without a config."""
    if experiment is None:
        return SwarmConfig()
    settings, proxy = experiment.swarm, experiment.proxy
    if settings.proxy_tokens is None and proxy is not None and proxy.train_tokens is not None:
        settings = dataclasses.replace(settings, proxy_tokens=proxy.train_tokens)
    return settings


def draw_swarm(
    settings: SwarmConfig, experiment: ExperimentConfig | None, *, prior_path: str | None = None,
    out_dir: str | None = None, force: bool = False,
) -> tuple[Swarm, Path]:
    """What `regmix-ds swarm` asks for: with an experiment, the prior and token counts come from
    its manifest and the swarm goes to `<work_dir>/swarm/`; without one, a prior file and an
    output directory are needed. Returns the swarm and the directory it was written to."""
    if experiment is None:
        if prior_path is None:
            raise RegmixError("--prior", "required without --config (a YAML/JSON file: domain -> token share)")
        if out_dir is None:
            raise RegmixError("--out", "required without --config")
        prior, tokens = sampling_prior(prior_path), None
    else:
        manifest = Manifest.load(experiment.work.manifest)
        prior = _manifest_prior(manifest, prior_path)
        tokens = {name: split.tokens for name, split in manifest.train.items()}
        out_dir = out_dir or str(experiment.work.swarm.path)
    if settings.proxy_tokens is not None and tokens is None:
        raise Invalid(SwarmConfig, "proxy_tokens", "the epoch cap needs the manifest's token counts: use --config")
    return make_swarm(prior, settings, out_dir, tokens=tokens, force=force), Path(out_dir)


def _manifest_prior(manifest: Manifest, prior_path: str | None) -> dict[str, float]:
    """The manifest's token shares, or a prior file that must name exactly its domains."""
    if prior_path is None:
        return manifest.token_prior()
    prior = sampling_prior(prior_path)
    Mixture.from_weights(prior, source=prior_path).check_domains(manifest.domains, prior_path)
    return {name: prior[name] for name in manifest.domains}
