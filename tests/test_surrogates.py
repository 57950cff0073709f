"""Every surrogate recovers a known law, survives save/load, refits with its own hyperparameters,
and (smooth ones) has the gradient its predictions have."""
import lightgbm as lgb
import numpy as np
import pytest
from scipy import optimize

from regmix_ds.core.config import FitConfig
from regmix_ds.regress.fit import FittedModel, cross_validated, fold_indices
from regmix_ds.regress.gp import GaussianProcess, negative_log_likelihood
from regmix_ds.regress.surrogates import FAMILY, LogLinearModel
from regmix_ds.regress.tables import Target
from regmix_ds.regress.trees import BaggedTrees, merged_model_text, train_booster
from regmix_ds.regress.treescore import full_lowest_k

SLOPES = np.array([-2.0, -0.5, 0.3, 0.8])
FLOOR = 2.0
NOISE = 0.01
SETTINGS = FitConfig(min_data_in_leaf=5, members=2, trees=400, learning_rate=0.03)
TOLERANCE = {"loglinear": 0.005, "gp": 0.01, "lightgbm": 0.06, "bagged": 0.06, "linear": 0.12}
"""RMSE against the noiseless law on fresh mixtures (the noise sd is 0.01); `linear` cannot bend with the law."""


def law(weights):
    return FLOOR + np.exp(weights @ SLOPES)


@pytest.fixture(scope="module")
def swarm():
    rng = np.random.default_rng(0)
    weights = rng.dirichlet(np.ones(len(SLOPES)), 200)
    return weights, law(weights) + rng.normal(0, NOISE, len(weights)), rng.dirichlet(np.ones(len(SLOPES)), 500)


@pytest.fixture(scope="module")
def fitted(swarm):
    weights, target, _ = swarm
    folds = fold_indices(len(target), 5, 0)
    return {name: cross_validated(name, weights, target, SETTINGS, folds) for name in FAMILY}


@pytest.mark.parametrize("name", FAMILY)
def test_each_surrogate_recovers_a_log_linear_law(fitted, swarm, name):
    _, target, fresh = swarm
    rmse = np.sqrt(np.mean((fitted[name].model.predict(fresh) - law(fresh)) ** 2))
    assert rmse <= TOLERANCE[name], rmse
    assert np.corrcoef(fitted[name].predictions, target)[0, 1] > 0.9  # out-of-fold, on the noisy runs


def test_loglinear_recovers_the_law_itself(fitted):
    model = fitted["loglinear"].model
    assert model.floor == pytest.approx(FLOOR, abs=0.03)
    np.testing.assert_allclose(model.slopes, SLOPES, atol=0.03)


@pytest.mark.parametrize("name", FAMILY)
def test_saved_and_loaded_surrogate_predicts_the_same(fitted, swarm, name, tmp_path):
    weights, _, fresh = swarm
    domains = tuple(f"d{i}" for i in range(len(SLOPES)))
    model = fitted[name].model
    saved = FittedModel(model, domains, Target((("loss", 1.0),)), SETTINGS, dict.fromkeys(domains, 1.0),
                        {"results": {"path": "x", "sha256": "0" * 64}}, len(weights))
    saved.save(tmp_path)
    loaded = FittedModel.load(tmp_path)
    assert loaded.model.regressor == name and loaded.trees == saved.trees
    np.testing.assert_array_equal(loaded.model.predict(fresh), model.predict(fresh))


@pytest.mark.parametrize("name", ["linear", "loglinear", "gp"])
def test_root_gradient_matches_finite_differences(fitted, name):
    model = fitted[name].model
    roots = np.sqrt(np.array([0.1, 0.2, 0.3, 0.4]))
    numeric = optimize.approx_fprime(roots, lambda r: model.predict((r**2)[None, :])[0], 1e-7)
    np.testing.assert_allclose(model.root_gradient(roots), numeric, rtol=1e-4, atol=1e-5)


def test_gp_likelihood_gradient_matches_finite_differences(swarm):
    weights, target, _ = swarm
    x, z = np.sqrt(weights[:60]), (target[:60] - target[:60].mean()) / target[:60].std()
    vector = np.log(np.array([0.4, 0.7, 1.1, 2.0, 1.3, 0.05]))
    for kind in ("matern52", "rbf"):
        _, gradient = negative_log_likelihood(vector, x, z, kind)
        numeric = optimize.approx_fprime(vector, lambda v, k=kind: negative_log_likelihood(v, x, z, k)[0], 1e-6)
        np.testing.assert_allclose(gradient, numeric, rtol=1e-4, atol=1e-4)


def test_gp_refit_keeps_its_hyperparameters(fitted, swarm):
    weights, target, _ = swarm
    model = fitted["gp"].model
    refit = model.refit(weights[:100], target[:100])
    np.testing.assert_array_equal(refit.hyper.lengthscales, model.hyper.lengthscales)
    assert len(refit.alpha) == 100 and isinstance(refit, GaussianProcess)


def test_refits_keep_tree_counts(fitted, swarm):
    weights, target, _ = swarm
    for name in ("lightgbm", "bagged"):
        model = fitted[name].model
        assert model.refit(weights[:150], target[:150]).trees == model.trees == fitted[name].trees * (
            SETTINGS.members if name == "bagged" else 1)


def test_merged_booster_is_the_members_mean_and_scores_exactly(swarm):
    weights, target, _ = swarm
    members = [train_booster(weights, target, SETTINGS, 60, seed) for seed in range(3)]
    merged = lgb.Booster(model_str=merged_model_text(members))
    rows = np.random.default_rng(1).dirichlet(np.ones(len(SLOPES)), 20_000)
    mean = np.mean([m.predict(rows) for m in members], axis=0)
    np.testing.assert_allclose(merged.predict(rows), mean, rtol=0, atol=1e-12)
    top = BaggedTrees(merged, SETTINGS, 60).lowest_k(rows, 50)
    np.testing.assert_array_equal(top.indices, full_lowest_k(merged.predict(rows), 50))


def test_loglinear_fit_is_deterministic(swarm):
    weights, target, _ = swarm
    a, b = LogLinearModel.fit(weights, target), LogLinearModel.fit(weights, target)
    assert a.floor == b.floor and np.array_equal(a.slopes, b.slopes)
