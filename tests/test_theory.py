"""fdu.theory: gradient weights, gradient descent on the closed forms, and the min-max game."""
import math

import numpy as np
import pytest
import sympy as sp

from fdu import theory as th
from fdu.symbolic import alpha, delta2

GRID = [1e-3, 0.1, 1.0, 4.0, 20.0]
GAME_NAMES = ["kl", "reverse_kl", "squared_hellinger", "jensen_shannon", "pearson_chi2"]


def test_alpha_family_weight_is_the_derived_exponential():
    w = th.symbolic_gradient_weight("alpha")
    assert sp.simplify(w - sp.exp(-alpha * (1 - alpha) * delta2 / 2)) == 0


@pytest.mark.parametrize("name,a", [("kl", None), ("reverse_kl", None), ("squared_hellinger", None),
                                    ("pearson_chi2", None), ("total_variation", None),
                                    ("alpha", 0.3), ("alpha", -1.0)])
def test_autograd_weight_matches_sympy(name, a):
    expr = th.symbolic_gradient_weight(name, a)
    exact = np.array([float(expr.subs(delta2, d)) for d in GRID])
    np.testing.assert_allclose(th.gradient_weight(name, GRID, a), exact, rtol=1e-10)


@pytest.mark.parametrize("name,a", [("squared_hellinger", None), ("pearson_chi2", None),
                                    ("jensen_shannon", None), ("alpha", 0.3)])
@pytest.mark.parametrize("sigma", [0.7, 2.0])
def test_weight_seen_through_closed_form_loss(name, a, sigma):
    for d in (0.5, 3.0):
        measured = th.loss_gradient_weight(name, d, sigma=sigma, alpha=a)
        assert measured == pytest.approx(float(th.gradient_weight(name, d, a)), rel=1e-7)


def test_weight_at_zero_is_f2_and_ordering_holds_away_from_zero():
    assert th.gradient_weight("squared_hellinger", 0.0) == pytest.approx(0.5)
    assert th.gradient_weight("pearson_chi2", 0.0) == pytest.approx(2.0)
    d = np.array(GRID)
    h, kl, chi = (th.gradient_weight(n, d) for n in ("squared_hellinger", "kl", "pearson_chi2"))
    assert np.all(h < kl) and np.all(kl < chi)
    assert np.all(h / 0.5 < 1) and np.all(chi / 2.0 > 1)  # also after normalising by f''(1)


def test_matched_learning_rate():
    assert th.matched_learning_rate("squared_hellinger", 0.5) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="kink"):
        th.matched_learning_rate("tv", 0.5)


def test_descend_kl_halves_the_distance_and_chi2_reports_divergence():
    run = th.descend("kl", [[0.0, 0.0]], [3.0, 0.0], lr=0.5, steps=10)
    np.testing.assert_allclose(run["distance"], 3.0 * 0.5 ** np.arange(11), rtol=1e-12)
    assert run["steps_to_tol"] is None and not run["diverged"]
    bad = th.descend("pearson_chi2", [[0.0, 0.0]], [3.0, 0.0], lr=0.5, steps=50)
    assert bad["diverged"] and bad["steps_to_tol"] is None


@pytest.mark.parametrize("name", ["kl", "squared_hellinger", "pearson_chi2"])
def test_closed_form_descent_rate_is_one_minus_eta_f2(name):
    eta = 0.2
    run = th.descend(name, [[0.0]], [1e-3], lr=eta, steps=60)
    assert th.measured_rate(run["distance"], hi=1e-3) == pytest.approx(th.closed_form_rate(name, eta),
                                                                       rel=1e-4)


@pytest.mark.parametrize("name", GAME_NAMES + ["total_variation"])
def test_symbolic_jacobian_matches_autograd_and_formula(name):
    game = th.Game(name, mu=0.5, sigma=1.3)
    auto = game.jacobian()
    sym = np.array(th.symbolic_jacobian(name, mu=0.5, sigma=1.3).evalf(), dtype=float)
    np.testing.assert_allclose(auto, sym, atol=1e-10)
    np.testing.assert_allclose(auto, game.formula_jacobian(), atol=1e-10)


@pytest.mark.parametrize("name", ["kl", "squared_hellinger"])
def test_quadratic_critic_jacobian(name):
    game = th.Game(name, critic="quadratic")
    sym = np.array(th.symbolic_jacobian(name, "quadratic", mu=0.5, sigma=1.0).evalf(), dtype=float)
    np.testing.assert_allclose(game.jacobian(), sym, atol=1e-10)
    assert game.jacobian().shape == (4, 4)


def test_symbolic_jacobian_with_symbols_shows_f2_and_slope():
    mu, sigma = sp.Symbol("mu", real=True), sp.Symbol("sigma", positive=True)
    j = th.symbolic_jacobian("squared_hellinger")  # f''(1) = 1/2, g' = 1: damping -2 M
    assert sp.simplify(j[2, 2] - (-2 * (mu ** 2 + sigma ** 2))) == 0 and j[0, 2] == 1


def test_js_with_unit_activation_slope_has_hellingers_jacobian():
    js = th.Game("jensen_shannon", logit_scale=2.0).jacobian()
    np.testing.assert_allclose(js, th.Game("squared_hellinger").jacobian(), atol=1e-12)


@pytest.mark.parametrize("name", ["kl", "squared_hellinger", "jensen_shannon", "pearson_chi2"])
@pytest.mark.parametrize("mode", ["simultaneous", "alternating"])
def test_predicted_rate_matches_simulation_with_exact_expectations(name, mode):
    """Tolerance 1%: the fit of log distance absorbs the transient of non-normal modes."""
    game, eta = th.Game(name), 0.2
    start = game.equilibrium() + 1e-3 * np.array([1.0, 0.5, -0.5])
    dist = game.simulate(eta_theta=eta, eta_omega=eta, steps=500, start=start, mode=mode)
    predicted = th.predicted_rate(game.jacobian(), eta, eta, mode)
    assert predicted < 1 and th.measured_rate(dist) == pytest.approx(predicted, rel=0.01)


def test_total_variation_has_no_damping_and_simultaneous_gda_drifts_away():
    game = th.Game("total_variation")
    assert np.all(game.jacobian()[1:, 1:] == 0)
    assert th.predicted_rate(game.jacobian(), 0.2, 0.2) > 1
    start = game.equilibrium() + np.array([0.1, 0.0, 0.0])
    dist = game.simulate(eta_theta=0.2, eta_omega=0.2, steps=300, start=start)
    assert dist[-1] > 2 * dist[0]


def test_finite_batches_are_seeded_and_noisy():
    game = th.Game("kl")
    start = game.equilibrium() + np.array([0.3, 0.0, 0.0])
    a = game.simulate(eta_theta=0.2, eta_omega=0.2, steps=50, start=start, batch=32, seed=1)
    b = game.simulate(eta_theta=0.2, eta_omega=0.2, steps=50, start=start, batch=32, seed=1)
    exact = game.simulate(eta_theta=0.2, eta_omega=0.2, steps=50, start=start)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - exact).max() > 1e-3


def test_bad_game_input():
    with pytest.raises(ValueError, match="linear"):
        th.Game("kl", critic="cubic")
    with pytest.raises(ValueError, match="sigma must be"):
        th.Game("kl", sigma=0.0)
    with pytest.raises(ValueError, match="simultaneous"):
        th.Game("kl").simulate(eta_theta=0.1, eta_omega=0.1, steps=1, start=np.zeros(3), mode="x")
    with pytest.raises(ValueError, match="run longer"):
        th.measured_rate(np.array([1.0, 0.5]))
    with pytest.raises(ValueError, match="valid"):
        th.Game("not_a_divergence")


def test_official_normalisation_is_a_temperature():
    rms = np.array([0.1, 0.5])
    mean = th.official_delta2(rms, channels=4, positions=64 * 64)
    exact = th.official_delta2(rms, channels=4, positions=64 * 64, normalization="sum")
    np.testing.assert_allclose(exact / mean, 64 * 64)
    assert math.isclose(float(mean[1]), 4 * 0.25)


def test_the_conjugate_identities_the_jacobian_uses_hold_for_every_game_divergence():
    """f*'(f'(1)) = 1 and f*''(f'(1)) = 1/f''(1), by autograd through the registry's f and f*; a wrong
    conjugate (here f* of KL shifted by a factor) breaks them."""
    from fdu.verify import conjugate_identities_at_one

    checked = conjugate_identities_at_one(GAME_NAMES)
    assert set(checked) == set(GAME_NAMES)
    assert all(v["first"] < 1e-12 and v["second"] < 1e-12 for v in checked.values())
    from dataclasses import replace

    import fdu.divergences as D

    kl = D.get_divergence("kl")
    broken = replace(kl, name="kl_broken", conjugate_expr=lambda t, ops: 2 * kl.conjugate_expr(t, ops))
    D.DIVERGENCES["kl_broken"] = broken
    try:
        assert conjugate_identities_at_one(["kl_broken"])["kl_broken"]["first"] > 0.5
    finally:
        del D.DIVERGENCES["kl_broken"]


def test_a_critic_step_r_times_the_models_is_the_shared_step_game_with_kappa_times_sqrt_r():
    """sympy: the two one-step maps are similar for a generic Jacobian; numerically: equal predicted rates,
    and the simulated two-step run contracts at the predicted rate."""
    assert th.symbolic_two_timescale(2) == sp.zeros(3, 3)
    game = th.Game("pearson_chi2", mu=0.5, sigma=1.0)
    for r in (4.0, 9.0):
        scaled, eta_eq = th.two_timescale_equivalent(game.jacobian(), 0.1, r)
        assert eta_eq == pytest.approx(0.1 * math.sqrt(r))
        assert th.predicted_rate(game.jacobian(), 0.1, 0.1 * r) == pytest.approx(
            th.predicted_rate(scaled, eta_eq, eta_eq), abs=1e-12)
    # chi2 (kappa 1/2) with r = 4 has KL's damping: at the same effective step, KL's rate
    kl = th.Game("kl", mu=0.5, sigma=1.0)
    run = th.rate_comparison(game, eta_theta=0.1, eta_omega=0.4, steps=400)
    assert run["measured_rate"] == pytest.approx(run["predicted_rate"], abs=2e-3)
    assert run["predicted_rate"] == pytest.approx(th.predicted_rate(kl.jacobian(), 0.2, 0.2), abs=1e-9)
    assert th.predicted_rate(game.jacobian(), 0.2, 0.2) > run["predicted_rate"] + 0.01  # and it is faster


def test_adam_cancels_the_constant_factor_that_plain_descent_keeps():
    """Adam's first step is lr per coordinate whatever the loss's scale, so f''(1) does not set its speed;
    plain descent's first step is lr times the gradient, which carries w_f."""
    import numpy as np

    from fdu import theory

    first = {}
    for name in ("kl", "squared_hellinger", "pearson_chi2"):
        adam = theory.descend(name, [[0.0, 0.0]], [3.0, 0.0], lr=0.01, steps=1, optimizer="adam")
        sgd = theory.descend(name, [[0.0, 0.0]], [3.0, 0.0], lr=0.01, steps=1)
        first[name] = (3.0 - adam["path"][1][0], 3.0 - sgd["path"][1][0])
    assert all(np.isclose(a, 0.01, rtol=1e-6) for a, _ in first.values())
    sgd_steps = [s for _, s in first.values()]
    assert max(sgd_steps) / min(sgd_steps) > 100   # χ² at δ = 3 is e^9 times steeper than Hellinger
    with pytest.raises(ValueError, match="sgd"):
        theory.descend("kl", [[0.0, 0.0]], [3.0, 0.0], lr=0.01, steps=1, optimizer="rmsprop")
