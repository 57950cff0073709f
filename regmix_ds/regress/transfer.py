"""Does the ranking of mixtures hold from small proxies to larger ones? Rank agreement of two tables.

RegMix's bet is that mixtures rank the same by tiny proxies as at the target's scale. Given the
same mixtures trained at two sizes (rows paired by their weights, so RegMix's own CSVs per model
size pair up as well as our results.csv files), this reports Spearman's and Kendall's rank
correlations of the target loss with percentile-bootstrap intervals over the paired mixtures,
and one plain verdict: the ranking transfers when the interval's lower end reaches the
threshold. Coverage of those intervals at swarm-check sizes is measured by
`benchmarks/rank_intervals.py` (see the README).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

from regmix_ds.core.errors import RegmixError
from regmix_ds.regress.tables import RunTable, Target

DIGITS = 6
"""Mixtures pair up when their weights agree to this many decimals (RegMix's tables round to 3)."""


@dataclass(frozen=True)
class Pairs:
    """The target loss of the same mixtures at the small and the large size."""

    keys: tuple[str, ...]
    """Each pair's index in the large table."""
    small: np.ndarray
    large: np.ndarray


def paired_losses(small: RunTable, large: RunTable, target: Target, digits: int = DIGITS) -> Pairs:
    """The runs of `large` whose mixture `small` also trained, with both target losses."""
    domains = small.domains
    weights = large.mixtures.aligned(domains)
    by_mixture = {tuple(np.round(row, digits)): i for i, row in enumerate(small.weights)}
    small_values, large_values = target.values(small, small.loss_source), target.values(large, large.loss_source)
    keys, left, right = [], [], []
    for j, row in enumerate(weights):
        i = by_mixture.get(tuple(np.round(row, digits)))
        if i is not None:
            keys.append(large.index[j])
            left.append(small_values[i])
            right.append(large_values[j])
    if len(keys) < 3:
        raise RegmixError(large.loss_source, f"only {len(keys)} of its mixtures were also trained in "
                                             f"{small.loss_source}: a rank correlation needs at least 3")
    return Pairs(tuple(keys), np.array(left), np.array(right))


@dataclass(frozen=True)
class Agreement:
    """Rank correlations with their bootstrap intervals, and the verdict."""

    pairs: int
    spearman: float
    spearman_interval: tuple[float, float]
    kendall: float
    kendall_interval: tuple[float, float]
    confidence: float
    threshold: float

    @property
    def transfers(self) -> bool:
        """The ranking holds: even the interval's lower end reaches the threshold."""
        return self.spearman_interval[0] >= self.threshold

    def verdict(self, small: str = "small", large: str = "large") -> str:
        """One line a person reads before spending the big run's budget."""
        low, high = self.spearman_interval
        measured = (f"Spearman {self.spearman:.2f} [{low:.2f}, {high:.2f}], Kendall {self.kendall:.2f} "
                    f"[{self.kendall_interval[0]:.2f}, {self.kendall_interval[1]:.2f}] "
                    f"({self.confidence:.0%} bootstrap intervals, {self.pairs} mixtures, {small} -> {large})")
        if self.transfers:
            return f"ranking transfers: {measured}"
        return (f"warning: the ranking may not transfer: {measured}; the Spearman interval reaches below "
                f"{self.threshold:.2f} (transfer.min_spearman): use larger proxies, or check more mixtures")


def rank_agreement(small: np.ndarray, large: np.ndarray, *, resamples: int, confidence: float, seed: int,
                   threshold: float) -> Agreement:
    """Spearman and Kendall of the paired losses, with percentile intervals over resampled pairs."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(small), size=(resamples, len(small)))
    return Agreement(
        pairs=len(small),
        spearman=float(spearman(small[None], large[None])[0]),
        spearman_interval=_interval(spearman(small[draws], large[draws]), confidence),
        kendall=float(kendall(small[None], large[None])[0]),
        kendall_interval=_interval(kendall(small[draws], large[draws]), confidence),
        confidence=confidence,
        threshold=threshold,
    )


def spearman(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Spearman's rho of each row pair (ties by average rank, as scipy); 0 where a row is all ties."""
    return _pearson(stats.rankdata(left, axis=1), stats.rankdata(right, axis=1))


def kendall(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Kendall's tau-b of each row pair (scipy's, with ties); 0 where a row is all ties."""
    first = np.sign(left[:, :, None] - left[:, None, :])
    second = np.sign(right[:, :, None] - right[:, None, :])
    pairs = left.shape[1] * (left.shape[1] - 1) / 2
    concordance = (first * second).sum(axis=(1, 2)) / 2
    untied_first = pairs - (first == 0).sum(axis=(1, 2)) / 2 + left.shape[1] / 2  # the diagonal is no tie
    untied_second = pairs - (second == 0).sum(axis=(1, 2)) / 2 + left.shape[1] / 2
    return _ratio(concordance, np.sqrt(untied_first * untied_second))


def _pearson(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    left = left - left.mean(axis=1, keepdims=True)
    right = right - right.mean(axis=1, keepdims=True)
    return _ratio((left * right).sum(axis=1), np.sqrt((left**2).sum(axis=1) * (right**2).sum(axis=1)))


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        values = numerator / denominator
    return np.where(np.isfinite(values), np.clip(values, -1.0, 1.0), 0.0)


def _interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = (1 - confidence) / 2
    low, high = np.quantile(values, [tail, 1 - tail])
    return float(low), float(high)


def rank_of(value: float, values: np.ndarray) -> int:
    """1 for the lowest loss among `values` (ties share the better rank)."""
    return int(np.sum(values < value)) + 1
