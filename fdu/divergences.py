"""The f-divergence registry: every f-divergence defined once.

An f-divergence is D_f(P||Q) = E_Q[f(p/q)] with f convex and f(1) = 0. Each entry of
:data:`DIVERGENCES` carries

* ``f``            the generator f(u), u = p/q > 0;
* ``conjugate``    its convex conjugate f*(t) = sup_u (t u - f(u)) (``+inf`` outside its domain);
* ``activation``   g_f(v), the critic's output activation mapping a real logit into dom f*;
* ``f2_at_1``      f''(1), the curvature at the equilibrium u = 1;
* ``closed_form``  D_f between N(mu1, s^2 I) and N(mu2, s^2 I) as a function of
                   delta2 = ||mu1 - mu2||^2 / s^2, or ``None`` (then :mod:`fdu.gaussian` uses
                   Gauss-Hermite quadrature).

Every formula is written once against a small namespace of elementary functions (``ops``), so the
same definition runs in torch (training), sympy (derivations, :mod:`fdu.symbolic`) and mpmath
(high-precision checks). ``div.f(u)`` etc. are the torch versions.

The generators follow the f-GAN table (Nowozin et al. 2016) that the official f-DMU code uses, so
``squared_hellinger`` is f(u) = (sqrt(u) - 1)^2 and ``jensen_shannon`` is twice the usual JSD. The
``alpha`` family uses the Cressie-Read parameterisation f_a(u) = (u^a - 1 - a(u - 1)) / (a(a - 1)).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

Expr = Callable[[Any, Any], Any]  # (x, ops) -> expression in that backend


class _Expm1(torch.autograd.Function):
    """expm1 whose derivative is exp(x), exact for every x. torch's is expm1(x) + 1, which cancels
    for x << 0: in float32 the squared-Hellinger gradient e^(-d2/8) / 4 loses 4e-4 of its value at
    d2 = 80 and becomes 0 beyond d2 ~ 150, while the value -2 expm1(-d2/8) stays exact."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.expm1(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * torch.exp(x)   # differentiable again: second derivatives stay exact too


def _expm1(x):
    return _Expm1.apply(x) if isinstance(x, torch.Tensor) and x.requires_grad else torch.expm1(x)


class TorchOps:
    """Elementary functions for torch tensors (the training backend)."""

    log, exp, abs, tanh = torch.log, torch.exp, torch.abs, torch.tanh
    log1p, erf, softplus = torch.log1p, torch.erf, F.softplus
    expm1 = staticmethod(_expm1)
    LOG2 = math.log(2.0)

    @staticmethod
    def xlogx(x):
        return torch.xlogy(x, x)

    @staticmethod
    def sqrt(x):
        """sqrt with value 0 and gradient 0 at x = 0 (a subgradient), never inf * 0 = NaN."""
        positive = x > 0
        return torch.where(positive, torch.sqrt(torch.where(positive, x, torch.ones_like(x))),
                           torch.zeros_like(x))

    @staticmethod
    def pow(x, p):
        return torch.pow(x, p)


TORCH = TorchOps()


@dataclass(frozen=True)
class Divergence:
    """One f-divergence. Build new ones with this class and :func:`register_divergence`."""

    name: str
    formula: str                                  # f(u) in words, for tables
    generator: Expr                               # f(u)
    f2_at_1: float                                # f''(1); math.inf where f has a kink at 1
    conjugate_expr: Expr | None = None         # f*(t); None -> numerical Legendre transform
    activation_expr: Expr | None = None        # g_f(v); None -> no variational form
    conj_activation_expr: Expr | None = None   # f*(g_f(v)) in a numerically safe form
    closed_form_expr: Expr | None = None       # D_f(delta2) between equal-covariance Gaussians
    conjugate_domain: tuple = (-math.inf, math.inf)  # interval where f* is finite
    domain_closed: bool = False                   # whether its end points belong to it
    exp_rate: float = 0.0        # closed form grows like exp(exp_rate * delta2): overflow guard
    upper_bound: float | None = None           # sup over delta2 of D_f (None: unbounded)
    smooth: bool = True                           # f twice differentiable at 1
    f2_expr: Expr | None = None                # f''(u), optional (else autograd): speeds quadrature
    alpha: float | None = None
    description: str = ""
    aliases: tuple = field(default=())

    # --- torch callables -------------------------------------------------------------------
    def f(self, u):
        """The generator f(u) (torch)."""
        return self.generator(torch.as_tensor(u), TORCH)

    def conjugate(self, t):
        """f*(t) = sup_{u>0} (t u - f(u)); +inf outside the domain (torch)."""
        t = torch.as_tensor(t)
        if self.conjugate_expr is None:
            return numerical_conjugate(self, t)
        lo, hi = self.conjugate_domain
        inside = ((t >= lo) & (t <= hi)) if self.domain_closed else ((t > lo) & (t < hi))
        safe = torch.where(inside, t, torch.zeros_like(t))
        return torch.where(inside, self.conjugate_expr(safe, TORCH), torch.full_like(t, math.inf))

    def activation(self, v):
        """g_f(v): maps an unconstrained critic logit into dom f* (torch)."""
        self._require_variational()
        return self.activation_expr(torch.as_tensor(v), TORCH)

    def conjugate_of_activation(self, v):
        """f*(g_f(v)), computed in a form that stays finite for finite logits (torch)."""
        self._require_variational()
        v = torch.as_tensor(v)
        if self.conj_activation_expr is not None:
            return self.conj_activation_expr(v, TORCH)
        return self.conjugate(self.activation(v))

    @property
    def has_closed_form(self) -> bool:
        return self.closed_form_expr is not None

    @property
    def f1_at_1(self) -> float:
        """f'(1): the optimal critic output T* = f'(p/q) at the equilibrium p = q."""
        u = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
        (g,) = torch.autograd.grad(self.f(u), u)
        return float(g)

    def _require_variational(self):
        if self.activation_expr is None:
            raise ValueError(f"divergence {self.name!r} has no critic activation g_f, so it has no "
                             "variational form; register it with activation_expr=...")

    def __repr__(self):
        return f"Divergence({self.name!r}, f(u) = {self.formula}, f''(1) = {self.f2_at_1:g})"


def numerical_conjugate(div: Divergence, t: torch.Tensor, iters: int = 200) -> torch.Tensor:
    """f*(t) by solving f'(u) = t (bisection in log u), for an f registered without a conjugate.

    The maximiser u* is detached: by the envelope theorem d f*/dt = u*, so the returned tensor
    still has the exact first derivative in t. Returns +inf where t lies outside the range of f'.
    """
    t64 = t.detach().to(torch.float64)
    lo = torch.full_like(t64, -60.0)
    hi = torch.full_like(t64, 60.0)

    def f_prime(s):
        u = torch.exp(s).requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(div.f(u).sum(), u)
        return g

    outside = (t64 < f_prime(lo)) | (t64 > f_prime(hi))
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        go_right = f_prime(mid) < t64
        lo = torch.where(go_right, mid, lo)
        hi = torch.where(go_right, hi, mid)
    u_star = torch.exp(0.5 * (lo + hi)).to(t.dtype)
    value = t * u_star - div.f(u_star)
    return torch.where(outside, torch.full_like(value, math.inf), value)


# --- the registry ------------------------------------------------------------------------------

def _gauss_erf(d2, o):  # TV between equal-covariance Gaussians: erf(delta / (2 sqrt 2))
    return o.erf(o.sqrt(d2 / 8))


_ENTRIES = [
    Divergence(
        "kl", "u log u", lambda u, o: o.xlogx(u), 1.0,
        conjugate_expr=lambda t, o: o.exp(t - 1),
        activation_expr=lambda v, o: v,
        conj_activation_expr=lambda v, o: o.exp(v - 1),
        closed_form_expr=lambda d2, o: d2 / 2,
        description="Kullback-Leibler KL(P||Q); between equal-covariance Gaussians it is the MSE loss",
        aliases=("mse", "kullback_leibler")),
    Divergence(
        "reverse_kl", "-log u", lambda u, o: -o.log(u), 1.0,
        conjugate_expr=lambda t, o: -1 - o.log(-t),
        activation_expr=lambda v, o: -o.exp(-v),
        conj_activation_expr=lambda v, o: v - 1,
        closed_form_expr=lambda d2, o: d2 / 2,
        conjugate_domain=(-math.inf, 0.0),
        description="reverse KL, KL(Q||P)", aliases=("rkl",)),
    Divergence(
        "jeffreys", "(u - 1) log u", lambda u, o: (u - 1) * o.log(u), 2.0,
        conjugate_expr=None,  # needs the Lambert W function: solved numerically
        activation_expr=lambda v, o: v,
        closed_form_expr=lambda d2, o: d2,
        description="Jeffreys = KL + reverse KL"),
    Divergence(
        "squared_hellinger", "(sqrt(u) - 1)^2", lambda u, o: (o.sqrt(u) - 1) ** 2, 0.5,
        conjugate_expr=lambda t, o: t / (1 - t),
        activation_expr=lambda v, o: -o.expm1(-v),
        conj_activation_expr=lambda v, o: o.expm1(v),
        closed_form_expr=lambda d2, o: -2 * o.expm1(-d2 / 8),
        conjugate_domain=(-math.inf, 1.0), upper_bound=2.0,
        description="squared Hellinger (f-GAN scale): 2(1 - Bhattacharyya coefficient)",
        aliases=("hellinger", "h")),
    Divergence(
        "jensen_shannon", "u log u - (u + 1) log((u + 1) / 2)",
        lambda u, o: o.xlogx(u) - (u + 1) * (o.log1p(u) - o.LOG2), 0.5,
        conjugate_expr=lambda t, o: -o.log(2 - o.exp(t)),
        activation_expr=lambda v, o: o.LOG2 - o.softplus(-v),
        conj_activation_expr=lambda v, o: o.softplus(v) - o.LOG2,
        closed_form_expr=None,  # no elementary closed form: Gauss-Hermite quadrature
        f2_expr=lambda u, o: 1 / (u * (1 + u)),
        conjugate_domain=(-math.inf, math.log(2.0)), upper_bound=2 * math.log(2.0),
        description="Jensen-Shannon (f-GAN scale, twice the usual JSD)", aliases=("js", "jsd")),
    Divergence(
        "pearson_chi2", "(u - 1)^2", lambda u, o: (u - 1) ** 2, 2.0,
        conjugate_expr=lambda t, o: t * t / 4 + t,
        activation_expr=lambda v, o: v,
        conj_activation_expr=lambda v, o: v * v / 4 + v,
        closed_form_expr=lambda d2, o: o.expm1(d2), exp_rate=1.0,
        description="Pearson chi-squared", aliases=("pearson", "chi2", "chi_squared", "p")),
    Divergence(
        "neyman_chi2", "(1 - u)^2 / u", lambda u, o: (1 - u) ** 2 / u, 2.0,
        conjugate_expr=lambda t, o: 2 - 2 * o.sqrt(1 - t),
        activation_expr=lambda v, o: -o.expm1(-v),
        conj_activation_expr=lambda v, o: -2 * o.expm1(-v / 2),
        closed_form_expr=lambda d2, o: o.expm1(d2), exp_rate=1.0,
        conjugate_domain=(-math.inf, 1.0),
        description="Neyman chi-squared (equals Pearson between equal-covariance Gaussians)",
        aliases=("neyman",)),
    Divergence(
        "total_variation", "|u - 1| / 2", lambda u, o: o.abs(u - 1) / 2, math.inf,
        conjugate_expr=lambda t, o: t,
        activation_expr=lambda v, o: o.tanh(v) / 2,
        conj_activation_expr=lambda v, o: o.tanh(v) / 2,
        closed_form_expr=_gauss_erf,
        conjugate_domain=(-0.5, 0.5), domain_closed=True, upper_bound=1.0, smooth=False,
        description="total variation; f has a kink at 1, so f''(1) is infinite", aliases=("tv",)),
]


def _expm1_over(a: float, x, o):
    """expm1(a x) / a, with its limit x at a = 0."""
    return x if a == 0 else o.expm1(a * x) / a


def alpha_divergence(alpha: float) -> Divergence:
    """The Cressie-Read alpha-divergence f_a(u) = (u^a - 1 - a(u - 1)) / (a(a - 1)).

    a -> 1 is KL and a -> 0 is reverse KL (both handled exactly as limits); a = 1/2 is 4 x the
    squared Hellinger distance H^2 = 1 - BC (i.e. 2 x our ``squared_hellinger``); a = 2 is half of
    Pearson chi^2. Every member has f''(1) = 1. Between equal-covariance Gaussians
    D_a = (1 - exp(-a(1 - a) delta2 / 2)) / (a(1 - a)).
    """
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
        raise ValueError(f"alpha must be a finite real number, got {alpha!r}; for example 0.5 "
                         "(Hellinger), 2 (Pearson), 1 (KL), 0 (reverse KL)")
    a = float(alpha)
    c = a * (1 - a)
    if a == 1.0:
        gen = lambda u, o: o.xlogx(u) - u + 1  # noqa: E731
    elif a == 0.0:
        gen = lambda u, o: -o.log(u) + u - 1  # noqa: E731
    else:
        gen = lambda u, o: (o.pow(u, a) - 1 - a * (u - 1)) / (a * (a - 1))  # noqa: E731
    if a == 1.0:
        conj = lambda t, o: o.expm1(t)  # noqa: E731
    elif a == 0.0:
        conj = lambda t, o: -o.log1p(-t)  # noqa: E731
    else:
        conj = lambda t, o: (o.pow(1 + (a - 1) * t, a / (a - 1)) - 1) / a  # noqa: E731
    domain = (-math.inf, math.inf) if a == 1 else (
        (-math.inf, 1 / (1 - a)) if a < 1 else (-1 / (a - 1), math.inf))
    return Divergence(
        f"alpha({a:g})", "(u^a - 1 - a(u - 1)) / (a(a - 1))", gen, 1.0,
        conjugate_expr=conj,
        activation_expr=lambda v, o: _expm1_over(a - 1, v, o),
        conj_activation_expr=lambda v, o: _expm1_over(a, v, o),
        closed_form_expr=lambda d2, o: d2 / 2 if c == 0 else -o.expm1(-c * d2 / 2) / c,
        conjugate_domain=domain, exp_rate=max(0.0, -c / 2),
        upper_bound=1 / c if c > 0 else None, alpha=a,
        description=f"Cressie-Read alpha-divergence, alpha = {a:g}")


class AlphaFamily:
    """Registry entry for the alpha family: ``DIVERGENCES['alpha'].at(0.5)`` gives one member."""

    name = "alpha"
    description = "Cressie-Read alpha-divergences (pass alpha=...)"
    aliases = ("cressie_read", "alpha_divergence")

    def at(self, alpha):
        return alpha_divergence(alpha)

    def __repr__(self):
        return "AlphaFamily(f_a(u) = (u^a - 1 - a(u - 1)) / (a(a - 1)))"


DIVERGENCES: dict = {d.name: d for d in _ENTRIES}
DIVERGENCES["alpha"] = AlphaFamily()
ALIASES: dict = {a: name for name, d in DIVERGENCES.items() for a in d.aliases}


def valid_names() -> str:
    alias_text = ", ".join(f"{a}->{n}" for a, n in sorted(ALIASES.items()))
    return f"{', '.join(DIVERGENCES)} (aliases: {alias_text})"


def register_divergence(div: Divergence, *, overwrite: bool = False) -> Divergence:
    """Add a user-defined f-divergence; without a closed form it is evaluated by quadrature."""
    if not isinstance(div, Divergence):
        raise TypeError("register_divergence expects a Divergence")
    for key in (div.name, *div.aliases):
        if (key in DIVERGENCES or key in ALIASES) and not overwrite:
            raise ValueError(f"{key!r} is already registered; pass overwrite=True to replace it")
    f1 = float(div.f(torch.tensor(1.0, dtype=torch.float64)))
    if abs(f1) > 1e-12:
        raise ValueError(f"f(1) must be 0 for an f-divergence, but f(1) = {f1:g} for {div.name!r}")
    DIVERGENCES[div.name] = div
    ALIASES.update({a: div.name for a in div.aliases})
    return div


def get_divergence(divergence, alpha: float | None = None) -> Divergence:
    """Resolve a name, alias or :class:`Divergence` to a :class:`Divergence`.

    ``alpha`` is required for the ``alpha`` family and rejected elsewhere.
    """
    if isinstance(divergence, Divergence):
        if alpha is not None and divergence.alpha != alpha:
            raise ValueError(f"alpha={alpha} given with the fixed divergence {divergence.name!r}")
        return divergence
    if not isinstance(divergence, str):
        raise ValueError(f"divergence must be a name or a Divergence, got {divergence!r}; "
                         f"valid names: {valid_names()}")
    key = divergence.strip().lower().replace("-", "_").replace(" ", "_")
    key = ALIASES.get(key, key)
    if key not in DIVERGENCES:
        raise ValueError(f"unknown divergence {divergence!r}; valid names: {valid_names()}")
    entry = DIVERGENCES[key]
    if isinstance(entry, AlphaFamily):
        if alpha is None:
            raise ValueError("the 'alpha' divergence needs alpha=...: for example 0.5 (Hellinger), "
                             "2 (Pearson chi2), 1 (KL limit), 0 (reverse-KL limit)")
        return entry.at(alpha)
    if alpha is not None:
        raise ValueError(f"alpha={alpha} only applies to the 'alpha' family, not to {key!r}")
    return entry
