"""The registry: f, f*, g_f and f''(1) for every entry, and its errors."""
import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize_scalar

import fdu
from fdu.divergences import ALIASES, DIVERGENCES, Divergence, get_divergence

FIXED = [n for n in DIVERGENCES if n != "alpha"]
ALPHAS = [-1.0, 0.0, 0.3, 0.5, 1.0, 2.0, 3.0]
ALL = [get_divergence(n) for n in FIXED] + [fdu.alpha_divergence(a) for a in ALPHAS]
IDS = [d.name for d in ALL]

REQUIRED = ["kl", "reverse_kl", "jeffreys", "squared_hellinger", "jensen_shannon", "pearson_chi2",
            "neyman_chi2", "total_variation", "alpha"]


def test_registry_has_every_required_entry():
    assert set(REQUIRED) <= set(DIVERGENCES)


@pytest.mark.parametrize("div", ALL, ids=IDS)
def test_f_vanishes_at_one_and_is_convex(div):
    u = torch.linspace(0.05, 6.0, 300, dtype=torch.float64)
    f = div.f(u)
    assert abs(float(div.f(torch.tensor(1.0, dtype=torch.float64)))) < 1e-12
    second_difference = f[2:] - 2 * f[1:-1] + f[:-2]
    assert float(second_difference.min()) > -1e-12


@pytest.mark.parametrize("div", ALL, ids=IDS)
def test_f2_at_1_matches_a_finite_difference(div):
    h = 1e-4
    u = torch.tensor([1 - h, 1.0, 1 + h], dtype=torch.float64)
    f = div.f(u)
    fd = float((f[0] - 2 * f[1] + f[2]) / h**2)
    if div.smooth:
        assert fd == pytest.approx(div.f2_at_1, rel=1e-5)
    else:  # a kink at 1: the second difference diverges like 1/h
        assert div.f2_at_1 == math.inf and fd > 1 / (2 * h)


def _numerical_sup(div, t):
    """sup_{u>0} t u - f(u), numerically over log u."""
    def objective(s):
        return -(t * math.exp(s) - float(div.f(torch.tensor(math.exp(s), dtype=torch.float64))))

    res = minimize_scalar(objective, bounds=(-25, 25), method="bounded", options={"xatol": 1e-12})
    return -res.fun


def _domain_points(div):
    lo, hi = div.conjugate_domain
    if div.name == "pearson_chi2":  # the f-GAN formula extends f below u = 0; it is the sup over u > 0 for t >= -2
        lo = -2.0
    lo, hi = max(lo, -3.0), min(hi, 3.0)
    return np.linspace(lo, hi, 9)[1:-1]


@pytest.mark.parametrize("div", ALL, ids=IDS)
def test_conjugate_equals_numerical_legendre_transform(div):
    for t in _domain_points(div):
        expected = _numerical_sup(div, float(t))
        got = float(div.conjugate(torch.tensor(float(t), dtype=torch.float64)))
        assert got == pytest.approx(expected, rel=1e-6, abs=1e-7), t


@pytest.mark.parametrize("div", ALL, ids=IDS)
def test_conjugate_is_infinite_outside_its_domain(div):
    lo, hi = div.conjugate_domain
    outside = [x for x in (lo - 0.5, hi + 0.5) if math.isfinite(x)]
    for t in outside:
        assert float(div.conjugate(torch.tensor(t, dtype=torch.float64))) == math.inf


@pytest.mark.parametrize("div", ALL, ids=IDS)
def test_activation_maps_into_the_domain_and_composes_with_the_conjugate(div):
    v = torch.linspace(-8, 8, 101, dtype=torch.float64)
    t = div.activation(v)
    direct = div.conjugate(t)
    stable = div.conjugate_of_activation(v)
    assert torch.isfinite(stable).all()
    finite = torch.isfinite(direct)  # the direct route may round to the domain's edge
    assert finite.float().mean() > 0.8
    assert torch.allclose(direct[finite], stable[finite], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("div", ALL, ids=IDS)
def test_critic_equilibrium_is_f_prime_at_one(div):
    """At P = Q the optimal critic output is T* = f'(1), and f*(f'(1)) = f'(1) (since f(1) = 0)."""
    t_star = torch.tensor(div.f1_at_1, dtype=torch.float64)
    assert float(div.conjugate(t_star)) == pytest.approx(float(t_star), abs=1e-9)


def test_aliases_resolve():
    assert get_divergence("mse").name == "kl"
    assert get_divergence("Hellinger").name == "squared_hellinger"
    assert get_divergence("js").name == "jensen_shannon"
    assert get_divergence("chi2").name == "pearson_chi2"
    assert get_divergence("tv").name == "total_variation"
    assert all(a not in DIVERGENCES for a in ALIASES)


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="valid names: .*kl.*squared_hellinger.*alpha"):
        get_divergence("wasserstein")


@pytest.mark.parametrize("bad", [None, float("nan"), float("inf"), "half", True])
def test_alpha_needs_a_finite_number(bad):
    with pytest.raises(ValueError, match="alpha"):
        get_divergence("alpha", alpha=bad)


def test_alpha_rejected_for_fixed_divergences():
    with pytest.raises(ValueError, match="only applies"):
        get_divergence("kl", alpha=0.5)


def test_alpha_limits_equal_the_kls():
    u = torch.linspace(0.1, 5, 50, dtype=torch.float64)
    kl_cr = fdu.alpha_divergence(1.0).f(u)
    rkl_cr = fdu.alpha_divergence(0.0).f(u)
    assert torch.allclose(fdu.alpha_divergence(1 - 1e-7).f(u), kl_cr, atol=1e-5)
    assert torch.allclose(fdu.alpha_divergence(1e-7).f(u), rkl_cr, atol=1e-5)
    # and they are KL / reverse KL up to an affine term in u (which leaves D_f unchanged)
    assert torch.allclose(kl_cr, get_divergence("kl").f(u) - u + 1)


def test_register_a_user_divergence_uses_quadrature():
    # the "Le Cam" divergence f(u) = (1 - u)^2 / (2(1 + u)): no closed form here
    lecam = Divergence("le_cam_test", "(1-u)^2/(2(1+u))", lambda u, o: (1 - u) ** 2 / (2 * (1 + u)), 0.25)
    fdu.register_divergence(lecam)
    try:
        value = fdu.gaussian_divergence("le_cam_test", 1.0)
        from fdu.symbolic import numerical_gaussian_divergence
        assert value == pytest.approx(numerical_gaussian_divergence("le_cam_test", 1.0), rel=1e-9)
        with pytest.raises(ValueError, match="already registered"):
            fdu.register_divergence(lecam)
        with pytest.raises(ValueError, match="variational"):
            lecam.activation(torch.zeros(1))
    finally:
        DIVERGENCES.pop("le_cam_test")


def test_register_rejects_f_not_zero_at_one():
    with pytest.raises(ValueError, match="f\\(1\\) must be 0"):
        fdu.register_divergence(Divergence("bad", "u", lambda u, o: u, 0.0))
