"""The surrogate family: every regression from mixture weights to a loss, behind one interface.

A surrogate (`Surrogate`) predicts many candidate mixtures at once, finds the k lowest
(`lowest_k`), refits itself on other runs with the same hyperparameters (`refit`: what the
bootstrap does) and is saved as JSON, or for trees as LightGBM's own text. Smooth surrogates
(`smooth`) also give the gradient that the constrained optimiser of `regress.proposer` follows.

* `linear`: least squares with an intercept.
* `loglinear`: the data-mixing law of Ye et al. (2024), L = c + k exp(t . w), fitted by
  nonlinear least squares. On the simplex (sum w = 1) k only shifts every t_j by log k, so the
  law is fitted as L = c + exp(t . w): d + 1 parameters.
* `gp`: a Gaussian process (`regress.gp`).
* `lightgbm` and `bagged`: trees (`regress.trees`), scored exactly by `regress.treescore`.

`regress.fit` cross-validates each of them inside the training runs (`out_of_fold`).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import numpy as np
from scipy import optimize

from regmix_ds.regress.treescore import TopK, full_lowest_k

FAMILY = ("linear", "lightgbm", "loglinear", "gp", "bagged")
"""Every concrete surrogate, in the order `auto` tries them (a tie goes to the earlier)."""


class Surrogate(Protocol):
    """What simulate, predict and report need of a fitted regression."""

    regressor: ClassVar[str]
    smooth: ClassVar[bool]
    """True when `root_gradient` exists (the optimiser's proposer applies)."""

    def predict(self, weights: np.ndarray) -> np.ndarray:
        """The predicted loss of each row of `weights` (domains in the model's order)."""

    def lowest_k(self, weights: np.ndarray, k: int, progress: bool = False) -> TopK:
        """The k lowest-predicted rows, best first (ties by position)."""

    def refit(self, weights: np.ndarray, target: np.ndarray) -> Surrogate:
        """The same kind of model, with the same hyperparameters, fitted to other runs."""


class ScoresEveryRow:
    """`lowest_k` for surrogates that are cheap to evaluate: score every row, keep the k lowest."""

    def lowest_k(self, weights: np.ndarray, k: int, progress: bool = False) -> TopK:
        """The k lowest-predicted rows, best first, from scoring every row (`progress` matches TreeModel)."""
        scores = self.predict(weights)
        best = full_lowest_k(scores, k)
        return TopK(best, scores[best], 1.0)


class LinearModel(ScoresEveryRow):
    """`intercept + weights @ coefficients`, fitted by least squares."""

    regressor = "linear"
    smooth = True

    def __init__(self, intercept: float, coefficients: np.ndarray):
        self.intercept = float(intercept)
        self.coefficients = np.asarray(coefficients, dtype=np.float64)

    @classmethod
    def fit(cls, weights: np.ndarray, target: np.ndarray) -> LinearModel:
        """Least squares of `target` on `[1, weights]`: the intercept, then one coefficient per domain."""
        design = np.column_stack([np.ones(len(weights)), weights])
        solution = np.linalg.lstsq(design, target, rcond=None)[0]
        return cls(solution[0], solution[1:])

    def refit(self, weights: np.ndarray, target: np.ndarray) -> LinearModel:
        """Least squares again (a linear model has no hyperparameters)."""
        return LinearModel.fit(weights, target)

    def predict(self, weights: np.ndarray) -> np.ndarray:
        """The predicted target of each row of `weights`."""
        return self.intercept + np.asarray(weights, dtype=np.float64) @ self.coefficients

    def root_gradient(self, roots: np.ndarray) -> np.ndarray:
        """d predict(roots**2) / d roots: the gradient in the optimiser's coordinates."""
        return 2 * roots * self.coefficients

    def to_json(self, domains: Sequence[str]) -> dict[str, Any]:
        """The coefficients keyed by domain."""
        return {"intercept": self.intercept, "coefficients": dict(zip(domains, self.coefficients.tolist()))}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], domains: Sequence[str]) -> LinearModel:
        """What `to_json` wrote; non-finite numbers are refused."""
        return cls(finite(data["intercept"]), np.array([finite(data["coefficients"][d]) for d in domains]))


FLOOR_STARTS = (0.05, 0.5, 2.0)
"""Starting floors c of the log-linear fit, as min(target) - f x (range of the target)."""


class LogLinearModel(ScoresEveryRow):
    """The data-mixing law `floor + exp(weights @ slopes)` (Ye et al. 2024), by nonlinear least squares."""

    regressor = "loglinear"
    smooth = True

    def __init__(self, floor: float, slopes: np.ndarray):
        self.floor = float(floor)
        self.slopes = np.asarray(slopes, dtype=np.float64)

    @classmethod
    def fit(cls, weights: np.ndarray, target: np.ndarray) -> LogLinearModel:
        """Least squares from a few starting floors (each with the slopes of log(target - floor)); the best wins.

        Deterministic: the starts are fixed, and the solver (trust region, analytic Jacobian) has no randomness.
        """
        span = max(float(np.ptp(target)), 1e-6)
        best = None
        for share in FLOOR_STARTS:
            floor = float(target.min()) - share * span
            slopes = np.linalg.lstsq(weights, np.log(target - floor), rcond=None)[0]
            result = optimize.least_squares(_law_residuals, np.concatenate([[floor], slopes]), jac=_law_jacobian,
                                            args=(weights, target), method="trf", x_scale="jac")
            if best is None or result.cost < best.cost:
                best = result
        return cls(best.x[0], best.x[1:])

    def refit(self, weights: np.ndarray, target: np.ndarray) -> LogLinearModel:
        """The law fitted again (it has no hyperparameters)."""
        return LogLinearModel.fit(weights, target)

    def predict(self, weights: np.ndarray) -> np.ndarray:
        """floor + exp(weights @ slopes) for each row."""
        return self.floor + np.exp(np.asarray(weights, dtype=np.float64) @ self.slopes)

    def root_gradient(self, roots: np.ndarray) -> np.ndarray:
        """d predict(roots**2) / d roots: the gradient in the optimiser's coordinates."""
        return 2 * roots * math.exp(float(roots**2 @ self.slopes)) * self.slopes

    def to_json(self, domains: Sequence[str]) -> dict[str, Any]:
        """The floor and each domain's slope."""
        return {"floor": self.floor, "slopes": dict(zip(domains, self.slopes.tolist()))}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], domains: Sequence[str]) -> LogLinearModel:
        """What `to_json` wrote; non-finite numbers are refused."""
        return cls(finite(data["floor"]), np.array([finite(data["slopes"][d]) for d in domains]))


def _law_residuals(params: np.ndarray, weights: np.ndarray, target: np.ndarray) -> np.ndarray:
    # The exponent is clipped only so that a wild trial step cannot overflow; a fit never sits there.
    return params[0] + np.exp(np.minimum(weights @ params[1:], 700.0)) - target


def _law_jacobian(params: np.ndarray, weights: np.ndarray, target: np.ndarray) -> np.ndarray:
    grown = np.exp(np.minimum(weights @ params[1:], 700.0))
    return np.column_stack([np.ones(len(weights)), grown[:, None] * weights])


def finite(value: Any) -> float:
    """`value` as a finite float (a saved model with NaN or infinity is malformed)."""
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"non-finite number {value!r}")
    return number


@dataclass(frozen=True)
class Candidate:
    """One surrogate after cross-validation: the model refit on all runs and every run's out-of-fold prediction."""

    regressor: str
    model: Surrogate
    predictions: np.ndarray
    trees: int | None = None
    """Trees per model kept by cross-validation (tree surrogates only)."""


Folds = list[tuple[np.ndarray, np.ndarray]]


def out_of_fold(fit: Callable[[np.ndarray, np.ndarray], Surrogate], weights: np.ndarray, target: np.ndarray,
                folds: Folds) -> np.ndarray:
    """Each run predicted by the model fitted on the folds that hold it out."""
    predictions = np.empty(len(target))
    for train, test in folds:
        predictions[test] = fit(weights[train], target[train]).predict(weights[test])
    return predictions
