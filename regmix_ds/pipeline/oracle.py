"""An oracle search at proxy scale: the best mixture a local search finds, as the demo's answer key.

A synthetic target's composition is not its best training mixture (see `data.synth`), so the
reference the chosen mixture is judged against is measured: starting from given mixtures (the
best swarm member, the chosen one, the composition...), each round trains `per_round` Dirichlet
perturbations of the best mixture found so far (strengths cycling over `strengths`: high is
close) as proxies with the swarm's exact settings, in the `oracle` tier (`oracle/swarm`,
`oracle/proxies`), and keeps the best. The result, `oracle/oracle.json`, holds the best measured
target loss and mixture and how many proxies the search trained; `regmix-ds verify --oracle`
reports regret against it. Deterministic for a seed; finished proxies are reused on a rerun.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from regmix_ds.core.config import ExperimentConfig
from regmix_ds.core.errors import RegmixError
from regmix_ds.core.files import read_json, write_json_atomic
from regmix_ds.core.mixture import Mixture
from regmix_ds.pipeline.collect import collect
from regmix_ds.pipeline.proxies import train_swarm
from regmix_ds.pipeline.swarm import write_mixtures
from regmix_ds.regress.tables import Target, read_results

STRENGTHS = (30.0, 100.0, 300.0)


@dataclass(frozen=True)
class OracleResult:
    """The best mixture the search measured and what it cost."""

    mixture: Mixture
    target_loss: float
    proxies: int


def search(experiment: ExperimentConfig, start: list[Mixture], *, rounds: int = 3, per_round: int = 16,
           seed: int = 0, jobs: int = 2) -> OracleResult:
    """Train `start`, then `rounds` rounds of perturbations around the best so far; write oracle.json."""
    if not experiment.fit.target:
        raise RegmixError(f"{experiment.path}: fit.target", "required: the loss the search minimises")
    target = Target.parse(experiment.fit.target, "fit.target")
    rng = np.random.default_rng([seed, 1])
    members = [(mixture, {"round": 1, "source": "start"}) for mixture in start]
    best = _train(experiment, members, target, jobs)
    for number in range(2, rounds + 2):
        centre = best.mixture.vector(best.mixture.domains)
        for k in range(per_round):
            strength = STRENGTHS[k % len(STRENGTHS)]
            draw = rng.dirichlet(np.maximum(centre * strength, 1e-3))
            members.append((Mixture.from_weights(dict(zip(best.mixture.domains, draw)), renormalize=True),
                            {"round": number, "source": f"around the best of round {number - 1}",
                             "strength": strength}))
        best = _train(experiment, members, target, jobs)
    write_json_atomic(experiment.work.oracle_result, {
        "weights": dict(best.mixture.weights), "target_loss": best.target_loss, "target": target.label,
        "proxies": best.proxies, "rounds": rounds, "per_round": per_round, "seed": seed,
    })
    return best


def _train(experiment: ExperimentConfig, members: list, target: Target, jobs: int) -> OracleResult:
    """Write the members (those trained before are unchanged), train what is missing, return the best."""
    tier = experiment.work.tier("oracle")
    write_mixtures(tier.swarm.path, members, {"oracle": True}, force=True)
    failed = train_swarm(experiment, None, jobs, tier="oracle")
    if failed:
        raise RegmixError(tier.proxies, f"oracle proxies {failed} failed; see their logs")
    collect(experiment, tier="oracle")
    table = read_results(tier.results)
    losses = target.values(table)
    row = int(np.argmin(losses))
    mixture = Mixture.from_weights(dict(zip(table.domains, table.weights[row].tolist())), renormalize=True)
    return OracleResult(mixture, float(losses[row]), len(losses))


def load_result(path) -> dict:
    """An oracle.json: the best target loss and mixture, and the search's size."""
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("target_loss"), (int, float)):
        raise RegmixError(path, 'not an oracle result (no "target_loss")')
    return data
