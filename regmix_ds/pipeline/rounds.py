"""Later swarm rounds: proxies spent near the current fit's best region (`regmix-ds swarm --next-round`).

Round 1 samples blind around the token prior. A later round spends its proxies where the fit
predicts low loss: `1 - explore` of its mixtures are Dirichlet draws centred on the `focus` best
candidates the current fit finds among the simulate settings' candidates (inside the support the
proxies covered and the token budgets, as simulate chooses), each at a strength drawn
log-uniformly from [focus_min_strength, focus_max_strength]; the rest are drawn afresh as round
1 draws them. A mixture is kept only inside the usage caps and at least `dedup_distance` (L1)
from every mixture of every round. Numbering continues (round 2 of a 32-mixture swarm is n33,
n34, ...); each file records its round and `settings.json` lists every round; the proxies,
collect, fit and simulate then work on every round at once.
"""
from __future__ import annotations

import dataclasses
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from regmix_ds.core.config import ExperimentConfig, SwarmConfig
from regmix_ds.core.errors import RegmixError
from regmix_ds.core.files import read_json, write_json_atomic, write_text_atomic
from regmix_ds.core.layout import SwarmDir
from regmix_ds.core.manifest import Manifest
from regmix_ds.core.mixture import Mixture
from regmix_ds.pipeline.swarm import (
    DistinctRows,
    Proposal,
    Swarm,
    earlier_rounds,
    fill,
    move_into_place,
    prior_proposal,
    swarm_csv,
    usage_bounds,
)
from regmix_ds.regress.fit import FittedModel
from regmix_ds.regress.simulate import domain_caps, draw_candidates


@dataclass(frozen=True)
class Round:
    """A new round's mixtures, where each came from, and its number."""

    number: int
    first_index: int
    swarm: Swarm
    near_best: int
    """How many of them were drawn around the fit's best candidates (the rest are fresh)."""


def draw_next_round(experiment: ExperimentConfig, settings: SwarmConfig) -> Round:
    """Draw `settings.n` mixtures for the next round of the experiment's swarm (writes nothing)."""
    config = settings.resolved()
    work = experiment.work
    manifest = Manifest.load(work.manifest)
    domains = manifest.domains
    indices, earlier, rounds = earlier_rounds(work.swarm, domains)
    number = max(rounds) + 1
    fitted = FittedModel.load(work.fit.path)
    if set(fitted.domains) != set(domains):
        raise RegmixError(work.fit.path, "was fitted on other domains than the swarm's; fit again")
    shares = np.array([manifest.token_prior()[d] for d in domains])
    tokens = np.array([manifest.train[d].tokens for d in domains], dtype=np.float64)
    bound = usage_bounds(shares, config, tokens)
    rng = np.random.default_rng([config.seed, number])
    centres = best_candidates(fitted, experiment, manifest, config.focus)
    near_best = round(config.n * (1 - config.explore))
    kept = DistinctRows(config.n, len(domains), config.dedup_distance, earlier=earlier)
    draws = fill(kept, around(rng, centres[:, [fitted.domains.index(d) for d in domains]], config), bound, near_best)
    draws += fill(kept, prior_proposal(rng, shares, config), bound, config.n)
    return Round(number, max(indices) + 1, Swarm(domains, kept.rows, kept.strengths, draws), near_best)


def best_candidates(fitted: FittedModel, experiment: ExperimentConfig, manifest: Manifest, count: int) -> np.ndarray:
    """The `count` candidates the fit predicts best, among those simulate would consider (fit's domain order)."""
    settings = experiment.simulate
    prior = manifest.token_prior()
    drawn = draw_candidates(np.array([prior[d] for d in fitted.domains]), settings,
                            np.random.default_rng([settings.seed, 0]))
    caps = domain_caps(fitted, settings, manifest)
    candidates = drawn[(drawn <= np.array([caps[d] for d in fitted.domains])).all(axis=1)]
    if len(candidates) < count:
        raise RegmixError("swarm.focus", f"only {len(candidates)} candidates lie inside the allowed region, "
                                         f"fewer than focus={count}")
    return candidates[fitted.model.lowest_k(candidates, count).indices]


def around(rng: np.random.Generator, centres: np.ndarray, config: SwarmConfig) -> Proposal:
    """Draws near the centres: a centre picked uniformly, Dirichlet(strength x centre) with the
    strength log-uniform in [focus_min_strength, focus_max_strength], small weights zeroed as round 1 does."""
    low, high = np.log(config.focus_min_strength), np.log(config.focus_max_strength)

    def propose(size: int) -> tuple[np.ndarray, np.ndarray]:
        picks = rng.integers(len(centres), size=size)
        strengths = np.exp(rng.uniform(low, high, size=size))
        # A Dirichlet needs every concentration > 0: a weight the centre has at 0 stays near 0.
        alphas = np.maximum(centres[picks] * strengths[:, None], 1e-12)
        candidates = np.array([rng.dirichlet(alpha) for alpha in alphas])
        candidates[candidates < config.min_weight] = 0.0
        with np.errstate(invalid="ignore", divide="ignore"):
            candidates /= candidates.sum(axis=1, keepdims=True)
        return candidates, strengths

    return propose


def write_round(swarm_dir: SwarmDir, new: Round, settings: SwarmConfig) -> list[int]:
    """Add the round to the swarm directory, replaced whole (earlier rounds' files unchanged); its indices."""
    record = read_json(swarm_dir.settings)
    config = settings.resolved()
    staging = SwarmDir(Path(tempfile.mkdtemp(dir=swarm_dir.path.parent, prefix=f".{swarm_dir.path.name}.",
                                             suffix=".tmp")))
    try:
        for existing in swarm_dir.path.iterdir():
            if existing.is_file() and existing.name not in (swarm_dir.table.name, swarm_dir.settings.name):
                shutil.copy2(existing, staging.path / existing.name)
        indices = list(range(new.first_index, new.first_index + len(new.swarm.weights)))
        for index, mixture, strength in zip(indices, new.swarm.mixtures(), new.swarm.strengths):
            mixture.save(staging.mixture(index), index=index, strength=float(strength), seed=config.seed,
                         preset=config.preset, round=new.number)
        everything = [Mixture.load(staging.mixture(i)) for i in sorted(staging.indices())]
        write_text_atomic(staging.table, swarm_csv(new.swarm.domains, everything))
        rounds = record.get("rounds", [{"round": 1, "settings": record.get("settings")}])
        rounds.append({"round": new.number, "settings": dataclasses.asdict(config), "draws": new.swarm.draws,
                       "near_best": new.near_best, "indices": [indices[0], indices[-1]]})
        write_json_atomic(staging.settings, {**record, "rounds": rounds})
        move_into_place(staging.path, swarm_dir.path, force=True)
    except BaseException:
        shutil.rmtree(staging.path, ignore_errors=True)
        raise
    return indices
