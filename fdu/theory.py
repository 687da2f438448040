"""How the choice of f changes the optimisation (notebooks 02 and 03).

Gradient weights (closed-form losses)
-------------------------------------
Every closed-form loss is a function D_f(delta2) of delta2 = ||pred - target||^2 / sigma^2, so its
gradient is dD_f/d(delta2) * 2 (pred - target) / sigma^2: the KL/MSE gradient times the per-sample
weight

    w_f(delta2) = (dD_f/d delta2) / (dD_KL/d delta2) = 2 dD_f/d delta2,

which is f''(1) at delta2 = 0 and, for the alpha family, exp(-alpha (1 - alpha) delta2 / 2) (our
derivation: the paper states the ordering, not this formula). :func:`gradient_weight` computes it by autograd through
the registry, :func:`symbolic_gradient_weight` by sympy, :func:`loss_gradient_weight` through
:func:`fdu.losses.closed_form_loss`; :func:`descend` runs plain gradient descent on a toy.

The min-max game (variational losses)
-------------------------------------
P = N(mu, sigma^2) is the anchor, Q_theta = N(theta, sigma^2) the model, and the critic
V_omega(x) = omega . phi(x) with phi(x) = (1, x) ("linear") or (1, x, x^2) ("quadratic"). With
T = g_f(V) the value is U(theta, omega) = E_P[T] - E_Q[f*(T)]; theta descends, omega ascends.
At the equilibrium theta = mu, V = v* with g_f(v*) = f'(1), the Jacobian of the simultaneous
field (-dU/dtheta, dU/domega) is (our reconstruction: the standard local analysis of GAN games
[Mescheder 2017; Nagarajan 2017]; the paper's own statement was not available to us)

    J = [[0, g' b^T], [-g' b, -(g'^2 / f''(1)) M]],   M = E_P[phi phi^T],  b = E_P[phi'(x)],

with g' = g_f'(v*). :class:`Game` computes it three ways (:func:`symbolic_jacobian` by sympy,
:meth:`Game.jacobian` by autograd, :func:`jacobian_formula` from the formula above), predicts the
linear rate of gradient descent-ascent from it (:func:`predicted_rate`) and simulates the game with
exact expectations (Gauss-Hermite) or finite batches (:meth:`Game.simulate`).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import scipy.optimize
import sympy as sp
import torch

from .divergences import Divergence, get_divergence
from .gaussian import evaluate_divergence
from .losses import closed_form_loss

# --- gradient weights -----------------------------------------------------------------------------


def gradient_weight(divergence, delta2, alpha=None, method: str = "auto") -> np.ndarray:
    """w_f(delta2) = 2 dD_f/d delta2 (KL/MSE has weight 1), by autograd in float64."""
    div = get_divergence(divergence, alpha)
    d2 = torch.as_tensor(np.asarray(delta2, dtype=float), dtype=torch.float64).requires_grad_(True)
    (slope,) = torch.autograd.grad(evaluate_divergence(div, d2, method).sum(), d2)
    return 2 * slope.numpy()


def symbolic_gradient_weight(divergence, alpha=None):
    """w_f(delta2) as a sympy expression, from the closed form that sympy derives from f alone.

    ``divergence="alpha"`` with ``alpha=None`` gives the family's weight with alpha symbolic.
    Returns ``None`` where f has no elementary closed form (Jensen-Shannon).
    """
    from . import symbolic

    if divergence == "alpha" and alpha is None:
        d = symbolic.alpha_family_closed_form()[1]
    else:
        d = symbolic.derive_gaussian_closed_form(get_divergence(divergence, alpha))
    return None if d is None else sp.simplify(2 * sp.diff(d, symbolic.delta2))


def loss_gradient_weight(divergence, delta2: float, *, sigma: float = 1.0, alpha=None,
                         dim: int = 8, seed: int = 0) -> float:
    """The same weight measured on the loss a user trains with: the gradient of
    ``closed_form_loss(pred, target, f)`` divided by that of ``closed_form_loss(..., "kl")``
    at a random (pred, target) pair with ||pred - target||^2 / sigma^2 = delta2."""
    g = torch.Generator().manual_seed(seed)
    direction = torch.randn(1, dim, generator=g, dtype=torch.float64)
    target = torch.randn(1, dim, generator=g, dtype=torch.float64)
    pred0 = target + direction / direction.norm() * math.sqrt(delta2) * sigma
    grads = []
    for name, a in ((divergence, alpha), ("kl", None)):
        pred = pred0.clone().requires_grad_(True)
        loss = closed_form_loss(pred, target, name, alpha=a, sigma=sigma, normalization="sum")
        (grad,) = torch.autograd.grad(loss, pred)
        grads.append(grad)
    return float((grads[0] * grads[1]).sum() / (grads[1] * grads[1]).sum())


def matched_learning_rate(divergence, lr: float, alpha=None) -> float:
    """The learning rate that gives f the same curvature step as KL at delta = 0: lr / f''(1)."""
    div = get_divergence(divergence, alpha)
    if not math.isfinite(div.f2_at_1):
        raise ValueError(f"{div.name} has f''(1) = inf (a kink at 1): no curvature to match")
    return lr / div.f2_at_1


def descend(divergence, anchors, start, *, lr: float, steps: int, sigma: float = 1.0, alpha=None,
            tol: float = 1e-3, reference=None, optimizer: str = "sgd") -> dict:
    """Gradient descent of one shared theta in R^d on mean_i D_f(||theta - y_i||^2 / sigma^2), with
    plain steps (``optimizer="sgd"``) or Adam (``"adam"``, torch's defaults but ``lr``: the official
    scripts' optimiser, which divides each coordinate's step by its running gradient RMS).

    ``anchors``: (n, d) targets y_i (n = 1: a mean pulled towards one anchor; n > 1 with a few far
    samples: the outlier toy). Distances are measured to ``reference`` (default: the anchors'
    mean). Returns the path of theta, its distances to ``reference``, the gradient L2 norms, the
    first iteration with distance < tol (None if never, or if the run diverged) and ``diverged``
    (True if the loss overflowed or went non-finite, which stops the run).
    """
    if optimizer not in ("sgd", "adam"):
        raise ValueError(f"optimizer must be 'sgd' or 'adam', got {optimizer!r}")
    y = torch.as_tensor(np.asarray(anchors, dtype=float), dtype=torch.float64)
    ref = y.mean(0) if reference is None else torch.as_tensor(reference, dtype=torch.float64)
    theta = torch.as_tensor(np.asarray(start, dtype=float), dtype=torch.float64).clone().requires_grad_(True)
    opt = (torch.optim.SGD if optimizer == "sgd" else torch.optim.Adam)([theta], lr=lr)
    path, gnorm, diverged = [theta.detach().numpy().copy()], [], False
    for _ in range(steps):
        try:
            loss = closed_form_loss(theta.expand_as(y), y, divergence, alpha=alpha, sigma=sigma,
                                    normalization="sum")
        except (ValueError, FloatingPointError):  # chi^2 beyond its float64 range, or inf inputs
            diverged = True
            break
        (grad,) = torch.autograd.grad(loss, theta)
        if not bool(torch.isfinite(grad).all()):
            diverged = True
            break
        theta.grad = grad
        opt.step()
        gnorm.append(float(grad.norm()))
        path.append(theta.detach().numpy().copy())
    path = np.array(path)
    dist = np.linalg.norm(path - ref.numpy(), axis=1)
    below = np.nonzero(dist < tol)[0]
    return {"distance": dist, "grad_norm": np.array(gnorm), "path": path, "diverged": diverged,
            "steps_to_tol": int(below[0]) if len(below) and not diverged else None}


def descent_table(names, starts, *, lr: float, steps: int, sigma: float = 1.0, tol: float = 1e-3,
                  matched: bool = False, optimizer: str = "sgd") -> dict:
    """Iterations for a mean in R^2 started at distance delta0 * sigma from its anchor to reach
    ``tol``, for each divergence and start: an int, ``"not reached"`` or ``"diverged"``. With
    ``matched`` each f uses :func:`matched_learning_rate` (lr / f''(1)) instead of ``lr``;
    ``optimizer``: see :func:`descend`."""
    table = {}
    for name in names:
        step = matched_learning_rate(name, lr) if matched else lr
        row = {}
        for d0 in starts:
            run = descend(name, [[0.0, 0.0]], [d0 * sigma, 0.0], lr=step, steps=steps, sigma=sigma,
                          tol=tol, optimizer=optimizer)
            row[str(d0)] = ("diverged" if run["diverged"] else
                            "not reached" if run["steps_to_tol"] is None else run["steps_to_tol"])
        table[name] = row
    return table


def outlier_batch(n_inliers: int = 45, n_outliers: int = 5, distance: float = 6.0,
                  spread: float = 0.3, dim: int = 2, seed: int = 0):
    """Anchor outputs y_i in R^dim: inliers ~ N(0, spread^2 I) and a few outliers ~ N(distance e,
    spread^2 I) along a random unit direction e. Returns (y, inlier mean)."""
    g = torch.Generator().manual_seed(seed)
    direction = torch.randn(dim, generator=g, dtype=torch.float64)
    y = spread * torch.randn(n_inliers + n_outliers, dim, generator=g, dtype=torch.float64)
    y[n_inliers:] += distance * direction / direction.norm()
    return y.numpy(), y[:n_inliers].mean(0).numpy()


def official_delta2(rms: np.ndarray, *, channels: int = 4, positions: int = 64 * 64,
                    sigma: float = 1.0, normalization: str = "mean") -> np.ndarray:
    """delta2 seen by the loss when every element of a (channels, positions) output differs by
    ``rms``: the official per-position mean gives channels rms^2 / sigma^2, the exact per-sample
    norm ("sum") channels positions rms^2 / sigma^2 (a temperature sqrt(positions) lower)."""
    n = channels * (positions if normalization == "sum" else 1)
    return n * np.asarray(rms, dtype=float) ** 2 / sigma ** 2


# --- the min-max game -------------------------------------------------------------------------------

CRITICS = {"linear": 2, "quadratic": 3}


def _features(x: torch.Tensor, critic: str) -> torch.Tensor:
    cols = [torch.ones_like(x), x, x * x][: CRITICS[critic]]
    return torch.stack(cols, -1)


@functools.lru_cache(maxsize=8)
def hermite_nodes(n: int = 64):
    """Nodes and weights of E[h(Z)], Z ~ N(0, 1) (probabilists' Gauss-Hermite), float64 tensors."""
    z, w = np.polynomial.hermite_e.hermegauss(n)
    return torch.tensor(z), torch.tensor(w / w.sum())


def equilibrium_logit(div: Divergence) -> float:
    """v* with g_f(v*) = f'(1): the critic's logit when P = Q."""
    target = div.f1_at_1

    def gap(v):
        return float(div.activation(torch.tensor(v, dtype=torch.float64))) - target

    return float(scipy.optimize.brentq(gap, -30.0, 30.0, xtol=1e-15))


def activation_slope(div: Divergence) -> float:
    """g_f'(v*), the activation's slope at the equilibrium logit."""
    v = torch.tensor(equilibrium_logit(div), dtype=torch.float64, requires_grad=True)
    (g1,) = torch.autograd.grad(div.activation(v), v)
    return float(g1)


@dataclass(frozen=True)
class Game:
    """The variational f-divergence game between P = N(mu, sigma^2) and Q_theta = N(theta, sigma^2).

    The state is z = (theta, omega_0, ..., omega_k) (a float64 numpy array or tensor).
    """

    divergence: str = "kl"
    critic: str = "linear"
    mu: float = 0.5
    sigma: float = 1.0
    nodes: int = 64
    logit_scale: float = 1.0     # T = g_f(k V): k rescales the activation's slope g' at v*

    def __post_init__(self):
        if self.critic not in CRITICS:
            raise ValueError(f"critic must be one of {sorted(CRITICS)}, got {self.critic!r}")
        if not self.sigma > 0:
            raise ValueError(f"sigma must be > 0, got {self.sigma}")
        get_divergence(self.divergence)._require_variational()

    @property
    def div(self) -> Divergence:
        return get_divergence(self.divergence)

    @property
    def dim(self) -> int:
        return 1 + CRITICS[self.critic]

    def equilibrium(self) -> np.ndarray:
        z = np.zeros(self.dim)
        z[0], z[1] = self.mu, equilibrium_logit(self.div) / self.logit_scale
        return z

    def value(self, z: torch.Tensor, zp=None, zq=None) -> torch.Tensor:
        """U(theta, omega) with exact expectations (Gauss-Hermite) or, given standard normal
        draws zp (for P) and zq (for Q), their sample means."""
        theta, omega = z[0], z[1:]
        if zp is None:
            nodes, w = hermite_nodes(self.nodes)
            zp, zq, wp, wq = nodes, nodes, w, w
        else:
            wp, wq = 1.0 / len(zp), 1.0 / len(zq)
        vp = self.logit_scale * _features(self.mu + self.sigma * zp, self.critic) @ omega
        vq = self.logit_scale * _features(theta + self.sigma * zq, self.critic) @ omega
        return (wp * self.div.activation(vp)).sum() - (wq * self.div.conjugate_of_activation(vq)).sum()

    def field(self, z, zp=None, zq=None) -> torch.Tensor:
        """The simultaneous gradient descent-ascent field F(z) = (-dU/dtheta, +dU/domega)."""
        z = torch.as_tensor(z, dtype=torch.float64)
        sign = torch.ones(self.dim, dtype=torch.float64)
        sign[0] = -1.0
        if not z.requires_grad:
            z = z.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.value(z, zp, zq), z)
        else:
            (grad,) = torch.autograd.grad(self.value(z, zp, zq), z, create_graph=True)
        return sign * grad

    def jacobian(self, z=None) -> np.ndarray:
        """dF/dz at z (default: the equilibrium), by autograd through exact expectations."""
        z0 = torch.as_tensor(self.equilibrium() if z is None else z, dtype=torch.float64)
        jac = torch.autograd.functional.jacobian(lambda x: self.field(x.requires_grad_(True)), z0)
        return jac.numpy()

    def moments(self):
        """M = E_P[phi phi^T] and b = E_P[phi'(x)] (exact, by Gauss-Hermite)."""
        nodes, w = hermite_nodes(self.nodes)
        x = self.mu + self.sigma * nodes
        phi = _features(x, self.critic)
        dphi = torch.stack([torch.zeros_like(x), torch.ones_like(x), 2 * x][: CRITICS[self.critic]], -1)
        return (phi.T * w) @ phi, (w[:, None] * dphi).sum(0)

    def formula_jacobian(self) -> np.ndarray:
        m, b = self.moments()
        g1 = self.logit_scale * activation_slope(self.div)
        return jacobian_formula(self.div.f2_at_1, g1, m.numpy(), b.numpy())

    def simulate(self, *, eta_theta: float, eta_omega: float, steps: int, start: np.ndarray,
                 mode: str = "simultaneous", batch: int | None = None, seed: int = 0,
                 states: bool = False) -> np.ndarray:
        """Run GDA from ``start``; return ||z_k - z*|| for k = 0..steps (or, with ``states``,
        the iterates z_k themselves, shape (steps + 1, dim)).


        ``mode``: "simultaneous" (both players use z_k) or "alternating" (theta first, then the
        critic sees the new theta). ``batch``: None for exact expectations, else fresh standard
        normal draws of that size from P and Q at every evaluation (seeded).
        """
        if mode not in ("simultaneous", "alternating"):
            raise ValueError(f"mode must be 'simultaneous' or 'alternating', got {mode!r}")
        gen = torch.Generator().manual_seed(seed)

        def draws():
            if batch is None:
                return None, None
            return (torch.randn(batch, generator=gen, dtype=torch.float64),
                    torch.randn(batch, generator=gen, dtype=torch.float64))

        eta = torch.full((self.dim,), float(eta_omega), dtype=torch.float64)
        eta[0] = eta_theta
        star = torch.as_tensor(self.equilibrium())
        z = torch.as_tensor(np.asarray(start, dtype=float)).clone()
        path = [z.clone()]
        for _ in range(steps):
            if mode == "simultaneous":
                z = z + eta * self.field(z, *draws())
            else:
                z = z.clone()
                z[0] = z[0] + eta[0] * self.field(z, *draws())[0]
                z[1:] = z[1:] + eta[1:] * self.field(z, *draws())[1:]
            path.append(z.detach().clone())
            if not bool(torch.isfinite(z).all()):
                break
        path = torch.stack(path)
        return path.numpy() if states else (path - star).norm(dim=1).numpy()


def jacobian_formula(f2_at_1: float, g1: float, m: np.ndarray, b: np.ndarray) -> np.ndarray:
    """J = [[0, g' b^T], [-g' b, -(g'^2 / f''(1)) M]] (1/f''(1) = 0 where f''(1) is infinite)."""
    m, b = np.asarray(m, dtype=float), np.asarray(b, dtype=float)
    k = len(b)
    jac = np.zeros((k + 1, k + 1))
    jac[0, 1:] = g1 * b
    jac[1:, 0] = -g1 * b
    jac[1:, 1:] = -(g1 ** 2 / f2_at_1 if math.isfinite(f2_at_1) else 0.0) * m
    return jac


def gda_matrix(jac: np.ndarray, eta_theta: float, eta_omega: float,
               mode: str = "simultaneous") -> np.ndarray:
    """The linearised one-step map of GDA at the equilibrium."""
    n = jac.shape[0]
    eta = np.full(n, float(eta_omega))
    eta[0] = eta_theta
    if mode == "simultaneous":
        return np.eye(n) + eta[:, None] * jac
    a_theta, a_omega = np.eye(n), np.eye(n)
    a_theta[0] += eta[0] * jac[0]
    a_omega[1:] += eta[1:, None] * jac[1:]
    return a_omega @ a_theta


def predicted_rate(jac: np.ndarray, eta_theta: float, eta_omega: float,
                   mode: str = "simultaneous") -> float:
    """Spectral radius of the linearised GDA map: the predicted contraction factor per step."""
    return float(np.max(np.abs(np.linalg.eigvals(gda_matrix(jac, eta_theta, eta_omega, mode)))))


def measured_rate(distance: np.ndarray, lo: float = 1e-12, hi: float | None = None) -> float:
    """Empirical linear rate: exp of the least-squares slope of log distance against iteration,
    over the iterations with lo < distance < hi (default hi: a tenth of the start)."""
    d = np.asarray(distance, dtype=float)
    hi = d[0] / 10 if hi is None else hi
    k = np.nonzero((d > lo) & (d < hi) & np.isfinite(d))[0]
    if len(k) < 5:
        raise ValueError(f"only {len(k)} iterations with {lo:g} < distance < {hi:g}: run longer")
    # only the first stretch inside the window (a noisy run may re-enter it later)
    gaps = np.nonzero(np.diff(k) > 1)[0]
    k = k[: gaps[0] + 1] if len(gaps) else k
    if len(k) < 5:
        raise ValueError("the distance left the fitting window too quickly: run longer")
    slope = np.polyfit(k, np.log(d[k]), 1)[0]
    return float(np.exp(slope))


def closed_form_rate(divergence, eta: float, sigma: float = 1.0) -> float:
    """Gradient descent on D_f(||theta - mu||^2 / sigma^2) near the optimum: |1 - eta f''(1)/sigma^2|."""
    return abs(1 - eta * get_divergence(divergence).f2_at_1 / sigma ** 2)


def symbolic_jacobian(divergence, critic: str = "linear", mu=None, sigma=None) -> sp.Matrix:
    """The Jacobian of the GDA field at the equilibrium, derived by sympy.

    The integrand of U is differentiated symbolically, evaluated at the equilibrium (where it is a
    polynomial in the standard normal draw z) and integrated with the Gaussian moments
    E[z^k] = (k - 1)!!. ``mu`` and ``sigma`` default to symbols.
    """
    from .symbolic import SYMPY, f_expr
    from .symbolic import u as u_sym

    div = get_divergence(divergence)
    div._require_variational()
    mu = sp.Symbol("mu", real=True) if mu is None else sp.nsimplify(mu)
    sigma = sp.Symbol("sigma", positive=True) if sigma is None else sp.nsimplify(sigma)
    theta, z, v = sp.symbols("theta z v", real=True)
    omega = sp.symbols(f"omega0:{CRITICS[critic]}", real=True)

    def critic_at(x):
        return sum(w * x ** i for i, w in enumerate(omega))

    g = div.activation_expr(v, SYMPY)
    h = div.conj_activation_expr(v, SYMPY) if div.conj_activation_expr else div.conjugate_expr(g, SYMPY)
    value = g.subs(v, critic_at(mu + sigma * z)) - h.subs(v, critic_at(theta + sigma * z))
    state = (theta, *omega)
    field = [-sp.diff(value, theta)] + [sp.diff(value, w) for w in omega]
    f1 = sp.diff(f_expr(div), u_sym).subs(u_sym, 1)
    roots = [r for r in sp.solve(sp.Eq(g, f1), v) if r.is_real]
    v_star = roots[0] if roots else sp.nsimplify(equilibrium_logit(div))
    at_star = {theta: mu, omega[0]: v_star, **{w: 0 for w in omega[1:]}}

    def expect(expr):
        poly = sp.Poly(sp.expand(sp.simplify(expr.subs(at_star))), z)
        return sp.simplify(sum(c * (sp.factorial2(k - 1) if k % 2 == 0 else 0)
                               for (k,), c in poly.terms()))

    return sp.Matrix([[expect(sp.diff(fi, x)) for x in state] for fi in field])


# --- what notebook 03 tabulates ---------------------------------------------------------------------

def game_summary(game: Game) -> dict:
    """f'(1), v*, g'(v*), f''(1) and the eigenvalues of J at the equilibrium of ``game``."""
    div = game.div
    eig = np.linalg.eigvals(game.jacobian())
    v_star = equilibrium_logit(div) / game.logit_scale
    return {"f1_at_1": div.f1_at_1, "v_star": float(np.round(v_star, 12)) + 0.0,
            "kappa": damping_ratio(game),
            "g_slope": game.logit_scale * activation_slope(div), "f2_at_1": div.f2_at_1,
            "eigenvalues": sorted(eig.tolist(), key=lambda e: (e.real, e.imag)),
            "slowest_real_part": float(np.max(eig.real))}


def damping_ratio(game: Game) -> float:
    """kappa = g'(v*) / f''(1). J = g' K(kappa) with K = [[0, b^T], [-b, -kappa M]], and kappa does
    not change when f is rescaled (c f has slope c g' and curvature c f''(1)): the step sizes set
    the speed (eta g'), kappa the shape of the dynamics. 0 where f''(1) is infinite (TV)."""
    f2 = game.div.f2_at_1
    return game.logit_scale * activation_slope(game.div) / f2 if math.isfinite(f2) else 0.0


def effective_step_rate(game: Game, effective_step: float, mode: str = "simultaneous") -> float:
    """Predicted GDA rate of ``game`` when eta * g'(v*) = ``effective_step`` for both players."""
    m, b = game.moments()
    kappa = damping_ratio(game)
    shape = jacobian_formula(1 / kappa if kappa else math.inf, 1.0, m.numpy(), b.numpy())
    return predicted_rate(shape, effective_step, effective_step, mode)


def rate_comparison(game: Game, *, eta_theta: float, eta_omega: float, steps: int,
                    perturbation: float = 1e-3, mode: str = "simultaneous") -> dict:
    """Predicted (linearisation) and measured (exact-expectation simulation) rates of GDA."""
    rng = np.random.default_rng(0)
    direction = rng.standard_normal(game.dim)
    start = game.equilibrium() + perturbation * direction / np.linalg.norm(direction)
    dist = game.simulate(eta_theta=eta_theta, eta_omega=eta_omega, steps=steps, start=start,
                         mode=mode)
    predicted = predicted_rate(game.jacobian(), eta_theta, eta_omega, mode)
    try:
        measured = measured_rate(dist)
    except ValueError:  # never contracted by 10x (TV, an unstable step, or too few steps)
        finite = np.nonzero(np.isfinite(dist) & (dist < 1e100))[0]
        last = finite[-1] if len(finite) > 1 else 1
        measured = float(np.exp(np.log(dist[last] / dist[0]) / last))
    return {"predicted_rate": predicted, "measured_rate": measured, "distance": dist}


def batch_runs(game: Game, batches, *, eta: float, steps: int, start_offset: float = 0.5,
               seeds: int = 8) -> dict:
    """GDA with fresh samples of each batch size: the seed-averaged distance (whose transient gives
    a rate) and the noise floor (median distance of single runs over the last third)."""
    star = game.equilibrium()
    start = star.copy()
    start[0] += start_offset
    out = {}
    for n in batches:
        paths = np.stack([game.simulate(eta_theta=eta, eta_omega=eta, steps=steps, start=start,
                                        batch=n, seed=k, states=True) for k in range(seeds)])
        single = np.linalg.norm(paths - star, axis=2)
        mean_dist = np.linalg.norm(paths.mean(0) - star, axis=1)
        floor = float(np.median(single[:, -steps // 3:]))
        try:
            rate = measured_rate(mean_dist, lo=3 * floor / math.sqrt(seeds), hi=start_offset / 3)
        except ValueError:
            rate = float("nan")
        out[n] = {"floor": floor, "rate_of_mean_path": rate, "single_run": single[0],
                  "mean_path": mean_dist}
    return out


# --- two time-scales: a critic step r times the model's ----------------------------------------------

def two_timescale_equivalent(jac: np.ndarray, eta: float, ratio: float) -> tuple[np.ndarray, float]:
    """(J', eta') such that simultaneous GDA with steps (eta, ratio * eta) on ``jac`` is similar to
    GDA with one step eta' = eta sqrt(r) on J' = J with its critic block times sqrt(r). In the
    critic's rescaled coordinates omega = sqrt(r) omega~ the two one-step maps are the same matrix
    (:func:`symbolic_two_timescale` derives it), so a critic learning rate r times the model's
    multiplies the damping ratio kappa by sqrt(r) and the effective step by sqrt(r)."""
    root = math.sqrt(ratio)
    scaled = np.array(jac, dtype=float)
    scaled[1:, 1:] *= root
    return scaled, eta * root


def symbolic_two_timescale(k: int = 2) -> sp.Matrix:
    """P^-1 (I + S J) P - (I + eta sqrt(r) J_r) for a generic game Jacobian with k critic features
    (J = [[0, a^T], [-a, -D]], D symmetric), S = diag(eta, r eta, ...), P = diag(1, sqrt(r), ...) and
    J_r = [[0, a^T], [-a, -sqrt(r) D]]; sympy simplifies it to the zero matrix."""
    eta, r = sp.symbols("eta r", positive=True)
    a = sp.symbols(f"a1:{k + 1}", real=True)
    d = sp.Matrix(k, k, lambda i, j: sp.Symbol(f"d{min(i, j) + 1}{max(i, j) + 1}", real=True))
    jac = sp.zeros(k + 1, k + 1)
    jac_r = sp.zeros(k + 1, k + 1)
    for i in range(k):
        jac[0, i + 1] = jac_r[0, i + 1] = a[i]
        jac[i + 1, 0] = jac_r[i + 1, 0] = -a[i]
        for j in range(k):
            jac[i + 1, j + 1] = -d[i, j]
            jac_r[i + 1, j + 1] = -sp.sqrt(r) * d[i, j]
    steps = sp.diag(eta, *([r * eta] * k))
    change = sp.diag(1, *([sp.sqrt(r)] * k))
    eye = sp.eye(k + 1)
    return sp.simplify(change.inv() * (eye + steps * jac) * change - (eye + eta * sp.sqrt(r) * jac_r))
