"""Flow matching (fdu.flow): the reverse steps are the Gaussians we say, checked against Bayes' rule, a
simulation of the forward process and diffusers' own stochastic step; δ² = c‖Δv‖² plugged into the closed
forms matches a Monte-Carlo estimate of the divergence between the two sampled steps; the training schedule
is diffusers'."""
import math

import pytest
import torch

from fdu import flow
from fdu.gaussian import gaussian_divergence


def test_the_posterior_step_is_bayes_rule_at_x0_from_v():
    # independent route: condition the jointly Gaussian (x_s, x_t) given x0 on x_t
    t, s, x_t, v = 0.7, 0.55, 0.3, -1.2
    x0 = x_t - t * v
    a_ts = (1 - t) / (1 - s)
    cov = a_ts * s ** 2                        # Cov(x_s, x_t | x0)
    mean = (1 - s) * x0 + cov / t ** 2 * (x_t - (1 - t) * x0)
    var = s ** 2 - cov ** 2 / t ** 2
    a, b, post, _ = flow.posterior_step(t, s)
    assert float(a * x_t + b * v) == pytest.approx(mean, rel=1e-12)
    assert float(post) == pytest.approx(var, rel=1e-12)


def test_a_simulated_forward_process_has_the_posterior_we_derive():
    # x_s then x_t drawn by the forward chain; regressing x_s on x_t (x0 fixed) gives the posterior
    g = torch.Generator().manual_seed(0)
    t, s, x0, n = 0.6, 0.45, 0.8, 400_000
    a_ts = (1 - t) / (1 - s)
    x_s = (1 - s) * x0 + s * torch.randn(n, generator=g, dtype=torch.float64)
    x_t = a_ts * x_s + math.sqrt(t ** 2 - a_ts ** 2 * s ** 2) * torch.randn(n, generator=g, dtype=torch.float64)
    design = torch.stack([x_t, torch.ones_like(x_t)], 1)
    coef = torch.linalg.lstsq(design, x_s[:, None]).solution[:, 0]
    resid = (x_s - design @ coef).var()
    a, b, post, _ = flow.posterior_step(t, s)
    # mean a x_t + b v with v = (x_t - x0)/t: slope a + b/t, intercept -b x0/t
    assert float(coef[0]) == pytest.approx(float(a + b / t), abs=5e-3)
    assert float(coef[1]) == pytest.approx(float(-b * x0 / t), abs=5e-3)
    assert float(resid) == pytest.approx(float(post), rel=1e-2)


def test_the_renoise_step_is_diffusers_stochastic_flow_match_step():
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler(shift=3.0, stochastic_sampling=True)
    sched.set_timesteps(10)
    i = 4
    t, s = float(sched.sigmas[i]), float(sched.sigmas[i + 1])
    n, d = 20000, 4
    x_t = torch.randn(1, d).expand(n, d).contiguous()
    v = torch.randn(1, d).expand(n, d).contiguous()
    sched._step_index = i
    out = sched.step(v, sched.timesteps[i], x_t, generator=torch.Generator().manual_seed(1)).prev_sample.double()
    a, b, var = flow.step_mean_variance(t, s, "renoise")
    mean = a * x_t[0].double() + b * v[0].double()
    se = math.sqrt(float(var) / n)
    assert (out.mean(0) - mean).abs().max() < 5 * se
    assert float(out.var(0).mean()) == pytest.approx(float(var), rel=0.03)


@pytest.mark.parametrize("sampler", ["posterior", "sde", "renoise"])
@pytest.mark.parametrize("name", ["kl", "squared_hellinger", "pearson"])
def test_delta2_plugged_into_the_closed_forms_matches_a_monte_carlo_divergence(sampler, name):
    gen = torch.Generator().manual_seed(2)
    t, s = 0.5, 0.45
    x_t = torch.randn(16, generator=gen, dtype=torch.float64)
    v_trained = torch.randn(16, generator=gen, dtype=torch.float64)
    dv = torch.randn(16, generator=gen, dtype=torch.float64)
    v_frozen = v_trained + dv * (0.6 / (flow.delta2_factor(t, s, sampler) * (dv ** 2).sum())).sqrt()
    mu1 = flow.reverse_mean(x_t, v_trained, t, s, sampler)
    mu2 = flow.reverse_mean(x_t, v_frozen, t, s, sampler)
    _, _, var = flow.step_mean_variance(t, s, sampler)
    delta2 = flow.delta2_factor(t, s, sampler) * ((v_trained - v_frozen) ** 2).sum()
    assert float(delta2) == pytest.approx(float(((mu1 - mu2) ** 2).sum() / var), rel=1e-10)
    assert float(delta2) == pytest.approx(0.6)   # a regime where the Monte-Carlo estimate is informative
    # the frozen model's step drawn (renoise: by diffusers' own scheduler), D_f = E_q[f(p/q)] estimated over the draws
    draw = flow.diffusers_renoise_draw() if sampler == "renoise" else None
    (row,) = flow.monte_carlo_divergences(sampler, [name], [0.6], n=200_000, seed=2, draw=draw)
    assert row["exact"] == pytest.approx(float(gaussian_divergence(name, delta2)), rel=1e-6)
    assert abs(row["estimate"] - row["exact"]) < 4 * row["se"] + 1e-9, row


def test_the_sde_step_and_the_posterior_step_agree_as_the_step_shrinks():
    t = torch.tensor(0.4, dtype=torch.float64)
    for dt in (1e-2, 1e-3, 1e-4):
        post = flow.delta2_factor(t, t - dt, "posterior")
        sde = flow.delta2_factor(t, t - dt, "sde")
        assert float(post / sde) == pytest.approx(1, abs=5 * dt / float(t))
        assert float(sde) == pytest.approx(2 * (1 - 0.4) * dt / 0.4, rel=1e-12)


def test_the_training_schedule_is_diffusers_flow_match_grid_and_noising():
    from diffusers import FlowMatchEulerDiscreteScheduler

    for shift in (1.0, 3.0):
        ref = FlowMatchEulerDiscreteScheduler(shift=shift)
        mine = flow.FlowSchedule.from_scheduler(ref)
        k = torch.arange(1000)
        assert torch.allclose(mine.sigma(k).flip(0).float(), ref.sigmas[:1000].float(), atol=1e-6)
        x0, noise = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
        kk = torch.tensor([0, 500, 999])
        expected = torch.cat([ref.scale_noise(x0[i:i + 1], ref.timesteps[999 - kk[i]][None], noise[i:i + 1])
                              for i in range(3)])
        assert torch.allclose(mine.add_noise(x0, noise, kk), expected, atol=1e-5)
        assert torch.allclose(mine.model_timestep(kk), ref.timesteps[999 - kk], atol=1e-3)


def test_fluxs_dynamic_shift_is_a_static_shift_of_exp_mu():
    from diffusers import FlowMatchEulerDiscreteScheduler

    ref = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15)
    mu = 0.8
    ref.set_timesteps(sigmas=[0.9, 0.5, 0.1], mu=mu)
    static = flow.FlowSchedule(1000, math.exp(mu))
    u = torch.tensor([0.9, 0.5, 0.1], dtype=torch.float64)
    shifted = math.exp(mu) * u / (1 + (math.exp(mu) - 1) * u)
    assert torch.allclose(ref.sigmas[:3].double(), shifted, atol=1e-6)
    assert static.config.shift == pytest.approx(math.exp(mu))
    with pytest.raises(ValueError, match="image_seq_len"):
        flow.FlowSchedule.from_scheduler(ref)


def test_the_loop_reads_the_flow_delta2_through_reverse_step():
    from fdu.reverse_step import epsilon_scale, output_delta2_factor

    sched = flow.FlowSchedule(1000, 3.0)
    k = torch.tensor([0, 10, 500, 999])
    t, s = sched.step_times(k)
    expected = torch.where(s > 0, flow.delta2_factor(t, s.clamp(min=1e-12), "posterior"),
                           flow.delta2_factor(t, s, "beta"))
    assert torch.allclose(output_delta2_factor(sched, k), expected, rtol=1e-9)
    assert torch.allclose(epsilon_scale(sched, k), (1 - t).float())
    # the last step (to s = 0) uses the transition variance, as DDPM's does: finite
    assert torch.isfinite(output_delta2_factor(sched, k)).all()


def test_velocity_bookkeeping_of_the_three_parameterisations():
    g = torch.Generator().manual_seed(3)
    x0, eps = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    t = torch.rand(5, generator=g, dtype=torch.float64) * 0.9 + 0.05
    x_t = (1 - t[:, None]) * x0 + t[:, None] * eps
    v = (eps - x0).double()
    for kind, out in (("flow", eps - x0), ("epsilon", eps), ("sample", x0)):
        assert torch.allclose(flow.velocity_from(out, x_t, t, kind), v, atol=1e-5)


def test_bad_input_gets_clear_errors():
    with pytest.raises(ValueError, match="sampler must be one of"):
        flow.delta2_factor(0.5, 0.4, "ddim")
    with pytest.raises(ValueError, match=r"t must lie in \(0, 1\]"):
        flow.delta2_factor(1.5, 0.4)
    with pytest.raises(ValueError, match="0 <= s < t"):
        flow.delta2_factor(0.5, 0.6)
    with pytest.raises(ValueError, match="eta"):
        flow.delta2_factor(0.5, 0.4, "sde", eta=0)
    with pytest.raises(ValueError, match="infinite at t = 1"):
        flow.delta2_factor(1.0, 0.4, "sde")
    with pytest.raises(ValueError, match="s > 0"):
        flow.delta2_factor(0.5, 0.0, "renoise")
    with pytest.raises(ValueError, match="shift"):
        flow.FlowSchedule(1000, 0.0)
    with pytest.raises(ValueError, match="timesteps must lie"):
        flow.FlowSchedule(1000).add_noise(torch.zeros(1, 2), torch.zeros(1, 2), torch.tensor([1000]))
    with pytest.raises(ValueError, match="kind"):
        flow.velocity_from(torch.zeros(1), torch.zeros(1), 0.5, "v_prediction")


def test_the_sympy_derivation_gives_gaussian_steps_linear_in_v_and_the_factors_fdu_uses():
    import sympy as sp

    from fdu.symbolic import flow_reverse_steps

    r = flow_reverse_steps()
    sym = r["symbols"]
    for sampler in ("posterior", "sde", "renoise"):
        step = r[sampler]
        assert step["linear_in_v"] and step["variance_free_of_model"]
        c = sp.lambdify((sym["t"], sym["s"], sym["eta"]), step["c"])
        mean = sp.lambdify((sym["x_t"], sym["v"], sym["t"], sym["s"], sym["eta"]), step["mean"])
        for t, s, eta in ((0.6, 0.5, 1.0), (0.9, 0.2, 0.5), (0.3, 0.29, 2.0)):
            assert c(t, s, eta) == pytest.approx(float(flow.delta2_factor(t, s, sampler, eta)), rel=1e-12)
            got = flow.reverse_mean(torch.tensor([0.7]), torch.tensor([-0.4]), t, s, sampler, eta)
            assert mean(0.7, -0.4, t, s, eta) == pytest.approx(float(got), rel=1e-6)
    # the posterior's c in the factored form sympy finds: (t − s)(t + s − 2ts)/s²
    t, s = sym["t"], sym["s"]
    assert sp.simplify(r["posterior"]["c"] - (t - s) * (t + s - 2 * t * s) / s ** 2) == 0
