"""Unlearning losses: closed-form f-divergences between Gaussian reverse steps, and the
variational (critic) objective.

Closed form
-----------
The reverse steps p(x_{t-1} | x_t, c) of the frozen model under the anchor c and of the trained
model under the target c* are Gaussians with the same covariance sigma^2 I whose means differ by a
multiple of the denoiser outputs' difference. :func:`closed_form_loss` computes, per sample,

    m      = sum_i mask_i (trained_out_i - anchor_out_i)^2 / n   (the squared distance)
    delta2 = m / sigma^2
    loss   = omega * D_f(delta2)                                  (then averaged over the batch)

where ``trained_out`` is the trained model's output for the target concept and ``anchor_out``
the frozen model's output for the anchor, and omega is ω_t (not the gradient weight w_f of
:mod:`fdu.theory`, nor the distribution over timesteps ``UnlearnConfig.timestep_probs``).

with ``n`` set by ``normalization``:

* ``"mean"`` (default, the official f-DMU convention): channels (dim 1) are summed and spatial
  positions averaged, n = number of (masked) spatial positions. For vectors (B, D) there are no
  spatial dimensions, so n = 1. This is the exact divergence for Gaussians of variance sigma^2 n.
* ``"sum"``: n = 1, so delta2 = ||trained_out - anchor_out||^2 / sigma^2 exactly.

Matching the official losses (``normalization="mean"``, ``sigma=1``; equal up to a constant, with
identical gradients; tested in ``tests/test_losses.py``):

=====================  ==========================  =======================================
official               value                       ``closed_form_loss`` call
=====================  ==========================  =======================================
MaskedMSE (KL-DMU)     m                           ``divergence="kl", omega=2``
H-DMU                  -exp(-m / 8)                ``divergence="squared_hellinger", omega=0.5``
                                                   (= official + 1)
P-DMU                  exp(m)                      ``divergence="pearson_chi2"`` (= official - 1)
=====================  ==========================  =======================================

Variational
-----------
D_f(P||Q) = sup_T E_P[T] - E_Q[f*(T)], T = g_f(V) with V the critic's logits. The critic ascends
the estimate, the denoiser descends it. :func:`variational_losses` evaluates both players' losses
so that neither's gradient can reach the other's parameters (the official code lets the
denoiser's backward pass accumulate into the critic's gradients; tested in
``tests/test_losses.py``).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .divergences import get_divergence
from .gaussian import DivergenceOverflowError, evaluate_divergence

NORMALIZATIONS = ("mean", "sum")


@dataclass(frozen=True)
class LossSpec:
    """One way of unlearning, as the benchmarks of every scale name it: a divergence (with its α
    for the ``alpha`` family), closed form or variational, and the label its curves carry."""

    label: str
    divergence: str
    alpha: float | None = None
    variational: bool = False


def _check_pair(trained_out: torch.Tensor, anchor_out: torch.Tensor):
    if not isinstance(trained_out, torch.Tensor) or not isinstance(anchor_out, torch.Tensor):
        raise ValueError("trained_out and anchor_out must be torch tensors")
    if trained_out.shape != anchor_out.shape:
        raise ValueError(f"trained_out and anchor_out must have the same shape, got "
                         f"{tuple(trained_out.shape)} and {tuple(anchor_out.shape)}")
    if trained_out.ndim < 2:
        raise ValueError(f"outputs must be batched, (B, C, ...) or (B, D); got shape {tuple(trained_out.shape)}")


def _per_sample(value, batch: int, name: str, positive: bool) -> torch.Tensor | float:
    if isinstance(value, torch.Tensor):
        if value.numel() not in (1, batch):
            raise ValueError(f"{name} must be a number or a tensor with 1 or B={batch} entries, "
                             f"got shape {tuple(value.shape)}")
        bad = (value <= 0) if positive else (value < 0)
        if bool(bad.any()) or not bool(torch.isfinite(value).all()):
            raise ValueError(f"{name} must be finite and {'> 0' if positive else '>= 0'}")
        return value.reshape(-1)
    if not (value > 0 if positive else value >= 0) or value != value or value == float("inf"):
        raise ValueError(f"{name} must be finite and {'> 0' if positive else '>= 0'}, got {value}")
    return value


def _spatial_mask(mask: torch.Tensor | None, out: torch.Tensor):
    """(mask broadcastable to ``out`` or None, counted spatial positions per sample).

    Accepted shapes, for outputs (B, C, *S): (B, 1, *S) (the official one-channel mask), (B, *S),
    (B, C, *S) (per element), and any of these with 1 in place of B (one mask for the batch). A
    position counts by its mask value; a per-element mask counts it by the mean over channels, so
    a mask equal on every channel gives the same m as its one-channel version (the official code,
    given a per-element mask, would divide by C times more)."""
    spatial = out.shape[2:]
    if mask is None:
        return None, math.prod(spatial)
    b, c = out.shape[:2]
    if spatial and mask.ndim == out.ndim - 1:
        mask = mask.unsqueeze(1)
    if mask.ndim != out.ndim or mask.shape[0] not in (1, b) or mask.shape[1] not in (1, c) \
            or mask.shape[2:] != spatial:
        raise ValueError(f"mask must have shape {(b, 1, *spatial)}, {(b, *spatial)} or "
                         f"{tuple(out.shape)} (or 1 in place of B={b}) for outputs of shape "
                         f"{tuple(out.shape)}; got {tuple(mask.shape)}")
    if not bool(torch.isfinite(mask).all()) or bool((mask < 0).any()):
        raise ValueError("mask values must be finite and >= 0 (a negative weight would reward "
                         "the difference it should penalise)")
    mask = mask.to(out.device)
    counted = mask.expand(b, *mask.shape[1:]).reshape(b, -1).sum(1) / mask.shape[1]
    return mask, counted


def squared_distance(trained_out, anchor_out, *, mask=None, normalization: str = "mean") -> torch.Tensor:
    """Per-sample m = sum mask (trained_out - anchor_out)^2 / n (see the module docstring);
    ``anchor_out`` is detached. A sample whose mask counts no position has m = 0."""
    _check_pair(trained_out, anchor_out)
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    mask, n_positions = _spatial_mask(mask, trained_out)
    sq = F.mse_loss(trained_out, anchor_out.detach(), reduction="none")  # one fused kernel each way
    if mask is not None:
        sq = sq * mask.to(sq.dtype)
    m = sq.flatten(1).sum(1)
    if normalization == "mean":
        if isinstance(n_positions, int):
            return m / n_positions
        n = n_positions.to(m.dtype)
        m = torch.where(n > 0, m / torch.where(n > 0, n, torch.ones_like(n)), torch.zeros_like(m))
    return m


def closed_form_loss(trained_out, anchor_out, divergence, *, sigma=1.0, alpha=None, omega=1.0,
                     mask=None, normalization: str = "mean", reduction: str = "mean",
                     method: str = "auto"):
    """omega * D_f between the Gaussian reverse steps with means differing by trained_out - anchor_out.

    ``trained_out``: the trained model's output for the target concept, (B, C, ...) or (B, D).
    ``anchor_out``: the frozen model's output for the anchor (detached here). ``sigma``: the
    reverse step's standard deviation, a temperature (> 0; a number or one per sample).
    ``omega``: ω_t, a number or one per sample. ``mask``: see :func:`_spatial_mask`.
    ``reduction``: ``"mean"`` over the batch or ``"none"``. Any registry divergence works; those
    without a closed form use quadrature.
    """
    div = get_divergence(divergence, alpha)
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    m = squared_distance(trained_out, anchor_out, mask=mask, normalization=normalization)
    sigma = _per_sample(sigma, m.shape[0], "sigma", positive=True)
    omega = _per_sample(omega, m.shape[0], "omega", positive=False)
    if not bool(torch.isfinite(m.detach()).all()):
        raise FloatingPointError("trained_out or anchor_out contains inf or NaN: the loss would be NaN")
    delta2 = m / sigma ** 2
    if not bool(torch.isfinite(delta2.detach()).all()):
        raise DivergenceOverflowError(
            f"delta2 = m / sigma^2 overflows {delta2.dtype} (sigma = {_describe(sigma)} is too small "
            f"for m up to {float(m.detach().max()):.3g}); use a larger sigma")
    try:
        per_sample = omega * evaluate_divergence(div, delta2, method)
    except DivergenceOverflowError as err:
        if normalization == "sum":
            raise DivergenceOverflowError(f"{err}; or normalization='mean' (the official per-position "
                                          "mean, a smaller delta2)") from None
        raise
    return per_sample.mean() if reduction == "mean" else per_sample


def _describe(x) -> str:
    return f"{float(x.min()):.3g}" if isinstance(x, torch.Tensor) else f"{x:.3g}"


# --- variational ---------------------------------------------------------------------------------

def _masked_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return x.mean()
    try:
        mask = torch.broadcast_to(mask.to(x.dtype), x.shape)
    except RuntimeError:
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not broadcast to the critic "
                         f"logits' shape {tuple(x.shape)}; resize it to the logits first") from None
    return (x * mask).sum() / mask.sum().clamp(min=1e-12)


def critic_loss(divergence, real_logits, fake_logits, mask=None, *, alpha=None):
    """The critic's loss: -(E_P[g_f(V_real)] - E_Q[f*(g_f(V_fake))]) (minimise it).

    ``real_logits`` = V on the frozen model's anchor outputs (P), ``fake_logits`` = V on the
    trained model's target outputs (Q); the caller detaches the inputs (see
    :func:`variational_losses`, which does it for you).
    """
    div = get_divergence(divergence, alpha)
    estimate = _masked_mean(div.activation(real_logits), mask) - _masked_mean(
        div.conjugate_of_activation(fake_logits), mask)
    return -estimate


def generator_loss(divergence, fake_logits, mask=None, *, alpha=None):
    """The denoiser's loss: -E_Q[f*(g_f(V_fake))]; E_P[T] does not depend on the denoiser."""
    div = get_divergence(divergence, alpha)
    return -_masked_mean(div.conjugate_of_activation(fake_logits), mask)


@contextlib.contextmanager
def frozen(module: torch.nn.Module):
    """Temporarily stop ``module``'s parameters from requiring (and so receiving) gradients."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield module
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


class VariationalLosses(NamedTuple):
    critic: torch.Tensor      # backward reaches only the critic's parameters
    generator: torch.Tensor   # backward reaches only what produced ``fake``
    estimate: torch.Tensor    # the detached divergence estimate E_P[T] - E_Q[f*(T)]


def variational_losses(divergence, critic: torch.nn.Module, real, fake, *, mask=None, alpha=None):
    """Both players' losses for one batch, with no path for gradients to leak between them.

    ``real``: frozen model's outputs under the anchor (P); ``fake``: trained model's outputs under
    the target (Q). The critic sees detached inputs; the denoiser's loss is computed with the
    critic's parameters frozen, so its backward pass leaves the critic's ``.grad`` untouched.
    """
    div = get_divergence(divergence, alpha)
    c_loss = critic_loss(div, critic(real.detach()), critic(fake.detach()), mask)
    with frozen(critic):
        g_loss = generator_loss(div, critic(fake), mask)
    return VariationalLosses(c_loss, g_loss, -c_loss.detach())
