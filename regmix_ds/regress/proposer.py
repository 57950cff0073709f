"""Proposers: from a fitted surrogate to one mixture inside the allowed region.

The region: each weight in [0, cap] (training support, explicit caps and token budgets; see
`regress.simulate`), the weights summing to 1, and every guardrail met: a guarded loss's
prediction at most its limit (its prediction under a reference mixture plus a tolerance).

* `topk` (RegMix's): the k candidates with the lowest prediction, averaged. Under guardrails
  only candidates that meet every guard compete. Their average can still break a guard whose
  surrogate is not convex (trees, GP); then the best k/2, k/4, ... are averaged instead, down to
  the best one alone, which meets them all. `averaged` records how many were.
* `optimize` (smooth surrogates): minimise prediction(w) + kl_weight * KL(w || prior) over the
  region with SLSQP, in the coordinates r = sqrt(w) (w = r^2, sum r^2 = 1, 0 <= r_j <=
  sqrt(cap_j)), where the GP's kernel on sqrt(w) stays smooth when a weight reaches 0. Several
  starts (the caller's, each pulled a tenth of the way to the cap-proportional mixture, because
  a weight at exactly 0 has zero gradient in r); the lowest objective that meets every
  constraint wins. For `linear` and `loglinear` without guards the problem is convex in w.

A region nothing can meet is an error naming the guardrail setting, never a silently relaxed guard.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import optimize

from regmix_ds.core.config import SimulateConfig
from regmix_ds.core.settings import Invalid
from regmix_ds.regress.surrogates import Surrogate

SLACK = 1e-9
"""A guarded loss may exceed its limit by this much (float rounding of an optimiser's constraint)."""
MARGIN = 1e-8
"""The optimiser aims this far inside each guard, so its answer meets the guard with SLACK to spare."""
CAP_SHRINK = 1 - 1e-9
"""The optimiser's caps, so that renormalising its answer cannot lift a weight above the real cap."""
INTERIOR_PULL = 0.1
OPTIMIZER_STARTS = 4
"""Best candidates the optimiser starts from, besides the top-k average."""


@dataclass(frozen=True)
class Guard:
    """One guardrail: `loss` predicted by `model` may not exceed `reference + tolerance`."""

    loss: str
    model: Surrogate
    reference: float
    """The guarded loss predicted under the reference mixture."""
    tolerance: float

    @property
    def limit(self) -> float:
        return self.reference + self.tolerance

    def met(self, weights: np.ndarray) -> np.ndarray:
        """Per row of `weights`: is the guarded loss's prediction within the limit?"""
        return self.model.predict(weights) <= self.limit + SLACK


def meets_all(guards: Sequence[Guard], weights: np.ndarray) -> np.ndarray:
    """Per row of `weights`: does it meet every guard?"""
    ok = np.ones(len(weights), dtype=bool)
    for guard in guards:
        ok &= guard.met(weights)
    return ok


@dataclass(frozen=True)
class Region:
    """Where a proposal may lie: each weight within its cap, every guard met; and the prior for the KL pull."""

    caps: np.ndarray
    guards: tuple[Guard, ...] = ()
    prior: np.ndarray | None = None


@dataclass(frozen=True)
class Proposal:
    """A proposed mixture, its predicted target, and how the proposer got there."""

    proposer: str
    weights: np.ndarray
    predicted: float
    details: dict[str, Any] = field(default_factory=dict)
    leaders: np.ndarray | None = field(default=None, compare=False)
    """`topk`: the best candidates, best first (the optimiser starts from some of them)."""

    def to_json(self, domains: Sequence[str]) -> dict[str, Any]:
        """For best.json: the weights by domain, the prediction and the details."""
        return {"weights": dict(zip(domains, self.weights.tolist())), "predicted_target": self.predicted,
                **self.details}


def top_k(model: Surrogate, candidates: np.ndarray, k: int, guards: Sequence[Guard] = (),
          progress: bool = False) -> Proposal:
    """RegMix's proposer: the mean of the k lowest-predicted candidates (which must meet `guards`)."""
    best = model.lowest_k(candidates, k, progress=progress)
    for kept in (k >> i for i in range(k.bit_length())):
        mixture = candidates[best.indices[:kept]].mean(axis=0)
        mixture /= mixture.sum()
        if meets_all(guards, mixture[None, :])[0]:
            break
    scores = best.scores
    details = {"k": k, "averaged": kept, "best": float(scores.min()), "mean": float(scores.mean()),
               "worst": float(scores.max())}
    return Proposal("topk", mixture, float(model.predict(mixture[None, :])[0]), details,
                    candidates[best.indices[:OPTIMIZER_STARTS]])


def kl_divergence(weights: np.ndarray, prior: np.ndarray) -> float:
    """KL(weights || prior), with 0 log 0 = 0."""
    inside = weights > 0
    return float(np.sum(weights[inside] * np.log(weights[inside] / prior[inside])))


def minimise(model: Surrogate, region: Region, starts: Sequence[np.ndarray], kl_weight: float = 0.0) -> Proposal:
    """The optimiser's proposer: the best of SLSQP runs from `starts` (mixtures inside the caps).

    A start that meets every guard is itself a fallback answer, so a region some start meets is
    never reported infeasible. With `kl_weight` > 0 a domain the prior gives no weight gets none
    (its KL term would be infinite).
    """
    upper = np.sqrt(region.caps * CAP_SHRINK)
    if kl_weight > 0:
        upper = np.where(region.prior > 0, upper, 0.0)
    problem = _Problem(model, region.guards, region.prior, kl_weight)
    inner = upper**2 / np.sum(upper**2)
    found = []
    for start in starts:
        pulled = (1 - INTERIOR_PULL) * np.minimum(start, upper**2) + INTERIOR_PULL * inner
        result = optimize.minimize(problem.objective, np.sqrt(pulled / pulled.sum()), jac=True, method="SLSQP",
                                   bounds=list(zip(np.zeros_like(upper), upper)), constraints=problem.constraints(),
                                   options={"maxiter": 500, "ftol": 1e-12})
        found += [(result.x**2 / np.sum(result.x**2), int(result.nit)), (start, 0)]
    feasible = [(problem.value(w), w, steps) for w, steps in found
                if (w <= region.caps).all() and (kl_weight == 0 or (w[upper == 0] == 0).all())
                and meets_all(region.guards, w[None, :])[0]]
    if not feasible:
        raise _infeasible(region.guards, starts)
    objective, weights, steps = min(feasible, key=lambda item: item[0])
    # iterations 0: no SLSQP run ended lower than a start that meets every guard.
    details = {"kl_weight": kl_weight, "objective": objective, "starts": len(starts), "iterations": steps}
    return Proposal("optimize", weights, float(model.predict(weights[None, :])[0]), details)


def _infeasible(guards: Sequence[Guard], starts: Sequence[np.ndarray]) -> Invalid:
    if not guards:
        return Invalid(SimulateConfig, "max_weight", "the optimiser found no mixture inside the caps")
    excess = {g.loss: float(min(g.model.predict(np.array(starts)) - g.limit)) for g in guards}
    worst = max(excess, key=excess.get)
    return Invalid(SimulateConfig, "guard", f"the optimiser found no mixture inside the caps that meets every "
                   f"guardrail ({worst} is {excess[worst]:.4g} above its limit even at the best start)")


class _Problem:
    """Objective and constraints of `minimise`, in r = sqrt(w)."""

    def __init__(self, model: Surrogate, guards: Sequence[Guard], prior: np.ndarray | None, kl_weight: float):
        self.model, self.guards, self.prior, self.kl_weight = model, guards, prior, kl_weight

    def value(self, weights: np.ndarray) -> float:
        """The objective at a mixture."""
        value = float(self.model.predict(weights[None, :])[0])
        return value + self.kl_weight * kl_divergence(weights, self.prior) if self.kl_weight > 0 else value

    def objective(self, roots: np.ndarray) -> tuple[float, np.ndarray]:
        """The objective and its gradient at w = roots^2."""
        weights = roots**2
        value = self.value(weights)
        gradient = self.model.root_gradient(roots)
        if self.kl_weight > 0:
            # d/dr [r^2 log(r^2 / p)] = 2 r (log(r^2 / p) + 1), which tends to 0 as r -> 0.
            logs = np.log(np.where(weights > 0, weights, 1.0) / np.where(weights > 0, self.prior, 1.0))
            gradient = gradient + self.kl_weight * np.where(weights > 0, 2 * roots * (logs + 1), 0.0)
        return value, gradient

    def constraints(self) -> list[dict[str, Any]]:
        """sum w = 1, then one inequality per guard."""
        simplex = {"type": "eq", "fun": lambda r: np.sum(r**2) - 1, "jac": lambda r: 2 * r}
        return [simplex] + [self._guard(guard) for guard in self.guards]

    @staticmethod
    def _guard(guard: Guard) -> dict[str, Any]:
        # SLSQP's inequality: fun(r) >= 0.
        return {"type": "ineq", "fun": lambda r: guard.limit - MARGIN - guard.model.predict((r**2)[None, :])[0],
                "jac": lambda r: -guard.model.root_gradient(r)}
