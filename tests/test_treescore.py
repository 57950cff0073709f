import lightgbm as lgb
import numpy as np
import pytest

from regmix_ds.regress.tables import Target, read_regmix_tables
from regmix_ds.regress.treescore import LeafBoxes, full_lowest_k, lowest_k

PARAMS = {"objective": "regression", "learning_rate": 0.05, "seed": 0, "deterministic": True,
          "force_row_wise": True, "num_threads": 1, "verbose": -1}


@pytest.fixture(scope="module")
def regmix_runs(regmix_data):
    table = read_regmix_tables(regmix_data / "data/train_mixture_1m.csv", regmix_data / "data/train_pile_loss_1m.csv")
    return table.weights, Target.parse("pile_cc").values(table)


@pytest.fixture(scope="module")
def booster(regmix_runs):
    weights, target = regmix_runs
    return lgb.train(PARAMS, lgb.Dataset(weights, target), num_boost_round=300)


@pytest.fixture(scope="module")
def candidates(regmix_runs):
    weights, _ = regmix_runs
    rng = np.random.default_rng(0)
    prior = weights.mean(axis=0)
    return np.concatenate([rng.dirichlet(prior * s, size=10_000) for s in (0.3, 1.0, 5.0)])


def test_boxes_put_every_row_in_the_leaf_lightgbm_picks(booster, candidates):
    boxes = LeafBoxes.from_booster(booster)
    rows = candidates[:300]
    real = np.isfinite(boxes.values)  # padding leaves are not boxes
    inside = ((boxes.lower[None] < rows[:, None, None]) & (rows[:, None, None] <= boxes.upper[None])).all(axis=3) & real
    assert (inside.sum(axis=2) == 1).all()
    np.testing.assert_array_equal(inside.argmax(axis=2), booster.predict(rows, pred_leaf=True))


@pytest.mark.parametrize("k", [1, 128, 300])
def test_lowest_k_is_exactly_the_full_ranking(booster, candidates, k):
    scores = booster.predict(candidates)
    expected = full_lowest_k(scores, k)
    found = lowest_k(booster, candidates, k, boxes=LeafBoxes.from_booster(booster))
    np.testing.assert_array_equal(found.indices, expected)
    np.testing.assert_array_equal(found.scores, scores[expected])
    assert found.work_fraction < 1.0  # it pruned, rather than falling back to full prediction


def test_ties_break_by_position_like_a_stable_sort(booster, candidates):
    # Repeated rows score identically; the k-th place falls inside a block of ties.
    best = full_lowest_k(booster.predict(candidates), 5)
    rows = np.concatenate([candidates, np.repeat(candidates[best], 40, axis=0)])
    rows = rows[np.random.default_rng(1).permutation(len(rows))]
    scores = booster.predict(rows)
    found = lowest_k(booster, rows, 100, boxes=LeafBoxes.from_booster(booster))
    np.testing.assert_array_equal(found.indices, full_lowest_k(scores, 100))
    assert len(np.unique(found.scores)) < 100


def test_splits_without_boxes_fall_back_to_full_prediction(regmix_runs, candidates):
    weights, target = regmix_runs
    zero_missing = lgb.train({**PARAMS, "zero_as_missing": True}, lgb.Dataset(weights, target), num_boost_round=30)
    boxes = LeafBoxes.from_booster(zero_missing)
    assert boxes is None
    found = lowest_k(zero_missing, candidates, 50, boxes=boxes)
    np.testing.assert_array_equal(found.indices, full_lowest_k(zero_missing.predict(candidates), 50))
    assert found.work_fraction == 1.0
