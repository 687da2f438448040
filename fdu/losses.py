"""Unlearning losses: closed-form f-divergences between Gaussian reverse steps, and the
variational (critic) objective.

Closed form
-----------
The reverse steps p(x_{t-1} | x_t, c) of the frozen model under the anchor c and of the trained
model under the target c* are Gaussians with the same covariance sigma^2 I whose means differ by a
multiple of the denoiser outputs' difference. :func:`closed_form_loss` computes, per sample,

    m      = sum_i mask_i (pred_i - target_i)^2  /  n        (the squared distance)
    delta2 = m / sigma^2
    loss   = weight * D_f(delta2)                             (then averaged over the batch)

with ``n`` set by ``normalization``:

* ``"mean"`` (default, the official f-DMU convention): channels (dim 1) are summed and spatial
  positions averaged, n = number of (masked) spatial positions. For vectors (B, D) there are no
  spatial dimensions, so n = 1. This is the exact divergence for Gaussians of variance sigma^2 n.
* ``"sum"``: n = 1, so delta2 = ||pred - target||^2 / sigma^2 exactly.

Matching the official losses (``normalization="mean"``, ``sigma=1``; equal up to a constant, with
identical gradients; tested in ``tests/test_losses.py``):

=====================  ==========================  =======================================
official               value                       ``closed_form_loss`` call
=====================  ==========================  =======================================
MaskedMSE (KL-DMU)     m                           ``divergence="kl", weight=2``
H-DMU                  -exp(-m / 8)                ``divergence="squared_hellinger", weight=0.5``
                                                   (= official + 1)
P-DMU                  exp(m)                      ``divergence="pearson_chi2"`` (= official - 1)
=====================  ==========================  =======================================

Variational
-----------
D_f(P||Q) = sup_T E_P[T] - E_Q[f*(T)], T = g_f(V) with V the critic's logits. The critic ascends
the estimate, the denoiser descends it. :func:`variational_losses` evaluates both players' losses
so that neither's gradient can reach the other's parameters (the official code lets the
denoiser's backward pass accumulate into the critic's gradients; see paper.md section 7).
"""
from __future__ import annotations

import contextlib
import math
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F

from .divergences import get_divergence
from .gaussian import evaluate_divergence

NORMALIZATIONS = ("mean", "sum")


def _check_pair(pred: torch.Tensor, target: torch.Tensor):
    if not isinstance(pred, torch.Tensor) or not isinstance(target, torch.Tensor):
        raise ValueError("pred and target must be torch tensors")
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape, got {tuple(pred.shape)} "
                         f"and {tuple(target.shape)}")
    if pred.ndim < 2:
        raise ValueError(f"pred must be batched, (B, C, ...) or (B, D); got shape {tuple(pred.shape)}")


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


def _spatial_mask(mask: Optional[torch.Tensor], pred: torch.Tensor):
    """Return (mask broadcastable to pred or None, number of counted spatial positions per sample)."""
    spatial = pred.shape[2:]
    if mask is None:
        return None, math.prod(spatial)
    b, c = pred.shape[:2]
    if mask.shape == pred.shape:
        return mask, mask.reshape(b, -1).sum(1) / c
    if mask.shape == (b, 1, *spatial):
        return mask, mask.reshape(b, -1).sum(1)
    if spatial and mask.shape == (b, *spatial):
        return mask.unsqueeze(1), mask.reshape(b, -1).sum(1)
    raise ValueError(f"mask must have shape {(b, 1, *spatial)}, {(b, *spatial)} or "
                     f"{tuple(pred.shape)} for pred of shape {tuple(pred.shape)}; "
                     f"got {tuple(mask.shape)}")


def squared_distance(pred, target, *, mask=None, normalization: str = "mean") -> torch.Tensor:
    """Per-sample m = sum mask (pred - target)^2 / n (see the module docstring); target is detached."""
    _check_pair(pred, target)
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    mask, n_positions = _spatial_mask(mask, pred)
    sq = F.mse_loss(pred, target.detach(), reduction="none")  # one fused kernel each way
    if mask is not None:
        sq = sq * mask.to(sq.dtype)
    m = sq.flatten(1).sum(1)
    if normalization == "mean":
        if isinstance(n_positions, int):
            return m / n_positions
        m = m / n_positions.clamp(min=1).to(m.dtype)  # an all-zero mask contributes 0, not NaN
    return m


def closed_form_loss(pred, target, divergence, *, sigma=1.0, alpha=None, weight=1.0, mask=None,
                     normalization: str = "mean", reduction: str = "mean", method: str = "auto"):
    """weight * D_f between the Gaussian reverse steps with means differing by pred - target.

    ``pred``: trainable model's output for the target concept, (B, C, ...) or (B, D).
    ``target``: frozen model's output for the anchor (detached here). ``sigma``: the reverse
    step's standard deviation, a temperature (> 0; a number or one per sample). ``weight``:
    omega_t, a number or one per sample. ``reduction``: ``"mean"`` over the batch or ``"none"``.
    Any registry divergence works; those without a closed form use quadrature.
    """
    div = get_divergence(divergence, alpha)
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    m = squared_distance(pred, target, mask=mask, normalization=normalization)
    sigma = _per_sample(sigma, m.shape[0], "sigma", positive=True)
    weight = _per_sample(weight, m.shape[0], "weight", positive=False)
    delta2 = m / sigma ** 2
    if not bool(torch.isfinite(delta2.detach()).all()):
        raise FloatingPointError("pred or target contains inf or NaN: the loss would be NaN")
    per_sample = weight * evaluate_divergence(div, delta2, method)
    return per_sample.mean() if reduction == "mean" else per_sample


# --- variational ---------------------------------------------------------------------------------

def _masked_mean(x: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
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
