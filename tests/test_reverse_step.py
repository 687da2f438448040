"""The reverse step's δ² (fdu.reverse_step) against diffusers' own DDPM step, and the loop's
``normalization="reverse_step"``."""
import pytest
import torch
from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler

import fdu
from fdu import closed_form_loss
from fdu.gaussian import gaussian_divergence
from fdu.reverse_step import delta2_factor, epsilon_scale, output_delta2_factor, temperature_profile
from fdu.unlearn import UnlearnConfig

SD = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
          clip_sample=False)


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("variance_type,variance", [("fixed_small", "posterior"), ("fixed_large", "beta")])
def test_factor_is_the_distance_between_diffusers_reverse_steps(kind, variance_type, variance):
    """Two model outputs at the same x_t, stepped by DDPMScheduler.step with the same noise: the
    difference of the two x_{t-1} is Δμ, and ‖Δμ‖²/σ_t² must equal c_t s_t² ‖Δoutput‖²."""
    sched = DDPMScheduler(**SD, prediction_type=kind, variance_type=variance_type)
    g = torch.Generator().manual_seed(0)
    for t in (1, 7, 250, 999):
        x_t = torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64)
        out_a = torch.randn(x_t.shape, generator=g, dtype=torch.float64)
        out_b = out_a + 0.1 * torch.randn(x_t.shape, generator=g, dtype=torch.float64)
        steps = [sched.step(o, t, x_t, generator=torch.Generator().manual_seed(5)).prev_sample for o in (out_a, out_b)]
        var = float(sched._get_variance(t))
        measured = ((steps[0] - steps[1]) ** 2).flatten(1).sum(1) / var
        factor = output_delta2_factor(sched, torch.full((2,), t), variance)
        predicted = factor * ((out_a - out_b) ** 2).flatten(1).sum(1)
        assert torch.allclose(measured, predicted, rtol=1e-4), (kind, variance, t)


def test_the_last_step_has_a_finite_factor_from_beta_0():
    sched = DDPMScheduler(**SD)
    c0 = delta2_factor(sched, torch.tensor([0]))
    alpha0 = float(sched.alphas_cumprod[0])
    assert float(c0) == pytest.approx(1 / alpha0, rel=1e-9)  # β_0² / (β_0 α_0 β_0)
    assert float(delta2_factor(sched, torch.tensor([0]), "beta")) == pytest.approx(float(c0))


def test_sd_schedule_moves_the_temperature_by_orders_of_magnitude_and_v_loses_the_noisy_end():
    prof = temperature_profile(DDPMScheduler(**SD), positions=64 * 64)
    eps, v = prof["factor"]["epsilon"], prof["factor"]["v_prediction"]
    assert eps.max() / eps.min() > 50          # c_t: about 1 near t = 0, about β_T at t = T
    assert (v <= eps + 1e-12).all() and v[-1] < 0.01 * eps[-1]   # s_t² = ᾱ_t ≤ 1, tiny at the end
    assert prof["true_over_official"]["epsilon"].min() > 1   # the official loss is hotter at every t


def test_bad_input_names_the_choices():
    sched = DDPMScheduler(**SD)
    with pytest.raises(ValueError, match="posterior"):
        delta2_factor(sched, torch.tensor([3]), "large")
    with pytest.raises(ValueError, match=r"\[0, 1000\)"):
        delta2_factor(sched, torch.tensor([1000]))
    with pytest.raises(ValueError, match="alphas_cumprod"):
        delta2_factor(FlowMatchEulerDiscreteScheduler(), torch.tensor([3]))
    bad = DDPMScheduler(**SD)
    bad.register_to_config(prediction_type="flow")
    with pytest.raises(ValueError, match="v_prediction"):
        epsilon_scale(bad, torch.tensor([3]))
    with pytest.raises(ValueError, match="reverse_step"):
        UnlearnConfig(normalization="exact").check()
    with pytest.raises(ValueError, match="posterior"):
        UnlearnConfig(normalization="reverse_step", variance="small").check()
    with pytest.raises(ValueError, match="epsilon"):
        UnlearnConfig(units="noise").check()


def _linear_task(kind: str, num_train_timesteps: int = 50):
    """A one-layer "denoiser" whose target and anchor conditionings add 1 and 0: the loop's Task, and its
    forward function to recompute outputs."""
    from fdu.unlearn import AnchorBatch, Task

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 4)

    def forward(m, x, t, c):
        return m(x) + c

    def sample(n, g):
        return AnchorBatch(torch.randn(n, 4, generator=g), 1.0, 0.0)

    sched = DDPMScheduler(**{**SD, "num_train_timesteps": num_train_timesteps}, prediction_type=kind)
    return Task(model, forward, sample, sched), forward


def _loop_loss(task, cfg):
    from fdu.unlearn import SingleProcess, closed_form_step, draw_batch

    batch = draw_batch(task, cfg, torch.Generator().manual_seed(1))
    loss, _ = closed_form_step(task, cfg, fdu.get_divergence(cfg.divergence), batch, SingleProcess())
    with torch.no_grad():
        diff = task.forward(task.model, batch.x_t, batch.t, 1.0) - task.forward(task.model, batch.x_t, batch.t, 0.0)
    return float(loss.detach()), batch, diff


@pytest.mark.parametrize("kind", ["v_prediction", "epsilon"])
def test_epsilon_units_scale_v_outputs_by_sqrt_alphabar_and_leave_epsilon_models_alone(kind):
    """units="epsilon": for a v-model the outputs' difference is multiplied by √ᾱ_t (Δε = √ᾱ_t Δv), so
    the loss is the one computed on the scaled difference; for an ε-model nothing changes."""
    task, _ = _linear_task(kind)
    cfg = UnlearnConfig(divergence="squared_hellinger", normalization="sum", batch_size=16, units="epsilon")
    loss, batch, diff = _loop_loss(task, cfg)
    scale = epsilon_scale(task.scheduler, batch.t)[:, None]
    expected = closed_form_loss(scale * diff, torch.zeros_like(diff), "squared_hellinger", normalization="sum")
    assert loss == pytest.approx(float(expected), rel=1e-6)
    abar = task.scheduler.alphas_cumprod[batch.t]
    assert torch.allclose(scale[:, 0], abar.sqrt().float() if kind == "v_prediction" else torch.ones(16))


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
def test_loop_trains_on_the_true_delta2(kind):
    """normalization="reverse_step": the loop's loss is the mean over the batch of D_f(c_t s_t² ‖Δoutput‖²/σ²),
    whatever ``units`` says."""
    task, _ = _linear_task(kind)
    losses = []
    for units in ("output", "epsilon"):
        cfg = UnlearnConfig(divergence="squared_hellinger", normalization="reverse_step", batch_size=16,
                            units=units, sigma=0.5)
        loss, batch, diff = _loop_loss(task, cfg)
        losses.append(loss)
    d2 = output_delta2_factor(task.scheduler, batch.t).float() * (diff ** 2).sum(1) / 0.5 ** 2
    expected = float(gaussian_divergence("squared_hellinger", d2.double()).mean())
    assert losses[0] == pytest.approx(expected, rel=1e-5)
    assert losses[1] == losses[0]


def test_reverse_mean_and_variance_are_diffusers_step():
    """At t = 0 DDPM's step adds no noise, so it returns the mean itself; at t > 0 two steps with the
    same noise differ by the difference of the means, and the variance is diffusers' own."""
    from fdu.reverse_step import reverse_mean, reverse_variance

    sched = DDPMScheduler(**SD)
    g = torch.Generator().manual_seed(3)
    x_t = torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64)
    eps = [torch.randn(x_t.shape, generator=g, dtype=torch.float64) for _ in range(2)]
    assert torch.allclose(sched.step(eps[0], 0, x_t).prev_sample, reverse_mean(sched, x_t, eps[0], torch.zeros(2)),
                          rtol=1e-5, atol=1e-6)
    for t in (5, 600):
        steps = [sched.step(e, t, x_t, generator=torch.Generator().manual_seed(9)).prev_sample for e in eps]
        means = [reverse_mean(sched, x_t, e, torch.full((2,), t)) for e in eps]
        assert torch.allclose(steps[0] - steps[1], means[0] - means[1], rtol=1e-4, atol=1e-7)
        var = float(reverse_variance(sched, torch.tensor([t])))
        assert var == pytest.approx(float(sched._get_variance(t)), rel=1e-5)
