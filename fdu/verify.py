"""Checks of the registry and losses that notebook 01 reports and the tests assert.

Each function returns plain numbers (errors, slopes), so the notebook shows them, the results JSON
records them, and the tests bound them.
"""
from __future__ import annotations

import math

import torch

from . import symbolic
from .divergences import alpha_divergence, get_divergence
from .gaussian import gaussian_divergence
from .losses import closed_form_loss

CLOSED_FORM_NAMES = ("kl", "reverse_kl", "jeffreys", "squared_hellinger", "pearson_chi2",
                     "neyman_chi2", "total_variation")
ALL_NAMES = CLOSED_FORM_NAMES + ("jensen_shannon",)


def log_grid(lo: float = 1e-4, hi: float = 50.0, num: int = 13) -> list[float]:
    return [lo * (hi / lo) ** (i / (num - 1)) for i in range(num)]


def _divs(names, alphas):
    return [get_divergence(n) for n in names] + [alpha_divergence(a) for a in alphas]


def relative_error(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-300)


def closed_form_vs_integration(names=ALL_NAMES, alphas=(-1.0, 0.3, 0.5, 2.0), grid=None):
    """Max relative error of ``gaussian_divergence`` against direct integration of E_Q[f(p/q)]."""
    grid = grid or log_grid()
    out = {}
    for div in _divs(names, alphas):
        errors = []
        for d2 in grid:
            value = gaussian_divergence(div, d2)
            if math.isfinite(value):
                errors.append(relative_error(value, symbolic.numerical_gaussian_divergence(div, d2)))
        out[div.name] = max(errors)
    return out


def quadrature_vs_closed_form(names=CLOSED_FORM_NAMES, alphas=(-1.0, 0.3, 0.5, 2.0), grid=None):
    """Max relative error of the quadrature path against each closed form on a delta2 grid."""
    grid = torch.tensor(grid or log_grid(), dtype=torch.float64)
    out = {}
    for div in _divs(names, alphas):
        quad = gaussian_divergence(div, grid, method="quadrature")
        exact = gaussian_divergence(div, grid, method="closed_form")
        out[div.name] = float(((quad - exact).abs() / exact.abs()).max())
    return out


def conjugate_derivation_check(names=ALL_NAMES, points: int = 5):
    """Max |Legendre-derived f* - registry f*| at points inside each domain (closed-form f* only)."""
    out = {}
    for name in names:
        div = get_divergence(name)
        derived = symbolic.derive_conjugate(div) if div.smooth else None
        if derived is None or div.conjugate_expr is None:
            continue
        lo, hi = max(div.conjugate_domain[0], -3), min(div.conjugate_domain[1], 3)
        ts = torch.linspace(lo, hi, points + 2, dtype=torch.float64)[1:-1]
        exact = div.conjugate(ts)
        out[name] = max(abs(complex(derived.subs(symbolic.t, float(x))).real - float(e))
                        for x, e in zip(ts, exact))
    return out


def slope_identity(names=ALL_NAMES, grid=(0.01, 1.0, 10.0)):
    """dD/d delta2: finite difference vs 1/2 E_Q[r^2 f''(r)] (our derivation); smooth f only."""
    out = {}
    for name in names:
        div = get_divergence(name)
        if not div.smooth:
            continue
        pairs = [symbolic.gaussian_slope_identity(div, d2) for d2 in grid]
        out[name] = {"max_relative_error": max(relative_error(fd, s) for fd, s in pairs),
                     "min_slope": min(s for _, s in pairs)}
    return out


def slopes(names=ALL_NAMES, alphas=(0.5, 2.0), grid=None):
    """Autograd dD/d delta2 on a grid, for the monotonicity figure and check."""
    grid = torch.tensor(grid or log_grid(1e-3, 50.0, 60), dtype=torch.float64, requires_grad=True)
    out = {}
    for div in _divs(names, alphas):
        (g,) = torch.autograd.grad(gaussian_divergence(div, grid).sum(), grid)
        out[div.name] = g.detach()
    return grid.detach(), out


def official_masked_losses(pred, target, mask):
    """The official f-DMU closed-form losses (re-implemented from the official code's ``flosses.py``
    [f-DMU code], sigma = 1)."""
    m = (mask * (pred - target.detach()) ** 2).sum((1, 2, 3)) / mask.sum((1, 2, 3))
    return {"mse": m.mean(), "hellinger": (-torch.exp(-m / 8)).mean(), "pearson": torch.exp(m).mean()}


def official_match(seed: int = 0, scale: float = 0.3):
    """Max |gradient difference| between the official losses and ours with the documented constants.

    Also returns the constant offsets ours - official (expected: 0 for MSE, +1 H-DMU, -1 P-DMU).
    """
    gen = torch.Generator().manual_seed(seed)
    target = torch.randn(4, 4, 16, 16, generator=gen, dtype=torch.float64)
    pred0 = target + scale * torch.randn(4, 4, 16, 16, generator=gen, dtype=torch.float64)
    mask = torch.zeros(4, 1, 16, 16, dtype=torch.float64)
    mask[:, :, 1:-1, 1:-1] = 1  # the official 1-pixel border
    ours = {"mse": ("kl", 2.0), "hellinger": ("squared_hellinger", 0.5), "pearson": ("pearson_chi2", 1.0)}
    out = {}
    for key, (name, omega) in ours.items():
        p1 = pred0.clone().requires_grad_(True)
        p2 = pred0.clone().requires_grad_(True)
        official = official_masked_losses(p1, target, mask)[key]
        mine = closed_form_loss(p2, target, name, omega=omega, mask=mask, normalization="mean")
        (g1,) = torch.autograd.grad(official, p1)
        (g2,) = torch.autograd.grad(mine, p2)
        out[key] = {"offset": float((mine - official).detach()), "max_grad_diff": float((g1 - g2).abs().max()),
                    "max_grad": float(g1.abs().max())}
    return out


def minimiser_check(names=ALL_NAMES, alphas=(0.3, 0.5, 2.0)):
    """At pred == target every loss is 0 with a finite, zero gradient; nearby it is larger."""
    out = {}
    target = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for div in _divs(names, alphas):
        pred = target.clone().requires_grad_(True)
        loss = closed_form_loss(pred, target, div)
        (g,) = torch.autograd.grad(loss, pred)
        bumped = closed_form_loss(target + 1e-2, target, div)
        out[div.name] = {"loss_at_minimum": float(loss.detach()), "grad_is_finite": bool(torch.isfinite(g).all()),
                         "max_abs_grad": float(g.abs().max()), "loss_nearby": float(bumped)}
    return out


def conjugate_identities_at_one(names=ALL_NAMES) -> dict:
    """The two identities the game's Jacobian uses, for each smooth f with a closed-form f*:
    f*'(f'(1)) = 1 and f*''(f'(1)) = 1/f''(1) (f*' is the inverse function of f'), by autograd
    in float64; returns {name: {"first": |f*'(f'(1)) - 1|, "second": |f''(1) f*''(f'(1)) - 1|}}."""
    out = {}
    for name in names:
        div = get_divergence(name)
        if not div.smooth or div.conjugate_expr is None:
            continue
        u = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
        (fp,) = torch.autograd.grad(div.f(u), u)
        t0 = fp.detach().clone().requires_grad_(True)
        (d1,) = torch.autograd.grad(div.conjugate(t0), t0, create_graph=True)
        (d2,) = torch.autograd.grad(d1, t0)
        out[name] = {"first": abs(float(d1.detach()) - 1.0), "second": abs(div.f2_at_1 * float(d2) - 1.0)}
    return out
