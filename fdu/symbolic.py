"""Symbolic derivations (sympy) and high-precision numerical checks (mpmath) of the registry.

The registry's formulas (:mod:`fdu.divergences`) are written once against an ``ops`` namespace;
here they run in sympy to derive, from f alone:

* the closed form of D_f between equal-covariance Gaussians, by the lognormal moment identity
  E_Q[r^p (log r)^k] = d^k/dp^k exp(p(p - 1) delta2 / 2)   (log r ~ N(-delta2/2, delta2) under Q),
  which works for every f that expands into terms c u^p (log u)^k;
* the convex conjugate f*(t) by the Legendre transform (solve f'(u) = t);
* f''(1);

and in mpmath to integrate E_Q[f(p/q)] directly, to check all of the above and the torch code.
"""
from __future__ import annotations

import math

import mpmath as mp
import sympy as sp

from .divergences import Divergence, alpha_divergence, get_divergence

u, t, v, s, p = sp.symbols("u t v s p", real=True)
delta2 = sp.Symbol("delta2", positive=True)      # delta^2 = ||mu1 - mu2||^2 / sigma^2
alpha = sp.Symbol("alpha", real=True)


class SympyOps:
    """The registry's elementary functions, symbolically."""

    log, exp, sqrt = staticmethod(sp.log), staticmethod(sp.exp), staticmethod(sp.sqrt)
    abs, tanh, erf = staticmethod(sp.Abs), staticmethod(sp.tanh), staticmethod(sp.erf)
    LOG2 = sp.log(2)

    @staticmethod
    def expm1(x):
        return sp.exp(x) - 1

    @staticmethod
    def log1p(x):
        return sp.log(1 + x)

    @staticmethod
    def softplus(x):
        return sp.log(1 + sp.exp(x))

    @staticmethod
    def xlogx(x):
        return x * sp.log(x)

    @staticmethod
    def pow(x, a):
        return x ** a


class MpmathOps:
    """The registry's elementary functions in arbitrary precision."""

    log, exp, sqrt = staticmethod(mp.log), staticmethod(mp.exp), staticmethod(mp.sqrt)
    abs, tanh, erf = staticmethod(mp.fabs), staticmethod(mp.tanh), staticmethod(mp.erf)
    expm1, log1p, LOG2 = staticmethod(mp.expm1), staticmethod(mp.log1p), mp.log(2)

    @staticmethod
    def softplus(x):
        return mp.log1p(mp.exp(x))

    @staticmethod
    def xlogx(x):
        return x * mp.log(x) if x != 0 else mp.mpf(0)

    @staticmethod
    def pow(x, a):
        return mp.power(x, a)


SYMPY, MPMATH = SympyOps(), MpmathOps()


def f_expr(div: Divergence, var=u):
    """f(u) as a sympy expression (u > 0)."""
    x = sp.Symbol(var.name, positive=True)
    return div.generator(x, SYMPY).subs(x, var)


def f2_at_1(div: Divergence):
    """f''(1), symbolically (+oo where f has a kink at 1, as total variation does)."""
    if not div.smooth:
        return sp.oo
    x = sp.Symbol("x", positive=True)
    return sp.simplify(sp.diff(div.generator(x, SYMPY), x, 2).subs(x, 1))


def _lognormal_moment(power, k: int):
    """E_Q[r^power (log r)^k] with log r ~ N(-delta2/2, delta2)."""
    mgf = sp.exp(p * (p - 1) * delta2 / 2)
    return sp.diff(mgf, p, k).subs(p, power)


def derive_gaussian_closed_form(div: Divergence):
    """D_f(delta2) = E_Q[f(p/q)] symbolically, or ``None`` if f is not a sum of c u^p (log u)^k.

    Total variation, whose f has a kink, is integrated on the half line where p > q instead.
    """
    if div.name == "total_variation":  # |u - 1| / 2: E_Q[|r - 1|]/2 = E_Q[(r - 1) 1{r > 1}]
        z, d = sp.symbols("z d", positive=True)
        density = sp.exp(-z ** 2 / 2) / sp.sqrt(2 * sp.pi)
        r = sp.exp(d * z - d ** 2 / 2)
        value = sp.integrate((r - 1) * density, (z, d / 2, sp.oo))
        return sp.simplify(value.rewrite(sp.erf)).subs(d, sp.sqrt(delta2))
    expr = sp.expand(sp.powsimp(sp.expand_log(f_expr(div).subs(u, sp.exp(s)), force=True),
                                force=True))
    total = 0
    for term in sp.Add.make_args(expr):
        coeff, rest = term.as_independent(s)
        k, power = 0, sp.Integer(0)
        for factor in sp.Mul.make_args(rest):
            base, exponent = factor.as_base_exp()
            if base == s and exponent.is_Integer and exponent >= 0:
                k += int(exponent)
            elif factor.func == sp.exp and sp.diff(factor.args[0], s, 2) == 0:
                power += sp.diff(factor.args[0], s)
            elif factor != 1:
                return None  # e.g. log(1 + u) in Jensen-Shannon: no elementary closed form
        total += coeff * _lognormal_moment(power, k)
    return sp.simplify(total)


def derive_conjugate(div: Divergence):
    """f*(t) = t u* - f(u*) where f'(u*) = t (the Legendre transform), or ``None`` if not solvable."""
    x = sp.Symbol("x", positive=True)
    f = div.generator(x, SYMPY)
    try:
        roots = sp.solve(sp.Eq(sp.diff(f, x), t), x)
    except NotImplementedError:
        return None
    if not roots:
        return None
    root = roots[-1]
    return sp.simplify(t * root - f.subs(x, root))


def alpha_family_closed_form():
    """(f_alpha(u), D_alpha(delta2)) with alpha symbolic, from the same moment identity."""
    f = (u ** alpha - 1 - alpha * (u - 1)) / (alpha * (alpha - 1))
    expectation = (_lognormal_moment(alpha, 0) - 1 - alpha * (_lognormal_moment(1, 0) - 1))
    return f, sp.simplify(expectation / (alpha * (alpha - 1)))


def alpha_special_cases():
    """The limits and special members of D_alpha, each next to the registry entry it reproduces."""
    _, d_alpha = alpha_family_closed_form()
    return {
        "alpha -> 1 (KL)": (sp.limit(d_alpha, alpha, 1), "kl", 1),
        "alpha -> 0 (reverse KL)": (sp.limit(d_alpha, alpha, 0), "reverse_kl", 1),
        "alpha = 1/2 (2 x squared Hellinger)": (sp.simplify(d_alpha.subs(alpha, sp.Rational(1, 2))),
                                                 "squared_hellinger", 2),
        "alpha = 2 (Pearson chi2 / 2)": (sp.simplify(d_alpha.subs(alpha, 2)),
                                         "pearson_chi2", sp.Rational(1, 2)),
    }


def gaussian_slope_identity(div: Divergence, delta2_value: float) -> tuple[float, float]:
    """(dD/d delta2 by finite difference, 1/2 E_Q[r^2 f''(r)]) at one delta2, in mpmath.

    Our derivation (Stein's lemma): dD_f/d delta2 = 1/2 E_Q[r^2 f''(r)] >= 0, so every
    f-divergence between equal-covariance Gaussians increases with delta2.
    """
    x = sp.Symbol("x", positive=True)
    f2 = sp.lambdify(x, sp.diff(div.generator(x, SYMPY), x, 2), "mpmath")
    h = mp.mpf("1e-8")
    slope_fd = (numerical_gaussian_divergence(div, delta2_value + h)
                - numerical_gaussian_divergence(div, delta2_value - h)) / (2 * h)
    slope = _expect_q(lambda r: r * r * f2(r), delta2_value) / 2
    return float(slope_fd), float(slope)


def _expect_q(g, d2) -> mp.mpf:
    """E_{z ~ N(0,1)}[g(exp(delta z - delta2/2))] by adaptive high-precision quadrature."""
    d = mp.sqrt(mp.mpf(d2))
    integrand = lambda z: mp.npdf(z) * g(mp.exp(d * z - mp.mpf(d2) / 2))  # noqa: E731
    points = [-mp.inf, -12, -4, 0, d / 2, d, d + 4, d + 12, mp.inf]
    return mp.quad(integrand, sorted(set(points)))


def numerical_gaussian_divergence(divergence, d2, alpha_value=None, dps: int = 30) -> float:
    """D_f(delta2) = E_Q[f(p/q)] integrated directly with mpmath (independent of any closed form)."""
    div = get_divergence(divergence, alpha_value)
    with mp.workdps(dps):
        return float(_expect_q(lambda r: div.generator(r, MPMATH), d2))


def registry_table(names=("kl", "reverse_kl", "jeffreys", "squared_hellinger", "jensen_shannon",
                          "pearson_chi2", "neyman_chi2", "total_variation"), alphas=(0.5, 2.0)):
    """Rows of (name, f, f*, g_f, f''(1), D_f(delta2)) as sympy expressions, for notebook 01."""
    rows = []
    divs = [get_divergence(n) for n in names] + [alpha_divergence(a) for a in alphas]
    for div in divs:
        conj = div.conjugate_expr(t, SYMPY) if div.conjugate_expr else derive_conjugate(div)
        closed = (div.closed_form_expr(delta2, SYMPY) if div.closed_form_expr else None)
        rows.append(dict(name=div.name, divergence=div, f=f_expr(div), conjugate=conj,
                         activation=div.activation_expr(v, SYMPY), f2_at_1=div.f2_at_1,
                         closed_form=closed))
    return rows


def _interval(lo, hi, closed):
    a = "-\\infty" if math.isinf(lo) else f"{sp.latex(sp.nsimplify(lo, [sp.log(2)]))}"
    b = "\\infty" if math.isinf(hi) else f"{sp.latex(sp.nsimplify(hi, [sp.log(2)]))}"
    left = "[" if closed and math.isfinite(lo) else "("
    right = "]" if closed and math.isfinite(hi) else ")"
    return f"${left}{a}, {b}{right}$"


def registry_markdown(rows=None) -> str:
    """The registry as a markdown table with LaTeX cells (f, f*, dom f*, g_f, f''(1), D_f)."""
    rows = rows or registry_table()
    names = {delta2: "\\delta^2"}

    def tex(e):
        if e is None:
            return "—"
        return f"${sp.latex(sp.nsimplify(e, rational=True), symbol_names=names)}$"

    lines = ["| name | $f(u)$ | $f^*(t)$ | dom $f^*$ | $g_f(v)$ | $f''(1)$ | $D_f(\\delta^2)$ |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        div = r["divergence"]
        f2 = "$\\infty$ (kink)" if math.isinf(r["f2_at_1"]) else f"{r['f2_at_1']:g}"
        conj = r["conjugate"]
        conj_text = "Lambert W (solved numerically)" if conj is not None and conj.has(sp.LambertW) \
            else tex(conj)
        closed = tex(r["closed_form"]) if r["closed_form"] is not None else "quadrature"
        dom = _interval(*div.conjugate_domain, div.domain_closed)
        lines.append(f"| `{r['name']}` | {tex(r['f'])} | {conj_text} | {dom} | "
                     f"{tex(r['activation'])} | {f2} | {closed} |")
    return "\n".join(lines)


# ---------------------------------------------------------------- flow matching (notebook 08)

def flow_reverse_steps() -> dict:
    """The stochastic reverse steps of a rectified flow x_t = (1 − t) x₀ + t ε, derived in sympy (one
    coordinate; the steps are isotropic): for each sampler, the mean μ(x_t, v̂), the variance, ∂μ/∂v̂ and
    c = (∂μ/∂v̂)² / variance, so δ² = c ‖Δv‖² (our derivation; :mod:`fdu.flow` has the same in torch).

    * ``posterior``: q(x_s | x_t, x₀) by Bayes' rule, completing the square in x_s of
      log q(x_t | x_s) + log q(x_s | x₀), then x₀ = x_t − t v̂;
    * ``sde``: one Euler–Maruyama step of dx = [v − ½ g² ∇log p] dt + g dW̄ backwards by Δt = t − s, with
      ∇log p = −(x_t + (1 − t) v̂)/t and g² = 2η t/(1 − t);
    * ``renoise``: x̂₀ = x_t − t v̂ then x_s = (1 − s) x̂₀ + s ε' (diffusers' stochastic sampling)."""
    xs, xt, x0, vh = sp.symbols("x_s x_t x_0 vhat", real=True)
    ts, ss, eta = sp.symbols("t s eta", positive=True)
    a_ts = (1 - ts) / (1 - ss)
    var_ts = sp.simplify(ts ** 2 - a_ts ** 2 * ss ** 2)
    log_post = -(xt - a_ts * xs) ** 2 / (2 * var_ts) - (xs - (1 - ss) * x0) ** 2 / (2 * ss ** 2)
    poly = sp.Poly(sp.expand(log_post), xs)
    precision = sp.simplify(-2 * poly.coeff_monomial(xs ** 2))
    mean = sp.simplify(poly.coeff_monomial(xs) / precision).subs(x0, xt - ts * vh)
    out = {"posterior": {"mean": sp.simplify(mean), "variance": sp.factor(sp.simplify(1 / precision))},
           "symbols": {"x_t": xt, "v": vh, "t": ts, "s": ss, "eta": eta}, "transition_variance": var_ts}
    g2, dt = 2 * eta * ts / (1 - ts), ts - ss
    score = -(xt + (1 - ts) * vh) / ts
    out["sde"] = {"mean": sp.simplify(xt - dt * (vh - g2 / 2 * score)), "variance": sp.simplify(g2 * dt)}
    out["renoise"] = {"mean": sp.expand((1 - ss) * (xt - ts * vh)), "variance": ss ** 2}
    for name in ("posterior", "sde", "renoise"):
        step = out[name]
        slope = sp.simplify(sp.diff(step["mean"], vh))
        step["dmean_dv"] = slope
        step["linear_in_v"] = sp.simplify(sp.diff(step["mean"], vh, 2)) == 0 and not slope.has(xt, vh)
        step["variance_free_of_model"] = not sp.sympify(step["variance"]).has(vh, xt)
        step["c"] = sp.factor(sp.simplify(slope ** 2 / step["variance"]))
    return out
