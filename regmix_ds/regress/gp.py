"""A Gaussian process on the simplex: the `gp` surrogate.

Mixtures are embedded as x = sqrt(w) (the Hellinger embedding: the simplex becomes the positive
part of the unit sphere, where a domain's first percent moves a mixture as far as its next
fifteen, as it moves a proxy's loss). The kernel is Matern 5/2 with one length scale per domain,
times a signal variance, plus a noise variance; all three are fitted by maximising the marginal
likelihood (L-BFGS-B, analytic gradient, one fixed start: deterministic) on the standardised
target, whose mean is the prior mean. The embedding and kernel were chosen by 5-fold
cross-validation on RegMix's 512 training runs: `python benchmarks/surrogates.py --gp-variants`
prints each variant's cross-validated Spearman.

A bootstrap refit (`refit`) keeps the fitted hyperparameters and solves for the new runs' weights
only: fitting them again would cost seconds per refit on 512 runs.

Scoring is exact and chunked (a block of candidates against every training run at a time), and
the prediction is smooth in r = sqrt(w), the optimiser's coordinates (`root_gradient`).
Saved as JSON: the training mixtures, alpha (K^-1 y), the hyperparameters, mean and scale.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import linalg, optimize

from regmix_ds.regress.surrogates import ScoresEveryRow, finite

KERNELS = ("matern52", "rbf")
EMBEDDINGS = ("sqrt", "identity")
CHUNK_ROWS = 8192
"""Candidates scored at once: 8192 x 512 training runs is 32 MB of kernel."""
JITTER = 1e-8
"""Added to the diagonal so that the Cholesky factor exists even at the smallest noise."""
LOG_BOUNDS = {"lengthscale": (1e-2, 1e2), "signal": (1e-2, 1e2), "noise": (1e-6, 1.0)}
START = {"lengthscale": 0.5, "signal": 1.0, "noise": 0.1}


@dataclass(frozen=True)
class Hyperparameters:
    """Kernel settings for the standardised target."""

    lengthscales: np.ndarray
    signal: float
    """Variance of the latent function."""
    noise: float
    """Variance of the measurement noise."""

    def log_vector(self) -> np.ndarray:
        """The vector L-BFGS-B moves: log length scales, log signal, log noise."""
        return np.log(np.concatenate([self.lengthscales, [self.signal, self.noise]]))

    @classmethod
    def from_log_vector(cls, vector: np.ndarray) -> Hyperparameters:
        """The inverse of `log_vector`."""
        values = np.exp(vector)
        return cls(values[:-2], float(values[-2]), float(values[-1]))


def embed(weights: np.ndarray, embedding: str) -> np.ndarray:
    """The coordinates the kernel sees."""
    weights = np.asarray(weights, dtype=np.float64)
    return np.sqrt(np.maximum(weights, 0.0)) if embedding == "sqrt" else weights


def scaled_square_distances(a: np.ndarray, b: np.ndarray, lengthscales: np.ndarray) -> np.ndarray:
    """sum_j ((a_j - b_j) / l_j)^2 for every row pair, via one matrix product."""
    a, b = a / lengthscales, b / lengthscales
    return np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T, 0.0)


def kernel(square: np.ndarray, kind: str) -> np.ndarray:
    """The unit-variance kernel as a function of the scaled square distance."""
    if kind == "rbf":
        return np.exp(-0.5 * square)
    r = np.sqrt(5 * square)
    return (1 + r + r * r / 3) * np.exp(-r)


def kernel_slope(square: np.ndarray, kind: str) -> np.ndarray:
    """d kernel / d square distance (finite at 0 for both kernels)."""
    if kind == "rbf":
        return -0.5 * np.exp(-0.5 * square)
    r = np.sqrt(5 * square)
    return -(5 / 6) * (1 + r) * np.exp(-r)


def negative_log_likelihood(vector: np.ndarray, x: np.ndarray, z: np.ndarray, kind: str) -> tuple[float, np.ndarray]:
    """-log p(z | x, hyperparameters) up to a constant, and its gradient in the log hyperparameters."""
    hyper = Hyperparameters.from_log_vector(vector)
    square = scaled_square_distances(x, x, hyper.lengthscales)
    signal_part = hyper.signal * kernel(square, kind)
    factor = linalg.cho_factor(signal_part + (hyper.noise + JITTER) * np.eye(len(x)), lower=True)
    alpha = linalg.cho_solve(factor, z)
    value = 0.5 * z @ alpha + np.log(np.diag(factor[0])).sum()
    # d value / d theta = -1/2 trace((alpha alpha' - K^-1) dK/d theta), for every theta.
    inner = np.outer(alpha, alpha) - linalg.cho_solve(factor, np.eye(len(x)))
    slope = inner * hyper.signal * kernel_slope(square, kind)
    gradient = np.empty_like(vector)
    for j, scale in enumerate(hyper.lengthscales):
        # d square / d log l_j = -2 (x_j - x'_j)^2 / l_j^2
        gradient[j] = np.sum(slope * (x[:, j, None] - x[None, :, j]) ** 2) / scale**2
    gradient[-2] = -0.5 * np.sum(inner * signal_part)
    gradient[-1] = -0.5 * np.trace(inner) * hyper.noise
    return float(value), gradient


def fit_hyperparameters(x: np.ndarray, z: np.ndarray, kind: str) -> Hyperparameters:
    """Maximum marginal likelihood from one fixed start, inside LOG_BOUNDS."""
    dims = x.shape[1]
    start = Hyperparameters(np.full(dims, START["lengthscale"]), START["signal"], START["noise"])
    bounds = [np.log(LOG_BOUNDS["lengthscale"])] * dims + [np.log(LOG_BOUNDS["signal"]), np.log(LOG_BOUNDS["noise"])]
    result = optimize.minimize(negative_log_likelihood, start.log_vector(), args=(x, z, kind), jac=True,
                               method="L-BFGS-B", bounds=bounds)
    return Hyperparameters.from_log_vector(result.x)


class GaussianProcess(ScoresEveryRow):
    """The posterior mean of a GP regression, kept as training inputs, alpha and hyperparameters."""

    regressor = "gp"
    smooth = True

    def __init__(self, inputs: np.ndarray, alpha: np.ndarray, hyper: Hyperparameters, mean: float, scale: float,
                 kind: str = "matern52", embedding: str = "sqrt"):
        self.inputs = np.asarray(inputs, dtype=np.float64)
        """The training mixtures (weights, not embedded)."""
        self.alpha, self.hyper, self.mean, self.scale = np.asarray(alpha, dtype=np.float64), hyper, mean, scale
        self.kind, self.embedding = kind, embedding
        self.x = embed(self.inputs, embedding)

    @classmethod
    def fit(cls, weights: np.ndarray, target: np.ndarray, kind: str = "matern52",
            embedding: str = "sqrt") -> GaussianProcess:
        """Hyperparameters by marginal likelihood, then the posterior mean."""
        mean, scale = standardisation(target)
        hyper = fit_hyperparameters(embed(weights, embedding), (target - mean) / scale, kind)
        return cls.solve(weights, target, hyper, kind, embedding)

    @classmethod
    def solve(cls, weights: np.ndarray, target: np.ndarray, hyper: Hyperparameters, kind: str,
              embedding: str) -> GaussianProcess:
        """The posterior mean for given hyperparameters: alpha = (K + noise I)^-1 (standardised target)."""
        mean, scale = standardisation(target)
        x = embed(weights, embedding)
        covariance = hyper.signal * kernel(scaled_square_distances(x, x, hyper.lengthscales), kind)
        covariance += (hyper.noise + JITTER) * np.eye(len(x))
        alpha = linalg.cho_solve(linalg.cho_factor(covariance, lower=True), (target - mean) / scale)
        return cls(weights, alpha, hyper, mean, scale, kind, embedding)

    def refit(self, weights: np.ndarray, target: np.ndarray) -> GaussianProcess:
        """The posterior mean on other runs, with this model's hyperparameters."""
        return GaussianProcess.solve(weights, target, self.hyper, self.kind, self.embedding)

    def predict(self, weights: np.ndarray) -> np.ndarray:
        """The posterior mean at each row, CHUNK_ROWS rows at a time."""
        weights = np.asarray(weights, dtype=np.float64)
        out = np.empty(len(weights))
        for start in range(0, len(weights), CHUNK_ROWS):
            block = embed(weights[start : start + CHUNK_ROWS], self.embedding)
            square = scaled_square_distances(block, self.x, self.hyper.lengthscales)
            out[start : start + len(block)] = kernel(square, self.kind) @ self.alpha
        return self.mean + self.scale * self.hyper.signal * out

    def root_gradient(self, roots: np.ndarray) -> np.ndarray:
        """d predict(roots**2) / d roots: the gradient in the optimiser's coordinates."""
        point = embed(roots[None, :] ** 2, self.embedding)[0]
        square = scaled_square_distances(point[None, :], self.x, self.hyper.lengthscales)[0]
        # d square / d point_j = 2 (point_j - x_ij) / l_j^2
        slope = (self.alpha * kernel_slope(square, self.kind)) @ (2 * (point - self.x) / self.hyper.lengthscales**2)
        gradient = self.scale * self.hyper.signal * slope
        return gradient if self.embedding == "sqrt" else 2 * roots * gradient

    def to_json(self, domains: Sequence[str]) -> dict[str, Any]:
        """Kernel, embedding, hyperparameters, standardisation, training mixtures and alpha."""
        return {
            "kernel": self.kind,
            "embedding": self.embedding,
            "lengthscales": dict(zip(domains, self.hyper.lengthscales.tolist())),
            "signal_variance": self.hyper.signal,
            "noise_variance": self.hyper.noise,
            "mean": self.mean,
            "scale": self.scale,
            "inputs": self.inputs.tolist(),
            "alpha": self.alpha.tolist(),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], domains: Sequence[str]) -> GaussianProcess:
        """What `to_json` wrote, checked for shape, known choices and finite numbers."""
        kind, embedding = str(data["kernel"]), str(data["embedding"])
        if kind not in KERNELS or embedding not in EMBEDDINGS:
            raise ValueError(f"unknown kernel {kind!r} or embedding {embedding!r}")
        inputs = np.array([[finite(v) for v in row] for row in data["inputs"]], dtype=np.float64)
        alpha = np.array([finite(v) for v in data["alpha"]])
        if inputs.ndim != 2 or inputs.shape != (len(alpha), len(domains)):
            raise ValueError(f"inputs of shape {inputs.shape} for {len(alpha)} alphas and {len(domains)} domains")
        hyper = Hyperparameters(np.array([finite(data["lengthscales"][d]) for d in domains]),
                                finite(data["signal_variance"]), finite(data["noise_variance"]))
        return cls(inputs, alpha, hyper, finite(data["mean"]), finite(data["scale"]), kind, embedding)


def standardisation(target: np.ndarray) -> tuple[float, float]:
    """(mean, standard deviation) of the target; a constant target gets scale 1."""
    scale = float(np.std(target))
    return float(np.mean(target)), scale if scale > 0 else 1.0
