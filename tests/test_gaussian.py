"""gaussian_divergence: closed forms, quadrature, gradients, numerical safety."""
import math

import pytest
import torch

import fdu
from fdu.divergences import DIVERGENCES, get_divergence
from fdu.gaussian import QUADRATURE_MAX_DELTA2, safe_delta2_limit
from fdu.symbolic import numerical_gaussian_divergence
from fdu.verify import log_grid

FIXED = [n for n in DIVERGENCES if n != "alpha"]
ALL = [get_divergence(n) for n in FIXED] + [fdu.alpha_divergence(a) for a in (-1.0, 0.3, 0.5, 2.0)]
IDS = [d.name for d in ALL]
GRID = log_grid(1e-4, 50.0, 9)


@pytest.mark.parametrize("div", ALL, ids=IDS)
def test_matches_direct_numerical_integration(div):
    for d2 in GRID:
        value = fdu.gaussian_divergence(div, d2)
        if math.isfinite(value):
            assert value == pytest.approx(numerical_gaussian_divergence(div, d2), rel=1e-6), d2


@pytest.mark.parametrize("div", [d for d in ALL if d.has_closed_form], ids=lambda d: d.name)
def test_quadrature_agrees_with_each_closed_form(div):
    grid = torch.tensor(GRID, dtype=torch.float64)
    quad = fdu.gaussian_divergence(div, grid, method="quadrature")
    exact = fdu.gaussian_divergence(div, grid, method="closed_form")
    # total variation's f has a kink, which Gauss-Hermite resolves only to ~1e-2
    rel = 1e-2 if not div.smooth else 1e-9
    assert torch.allclose(quad, exact, rtol=rel, atol=0)


def test_a_worked_example_of_the_closed_forms():
    """A worked example: sigma = 1.3, delta mu = 0.9 (values computed by hand from the formulas)."""
    d2 = (0.9 / 1.3) ** 2
    assert fdu.gaussian_divergence("kl", d2) == pytest.approx(0.239645, abs=1e-6)
    assert fdu.gaussian_divergence("pearson_chi2", d2) == pytest.approx(0.614927, abs=1e-6)
    assert fdu.gaussian_divergence("alpha", d2, alpha=0.5) == pytest.approx(0.232607, abs=1e-6)
    assert fdu.gaussian_divergence("alpha", d2, alpha=2) == pytest.approx(0.307464, abs=1e-6)
    assert fdu.gaussian_divergence("alpha", d2, alpha=0.3) == pytest.approx(0.233715, abs=1e-6)
    assert fdu.gaussian_divergence("tv", d2) == pytest.approx(0.270773, abs=1e-6)


def test_batched_differentiable_and_dtype_preserving():
    d2 = torch.tensor([0.0, 0.5, 2.0], dtype=torch.float32, requires_grad=True)
    for name in ("kl", "hellinger", "chi2", "js", "tv"):
        out = fdu.gaussian_divergence(name, d2)
        assert out.dtype == torch.float32 and out.shape == (3,)
        (g,) = torch.autograd.grad(out.sum(), d2)
        assert torch.isfinite(g).all() and (g >= 0).all()


@pytest.mark.parametrize("name", ["jensen_shannon", "squared_hellinger", "kl", "pearson_chi2"])
def test_quadrature_gradient_matches_closed_form_or_finite_difference(name):
    d2 = torch.tensor([0.0, 1e-3, 0.7, 5.0], dtype=torch.float64, requires_grad=True)
    (g_quad,) = torch.autograd.grad(fdu.gaussian_divergence(name, d2, method="quadrature").sum(), d2)
    h = 1e-6
    base = d2.detach()
    fd = (fdu.gaussian_divergence(name, base + h, method="quadrature")
          - fdu.gaussian_divergence(name, (base - h).clamp(min=0), method="quadrature")) / (
              (base + h) - (base - h).clamp(min=0))
    assert torch.allclose(g_quad, fd, rtol=1e-5, atol=1e-8)
    assert float(g_quad[0]) == pytest.approx(get_divergence(name).f2_at_1 / 2, rel=1e-9)


def test_float_in_float_out():
    assert isinstance(fdu.gaussian_divergence("js", 1.0), float)


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_rejects_bad_delta2(bad):
    with pytest.raises(ValueError, match="delta2"):
        fdu.gaussian_divergence("kl", bad)


def test_chi2_overflow_is_refused_with_the_safe_range():
    limit32 = safe_delta2_limit(get_divergence("chi2"), torch.float32)
    assert fdu.gaussian_divergence("chi2", torch.tensor([limit32 - 1])).isfinite().all()
    with pytest.raises(ValueError, match="safe range is 0 <= delta2 <= 88.7"):
        fdu.gaussian_divergence("chi2", torch.tensor([100.0]))
    with pytest.raises(ValueError, match="safe range"):
        fdu.gaussian_divergence("alpha", 5000.0, alpha=3.0)


def test_bounded_quadrature_saturates_far_away_and_unbounded_refuses():
    far = fdu.gaussian_divergence("js", 10 * QUADRATURE_MAX_DELTA2)
    assert far == pytest.approx(2 * math.log(2), rel=1e-9)  # the rule's own precision there
    with pytest.raises(ValueError, match="quadrature"):
        fdu.gaussian_divergence("kl", 10 * QUADRATURE_MAX_DELTA2, method="quadrature")


def test_every_divergence_increases_with_delta2():
    from fdu.verify import slopes
    _, slope = slopes(grid=log_grid(1e-3, 40.0, 25))
    for name, g in slope.items():
        assert (g > 0).all(), name
