"""The bootstrap interval methods do what their names say."""
import numpy as np
import pytest

from regmix_ds.regress.intervals import bootstrap_interval, weight_intervals

REPLICATES = np.array([[0.2, 4.0], [0.3, 4.2], [0.4, 4.4], [0.5, 4.6], [0.6, 4.8]])
POINT = np.array([0.3, 4.1])


def test_percentile_is_the_replicates_quantiles():
    low, high = bootstrap_interval(POINT, REPLICATES, 0.5, "percentile")
    np.testing.assert_allclose(low, np.quantile(REPLICATES, 0.25, axis=0))
    np.testing.assert_allclose(high, np.quantile(REPLICATES, 0.75, axis=0))


def test_basic_mirrors_the_percentiles_around_the_estimate():
    low, high = bootstrap_interval(POINT, REPLICATES, 0.5, "basic")
    p_low, p_high = bootstrap_interval(POINT, REPLICATES, 0.5, "percentile")
    np.testing.assert_allclose(low, 2 * POINT - p_high)
    np.testing.assert_allclose(high, 2 * POINT - p_low)


def test_normal_is_symmetric_with_the_replicates_spread():
    low, high = bootstrap_interval(POINT, REPLICATES, 0.95, "normal")
    np.testing.assert_allclose((low + high) / 2, POINT)
    t_quantile = 2.776445  # Student's t, 4 degrees of freedom, 97.5%: 5 replicates
    np.testing.assert_allclose((high - low) / 2, t_quantile * REPLICATES.std(axis=0, ddof=1), rtol=1e-6)


def test_weight_intervals_stay_between_zero_and_the_cap():
    low, high = weight_intervals(np.array([0.01, 0.5]), np.array([[0.0, 0.3], [0.1, 0.9], [0.0, 0.6]]), 0.95,
                                 "normal", caps=np.array([1.0, 0.7]))
    assert low[0] == 0 and high[1] == 0.7


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="unknown interval method"):
        bootstrap_interval(POINT, REPLICATES, 0.95, "magic")
