"""The DDPM reverse step's bookkeeping: how a difference of the two models' outputs at one x_t becomes
δ², the distance between the two Gaussian reverse steps that every closed form of :mod:`fdu.gaussian`
takes.

For the step t → t−1 of DDPM's sampler (Ho et al., 2020, eq. 11) the mean is
μ = (x_t − β_t/√(1−ᾱ_t) · ε̂)/√α_t and the variance σ_t² does not depend on the model, so at a fixed x_t

    Δμ = −β_t / √(α_t (1−ᾱ_t)) · Δε,        δ² = ‖Δμ‖² / σ_t² = c_t ‖Δε‖²,
    c_t = β_t² / (σ_t² α_t (1−ᾱ_t)).

σ_t² is the sampler's choice (Ho et al., 2020, §3.2): ``"posterior"``, β̃_t = β_t (1−ᾱ_{t−1})/(1−ᾱ_t)
(diffusers' ``fixed_small``, the default of its DDPM scheduler), or ``"beta"``, β_t (``fixed_large``).
The last step (t = 0) adds no noise, so its divergence would be infinite: there both choices use β_0.
A model that predicts v or x₀ enters through Δε = s_t · Δoutput (:func:`epsilon_scale`), so the
factor on ‖Δoutput‖² is c_t s_t² (:func:`output_delta2_factor`).

The official losses instead use δ² = ‖Δoutput‖² / (number of positions) with σ = 1 at every t
(``normalization="mean"``): a temperature that is the same at every t, where the true one moves with
c_t. Notebook 02 (section 5) shows by how much under Stable Diffusion's schedule; the unlearning loop
trains with the true δ² under ``normalization="reverse_step"``. c_t is derived in notebook 01 and
checked against diffusers' own ``DDPMScheduler.step`` in ``tests/test_reverse_step.py``.
"""
from __future__ import annotations

import torch

VARIANCES = ("posterior", "beta")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def _schedule(scheduler, t: torch.Tensor):
    abar = getattr(scheduler, "alphas_cumprod", None)
    if abar is None:
        raise ValueError(f"{type(scheduler).__name__} has no alphas_cumprod: the reverse-step δ² is defined "
                         "for DDPM-family schedules (DDPM, DDIM, PNDM, Euler, DPM-Solver); a flow-matching "
                         "schedule's is output_delta2_factor's (fdu.flow)")
    abar = torch.as_tensor(abar).to(torch.float64)
    t = torch.as_tensor(t).cpu().long()
    if bool((t < 0).any()) or bool((t >= len(abar)).any()):
        raise ValueError(f"timesteps must lie in [0, {len(abar)}), got {t.min().item()}..{t.max().item()}")
    now = abar[t]
    prev = torch.where(t > 0, abar[(t - 1).clamp(min=0)], torch.ones_like(now))
    return now, prev


def epsilon_scale(scheduler, t: torch.Tensor) -> torch.Tensor:
    """Per-sample factor s_t with Δε = s_t · Δoutput at a fixed x_t, from the scheduler's prediction
    type: 1 for ε; √ᾱ_t for v (ε = √ᾱ_t v + √(1−ᾱ_t) x_t); √(ᾱ_t / (1−ᾱ_t)) for x₀ ("sample"),
    up to a sign that a squared distance does not see. float32."""
    from .flow import is_flow

    if is_flow(scheduler):   # a flow-matching model's v: Δε = (1 − t) Δv
        return scheduler.epsilon_scale(t)
    kind = scheduler.config.get("prediction_type", "epsilon")
    if kind not in PREDICTION_TYPES:
        raise ValueError(f"the prediction type {kind!r} is not one of {PREDICTION_TYPES}")
    abar, _ = _schedule(scheduler, t)
    if kind == "epsilon":
        return torch.ones_like(abar, dtype=torch.float32)
    if kind == "v_prediction":
        return abar.sqrt().float()
    return (abar / (1 - abar)).sqrt().float()


def reverse_variance(scheduler, t: torch.Tensor, variance: str = "posterior") -> torch.Tensor:
    """σ_t², the variance of the reverse step t → t−1 (float64): β̃_t (``"posterior"``) or β_t (``"beta"``);
    β_0 at t = 0 (see the module docstring)."""
    if variance not in VARIANCES:
        raise ValueError(f"variance must be one of {VARIANCES}, got {variance!r}")
    abar, prev = _schedule(scheduler, t)
    beta = 1 - abar / prev
    if variance == "beta":
        return beta
    return torch.where(prev < 1, beta * (1 - prev) / (1 - abar), beta)


def reverse_mean(scheduler, x_t: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """μ = (x_t − β_t/√(1−ᾱ_t) · ε)/√α_t, the mean of DDPM's reverse step from x_t given a noise prediction
    ε (Ho et al., 2020, eq. 11), per sample (``t`` one timestep per sample), in float64."""
    abar, prev = _schedule(scheduler, t)
    alpha = abar / prev
    shape = (-1,) + (1,) * (x_t.dim() - 1)
    coef = ((1 - alpha) / (1 - abar).sqrt()).reshape(shape)
    return (x_t.double() - coef * eps.double()) / alpha.sqrt().reshape(shape)


def delta2_factor(scheduler, t: torch.Tensor, variance: str = "posterior") -> torch.Tensor:
    """c_t = β_t² / (σ_t² α_t (1−ᾱ_t)), per timestep (float64): δ² = c_t ‖Δε‖² between the two
    reverse steps t → t−1 at a fixed x_t. ``variance``: ``"posterior"`` (σ_t² = β̃_t) or ``"beta"``
    (σ_t² = β_t); at t = 0 both use β_0 (see the module docstring). For a flow-matching schedule use
    :func:`output_delta2_factor` (δ² = c ‖Δv‖², :mod:`fdu.flow`)."""
    var = reverse_variance(scheduler, t, variance)
    abar, prev = _schedule(scheduler, t)
    alpha = abar / prev
    return (1 - alpha) ** 2 / (var * alpha * (1 - abar))


def output_delta2_factor(scheduler, t: torch.Tensor, variance: str = "posterior") -> torch.Tensor:
    """c_t s_t² (float64): δ² = c_t s_t² ‖Δoutput‖² for the scheduler's prediction type (ε, v, x₀); for a
    flow-matching schedule, c_t ‖Δv‖² (its output is v)."""
    from .flow import is_flow

    if is_flow(scheduler):
        return scheduler.delta2_factor(t, variance)
    return delta2_factor(scheduler, t, variance) * epsilon_scale(scheduler, t).double() ** 2


def temperature_profile(scheduler, *, positions: int, variance: str = "posterior") -> dict:
    """For every training timestep t: c_t s_t² for ε-, v- and x₀-prediction (``"factor"``), and the
    ratio of the true δ² to the official one (‖Δoutput‖² / positions, σ = 1) for each, c_t s_t² ·
    positions (``"true_over_official"``). The official loss's temperature is √ of that ratio times the
    true step's. Works on a copy of the scheduler's config, so ``scheduler`` is not changed."""
    t = torch.arange(int(scheduler.config.num_train_timesteps))
    out = {"t": t.numpy(), "factor": {}, "true_over_official": {}}
    for kind in PREDICTION_TYPES:
        sched = type(scheduler).from_config(scheduler.config, prediction_type=kind)
        factor = output_delta2_factor(sched, t, variance).numpy()
        out["factor"][kind] = factor
        out["true_over_official"][kind] = factor * positions
    return out
