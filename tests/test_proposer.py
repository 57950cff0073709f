"""The proposers: the optimiser finds the exact constrained optimum of a linear surrogate (a linear
program), respects caps, pulls towards the prior with a KL weight, and keeps guardrails; the top-k
average keeps them too; a guardrail nothing can meet is one clear error."""
import numpy as np
import pytest
from scipy import optimize

from regmix_ds.core.settings import Invalid
from regmix_ds.regress.proposer import Guard, Region, meets_all, minimise, top_k
from regmix_ds.regress.surrogates import LinearModel, LogLinearModel

TARGET = LinearModel(0.0, np.array([1.0, 2.0, 3.0, 2.5]))
HURTS_FIRST = LinearModel(0.0, np.array([3.0, 0.0, 0.0, 0.0]))
"""A guarded loss that grows with the first domain's weight."""
CAPS = np.array([0.6, 0.6, 0.6, 0.6])
PRIOR = np.full(4, 0.25)


def candidates(n=50_000, seed=0):
    rows = np.random.default_rng(seed).dirichlet(np.full(4, 0.7), n)
    return rows[(rows <= CAPS).all(axis=1)]


def starts():
    return [np.full(4, 0.25), np.array([0.4, 0.3, 0.2, 0.1])]


def linear_program(coefficients, caps, extra=None):
    """The exact minimum of coefficients . w on the capped simplex (and extra rows A w <= b)."""
    a_ub, b_ub = extra if extra else (None, None)
    solution = optimize.linprog(coefficients, A_ub=a_ub, b_ub=b_ub, A_eq=np.ones((1, len(caps))), b_eq=[1],
                                bounds=list(zip(np.zeros_like(caps), caps)))
    return solution.fun


def test_optimiser_finds_the_linear_programs_optimum_inside_the_caps():
    proposal = minimise(TARGET, Region(CAPS), starts())
    assert proposal.predicted == pytest.approx(linear_program(TARGET.coefficients, CAPS), abs=1e-6)
    assert (proposal.weights <= CAPS).all() and proposal.weights.sum() == pytest.approx(1, abs=1e-12)
    np.testing.assert_allclose(proposal.weights, [0.6, 0.4, 0, 0], atol=1e-5)


def test_token_budget_caps_bind_like_any_cap():
    caps = np.array([0.15, 0.6, 0.6, 0.6])  # the first domain's token budget allows 15%
    proposal = minimise(TARGET, Region(caps), starts())
    assert proposal.weights[0] <= 0.15 and proposal.predicted == pytest.approx(
        linear_program(TARGET.coefficients, caps), abs=1e-6)


def test_optimiser_beats_or_matches_top_k_on_a_convex_law():
    law = LogLinearModel(2.0, np.array([-2.0, -0.5, 0.3, 0.8]))
    rows = candidates()
    average = top_k(law, rows, 64)
    best = minimise(law, Region(CAPS), [average.weights, *average.leaders])
    assert best.predicted <= average.predicted + 1e-12
    assert best.predicted <= law.predict(rows).min() + 1e-9  # no candidate is better than the optimum


def test_kl_weight_pulls_towards_the_prior():
    prior = np.array([0.1, 0.4, 0.3, 0.2])
    free = minimise(TARGET, Region(CAPS, prior=prior), starts())
    pulled = minimise(TARGET, Region(CAPS, prior=prior), starts(), kl_weight=100.0)
    distance = np.abs(pulled.weights - prior).sum()
    assert distance < 0.05 < np.abs(free.weights - prior).sum()
    assert pulled.details["kl_weight"] == 100.0


def test_optimiser_keeps_a_guardrail_and_reaches_its_limit():
    guard = Guard("first", HURTS_FIRST, reference=1.0, tolerance=0.5)  # so 3 w_0 <= 1.5
    proposal = minimise(TARGET, Region(CAPS, (guard,)), starts())
    assert HURTS_FIRST.predict(proposal.weights[None, :])[0] <= 1.5 + 1e-9
    exact = linear_program(TARGET.coefficients, CAPS, ([HURTS_FIRST.coefficients], [1.5]))
    assert proposal.predicted == pytest.approx(exact, abs=1e-6)


def test_top_k_averages_only_candidates_within_the_guardrail():
    guard = Guard("first", HURTS_FIRST, reference=1.0, tolerance=0.0)  # w_0 <= 1/3
    rows = candidates()
    allowed = rows[meets_all([guard], rows)]
    proposal = top_k(TARGET, allowed, 64, [guard])
    assert proposal.details["averaged"] == 64  # a linear guard holds for an average of candidates that meet it
    assert meets_all([guard], allowed[TARGET.lowest_k(allowed, 64).indices]).all()
    assert proposal.weights[0] <= 1 / 3 + 1e-9


def test_top_k_averages_fewer_when_the_average_breaks_a_nonconvex_guard():
    # The guarded loss is low only near two opposite corners: their average lies between, where it is high.
    class TwoValleys:
        smooth = False

        def predict(self, weights):
            return np.minimum(np.abs(weights[:, 0] - 0.9), np.abs(weights[:, 1] - 0.9))

    rows = np.array([[0.9, 0.0, 0.05, 0.05], [0.0, 0.9, 0.05, 0.05], [0.3, 0.3, 0.2, 0.2]])
    guard = Guard("valleys", TwoValleys(), reference=0.0, tolerance=0.01)
    prefer = LinearModel(0.0, np.array([0.0, 0.1, 1.0, 1.0]))
    proposal = top_k(prefer, rows[:2], 2, [guard])
    assert proposal.details["averaged"] == 1
    np.testing.assert_array_equal(proposal.weights, rows[0])


def test_a_guardrail_nothing_meets_is_an_error_not_a_relaxation():
    guard = Guard("first", HURTS_FIRST, reference=1.0, tolerance=-2.0)  # 3 w_0 <= -1: impossible
    with pytest.raises(Invalid, match="no mixture inside the caps that meets every guardrail") as error:
        minimise(TARGET, Region(CAPS, (guard,)), starts())
    assert error.value.field == "guard"
