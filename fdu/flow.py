"""Flow matching (rectified flow): the reverse step whose two Gaussians every f-divergence compares.

SD3 and FLUX are trained on the straight path x_t = (1 − t) x₀ + t ε, t ∈ (0, 1], and predict the velocity
v = ε − x₀ (Esser et al., 2024, §2; Lipman et al., 2023; Liu et al., 2023). Their default sampler is the
deterministic Euler step of the ODE dx/dt = v, which has no density to compare; the paper's argument
(§3: two Gaussian reverse steps, one per model, at the same x_t) needs a *stochastic* step. Two are
derived here, both Gaussian with a mean linear in the predicted v and a variance that does not depend on
the model, so δ² = ‖Δμ‖² / σ² = c ‖Δv‖² with c explicit (our derivation; notebook 08 does it with sympy,
and ``tests/test_flow.py`` checks it by sampling the steps):

``"posterior"`` / ``"beta"`` — the ancestral step t → s < t: the Gaussian q(x_s | x_t, x̂₀) of the
    forward process with α_t = 1 − t, σ_t = t, at x̂₀ = x_t − t v̂ (as DDPM's step is q(x_{t−1} | x_t, x̂₀),
    Ho et al., 2020, eq. 7). With α_{t|s} = (1 − t)/(1 − s) and σ²_{t|s} = t² − α_{t|s}² s²:

        μ = (α_{t|s} s² + (1 − s) σ²_{t|s}) / t² · x_t − (1 − s) σ²_{t|s} / t · v̂,
        posterior variance σ²_{t|s} s² / t²   →   c = (1 − s)² σ²_{t|s} / s²,
        "beta" variance σ²_{t|s} (the forward transition's) →   c = (1 − s)² σ²_{t|s} / t².

    At s = 0 (the last step) the posterior variance is 0, so both use σ²_{t|s}, as
    :mod:`fdu.reverse_step` does for DDPM's last step.

``"sde"`` — one Euler–Maruyama step of the reverse SDE with the flow's marginals,
    dx = [v − ½ g_t² ∇log p_t] dt + g_t dW̄, with the score ∇log p_t = −ε̂ / t = −(x_t + (1 − t) v̂) / t
    and g_t² = 2η t / (1 − t) (η = 1: the noise of DDPM's step, as in Flow-GRPO, Liu et al., 2025):

        μ = (1 − η Δt / (1 − t)) x_t − (1 + η) Δt v̂,   variance 2η t Δt / (1 − t)
        →   c = (1 + η)² (1 − t) Δt / (2η t).

    As Δt → 0 the posterior step's c and the SDE's (η = 1) agree: c ≈ 2 (1 − t) Δt / t.

``"renoise"`` — diffusers' ``FlowMatchEulerDiscreteScheduler(stochastic_sampling=True)``: x̂₀ = x_t − t v̂,
    then fresh noise at s, x_s = (1 − s) x̂₀ + s ε', so μ = (1 − s) x_t − (1 − s) t v̂, variance s²,
    c = (1 − s)² t² / s² (needs s > 0). ``tests/test_flow.py`` checks it against diffusers' own step.

:class:`FlowSchedule` is the training side: timestep k ∈ [0, N) has noise level t_k, the grid of diffusers'
``FlowMatchEulerDiscreteScheduler`` ((k + 1)/N under its ``shift``), and the step from t_k goes to
t_{k−1} (t_{−1} = 0). The unlearning loop takes it where it takes a DDPM scheduler: ``add_noise``,
``config.num_train_timesteps`` and, under ``--normalization reverse_step``, :func:`output_delta2_factor`
(through :mod:`fdu.reverse_step`).
"""
from __future__ import annotations

import math

import torch

SAMPLERS = ("posterior", "beta", "sde", "renoise")


def _as64(t) -> torch.Tensor:
    return torch.as_tensor(t, dtype=torch.float64)


def _check_times(t: torch.Tensor, s: torch.Tensor):
    if bool(((t <= 0) | (t > 1)).any()):
        raise ValueError(f"t must lie in (0, 1], got {t.min().item()}..{t.max().item()}")
    if bool(((s < 0) | (s >= t)).any()):
        raise ValueError("the step goes from t to s with 0 <= s < t")


def posterior_step(t, s) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(a, b, posterior variance, transition variance σ²_{t|s}) of the ancestral step t → s, with mean
    μ = a x_t + b v̂ (float64; see the module docstring)."""
    t, s = _as64(t), _as64(s)
    _check_times(t, s)
    a_ts = (1 - t) / (1 - s)
    var_ts = t ** 2 - a_ts ** 2 * s ** 2
    a = (a_ts * s ** 2 + (1 - s) * var_ts) / t ** 2
    b = -(1 - s) * var_ts / t
    return a, b, var_ts * s ** 2 / t ** 2, var_ts


def sde_step(t, s, eta: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(a, b, variance) of one Euler–Maruyama step t → s of the reverse SDE with g_t² = 2η t / (1 − t):
    mean a x_t + b v̂ (float64; see the module docstring). Needs t < 1 and η > 0."""
    if not eta > 0:
        raise ValueError(f"eta (the SDE's noise level) must be > 0, got {eta}")
    t, s = _as64(t), _as64(s)
    _check_times(t, s)
    if bool((t >= 1).any()):
        raise ValueError("the SDE's diffusion g_t² = 2ηt/(1−t) is infinite at t = 1: use t < 1")
    dt = t - s
    return 1 - eta * dt / (1 - t), -(1 + eta) * dt, 2 * eta * t * dt / (1 - t)


def step_mean_variance(t, s, sampler: str = "posterior", eta: float = 1.0):
    """(a, b, variance): the reverse step t → s has mean a x_t + b v̂ and this variance, for ``sampler``
    one of ``SAMPLERS`` (float64)."""
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    if sampler == "sde":
        return sde_step(t, s, eta)
    if sampler == "renoise":
        t, s = _as64(t), _as64(s)
        _check_times(t, s)
        if bool((s <= 0).any()):
            raise ValueError("the renoise step to s = 0 adds no noise (its divergence is infinite): use s > 0")
        return 1 - s, -(1 - s) * t, s ** 2
    a, b, post, beta = posterior_step(t, s)
    var = beta if sampler == "beta" else torch.where(_as64(s) > 0, post, beta)
    return a, b, var


def delta2_factor(t, s, sampler: str = "posterior", eta: float = 1.0) -> torch.Tensor:
    """c with δ² = c ‖Δv‖² between the two reverse steps t → s at a fixed x_t (float64)."""
    _, b, var = step_mean_variance(t, s, sampler, eta)
    return b ** 2 / var


def reverse_mean(x_t: torch.Tensor, v: torch.Tensor, t, s, sampler: str = "posterior", eta: float = 1.0):
    """μ = a x_t + b v, per sample (``t`` and ``s`` one value per sample, or scalars), in float64."""
    a, b, _ = step_mean_variance(t, s, sampler, eta)
    shape = (-1,) + (1,) * (x_t.dim() - 1)
    a, b = a.reshape(shape) if a.dim() else a, b.reshape(shape) if b.dim() else b
    return a * x_t.double() + b * v.double()


def sample_step(x_t: torch.Tensor, v: torch.Tensor, t, s, *, sampler: str = "posterior", eta: float = 1.0,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """x_s drawn from the reverse step (float64): the mean plus √variance times standard normal noise."""
    _, _, var = step_mean_variance(t, s, sampler, eta)
    shape = (-1,) + (1,) * (x_t.dim() - 1)
    std = var.sqrt().reshape(shape) if var.dim() else var.sqrt()
    noise = torch.randn(x_t.shape, generator=generator, dtype=torch.float64)
    return reverse_mean(x_t, v, t, s, sampler, eta) + std * noise


def velocity_from(output: torch.Tensor, x_t: torch.Tensor, t, kind: str) -> torch.Tensor:
    """v = ε − x₀ at noise level t from a prediction of ``kind`` "flow" (v itself), "epsilon"
    (v = (ε − x_t)/(1 − t)) or "sample" (x₀: v = (x_t − x₀)/t) — the bookkeeping of notebook 08's table."""
    t = _as64(t)
    shape = (-1,) + (1,) * (x_t.dim() - 1)
    t = t.reshape(shape) if t.dim() else t
    if kind == "flow":
        return output.double()
    if kind == "epsilon":
        return (output.double() - x_t.double()) / (1 - t)
    if kind == "sample":
        return (x_t.double() - output.double()) / t
    raise ValueError(f"kind must be 'flow', 'epsilon' or 'sample', got {kind!r}")


class _Config(dict):
    """A dict whose keys read as attributes too (as diffusers' scheduler configs do)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class FlowSchedule:
    """The training schedule of a flow-matching model: timestep k ∈ [0, N) is noise level
    t_k = shift·u / (1 + (shift − 1) u), u = (k + 1)/N (diffusers' ``FlowMatchEulerDiscreteScheduler``
    grid); x_t = (1 − t) x₀ + t ε. ``config`` holds ``num_train_timesteps``, ``shift`` and
    ``prediction_type = "flow"``, so the loop reads it as it reads a DDPM scheduler's."""

    def __init__(self, num_train_timesteps: int = 1000, shift: float = 1.0):
        if num_train_timesteps < 2:
            raise ValueError(f"num_train_timesteps must be >= 2, got {num_train_timesteps}")
        if not shift > 0 or not math.isfinite(shift):
            raise ValueError(f"shift must be a positive number, got {shift}")
        self.config = _Config(num_train_timesteps=int(num_train_timesteps), shift=float(shift),
                              prediction_type="flow")

    @classmethod
    def from_scheduler(cls, scheduler, image_seq_len: int | None = None) -> FlowSchedule:
        """The schedule of a diffusers flow-matching scheduler. One with ``use_dynamic_shifting``
        (FLUX) shifts by exp(μ), μ linear in the image's token count as FLUX's pipeline computes it
        (``image_seq_len``, needed then): exactly the static shift exp(μ)."""
        cfg = scheduler.config
        shift = float(cfg.get("shift", 1.0))
        if cfg.get("use_dynamic_shifting", False):
            if image_seq_len is None:
                raise ValueError("this scheduler shifts by the image size (use_dynamic_shifting): pass image_seq_len")
            lo, hi = cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096)
            b0, b1 = cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.15)
            m = (b1 - b0) / (hi - lo)
            shift = math.exp(image_seq_len * m + b0 - m * lo)
        return cls(int(cfg.get("num_train_timesteps", 1000)), shift)

    def _index(self, k) -> torch.Tensor:
        k = torch.as_tensor(k).cpu().long()
        n = self.config["num_train_timesteps"]
        if bool((k < 0).any()) or bool((k >= n).any()):
            raise ValueError(f"timesteps must lie in [0, {n}), got {k.min().item()}..{k.max().item()}")
        return k

    def sigma(self, k) -> torch.Tensor:
        """t_k (float64), the noise level of timestep k; t_{−1} = 0."""
        k = torch.as_tensor(k).cpu().long()
        if bool((k >= 0).any()):
            self._index(k.clamp(min=0))
        u = (k + 1).double() / self.config["num_train_timesteps"]
        shift = self.config["shift"]
        return torch.where(k >= 0, shift * u / (1 + (shift - 1) * u), torch.zeros_like(u))

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """x_t = (1 − t_k) x₀ + t_k ε, per sample."""
        t = self.sigma(self._index(k)).to(x0.device, x0.dtype).reshape((-1,) + (1,) * (x0.dim() - 1))
        return (1 - t) * x0 + t * noise

    def velocity(self, x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The regression target v = ε − x₀."""
        return noise - x0

    def model_timestep(self, k) -> torch.Tensor:
        """The timestep value diffusers' flow transformers are called with: 1000 · t_k (float32)."""
        return (self.sigma(self._index(k)) * 1000).float()

    def step_times(self, k) -> tuple[torch.Tensor, torch.Tensor]:
        """(t, s): the reverse step from timestep k goes from t_k to t_{k−1}."""
        k = self._index(k)
        return self.sigma(k), self.sigma(k - 1)

    def delta2_factor(self, k, variance: str = "posterior") -> torch.Tensor:
        """c_k with δ² = c_k ‖Δv‖² between the two reverse steps from timestep k (float64);
        ``variance`` "posterior" or "beta" (see the module docstring)."""
        if variance not in ("posterior", "beta"):
            raise ValueError(f"variance must be 'posterior' or 'beta', got {variance!r}")
        t, s = self.step_times(k)
        return delta2_factor(t, s, variance)

    def epsilon_scale(self, k) -> torch.Tensor:
        """s_k with Δε = s_k Δv at a fixed x_t: ε = x_t + (1 − t) v, so 1 − t_k (float32)."""
        return (1 - self.sigma(self._index(k))).float()


def is_flow(scheduler) -> bool:
    """Whether a training schedule is flow matching (a :class:`FlowSchedule`)."""
    return isinstance(scheduler, FlowSchedule)


def monte_carlo_divergences(sampler: str, names, delta2_values, *, t: float = 0.5, s: float = 0.45,
                            dim: int = 16, n: int = 100_000, seed: int = 0, draw=None) -> list:
    """For each δ² in ``delta2_values``: two velocities at one x_t whose steps t → s are δ² apart (by
    :func:`delta2_factor`), n draws x_s of the frozen model's step, and E_q[f(p/q)] estimated over them with
    the two steps' Gaussian densities, for each divergence in ``names``, beside the closed form at δ².
    ``draw(x_t, v, n, generator)`` samples the step (default :func:`sample_step`; notebook 08 passes
    diffusers' own stochastic step for ``"renoise"``). Rows: sampler, divergence, δ², estimate, its
    standard error, exact."""
    from .divergences import get_divergence
    from .gaussian import gaussian_divergence

    gen = torch.Generator().manual_seed(seed)
    a, b, var = step_mean_variance(t, s, sampler)
    c = delta2_factor(t, s, sampler)
    rows = []
    for d2 in delta2_values:
        x_t = torch.randn(dim, generator=gen, dtype=torch.float64)
        v_frozen = torch.randn(dim, generator=gen, dtype=torch.float64)
        dv = torch.randn(dim, generator=gen, dtype=torch.float64)
        v_trained = v_frozen + dv * (d2 / (c * (dv ** 2).sum())).sqrt()
        mu_p, mu_q = a * x_t + b * v_trained, a * x_t + b * v_frozen
        if draw is None:
            x = sample_step(x_t.expand(n, dim), v_frozen.expand(n, dim), t, s, sampler=sampler, generator=gen)
        else:
            x = draw(x_t, v_frozen, n, gen).double()
        log_ratio = (((x - mu_q) ** 2).sum(1) - ((x - mu_p) ** 2).sum(1)) / (2 * var)
        for name in names:
            vals = get_divergence(name).f(log_ratio.exp())
            exact = float(gaussian_divergence(name, torch.tensor(d2)))
            rows.append({"sampler": sampler, "divergence": name, "delta2": float(d2), "estimate": float(vals.mean()),
                         "se": float(vals.std() / n ** 0.5), "exact": exact})
    return rows


def diffusers_renoise_draw(shift: float = 1.0, t: float = 0.5, s: float = 0.45):
    """A ``draw`` for :func:`monte_carlo_divergences`: diffusers' ``FlowMatchEulerDiscreteScheduler`` with
    ``stochastic_sampling=True`` taking one step from noise level t to s (set through its sigmas)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    def draw(x_t, v, n, gen):
        sched = FlowMatchEulerDiscreteScheduler(shift=shift, stochastic_sampling=True)
        sched.set_timesteps(sigmas=[t, s])
        sched.sigmas = torch.tensor([t, s, 0.0])   # exactly these levels, whatever the shift
        sched._step_index = 0
        x = x_t.float().expand(n, -1).contiguous()
        return sched.step(v.float().expand(n, -1).contiguous(), sched.timesteps[0], x, generator=gen).prev_sample
    return draw


def parameterisation_table(ddpm_scheduler, schedule: FlowSchedule, noise_level: float = 0.5) -> list:
    """One row per parameterisation: the model family, what the network outputs, δ² of one reverse step
    as a formula, and the factor at the timestep whose noise level (σ of x_t: √(1−ᾱ) for DDPM, t for flow)
    is nearest ``noise_level``."""
    from .reverse_step import delta2_factor as ddpm_c
    from .reverse_step import epsilon_scale

    abar = torch.as_tensor(ddpm_scheduler.alphas_cumprod, dtype=torch.float64)
    k = int(((1 - abar).sqrt() - noise_level).abs().argmin())
    kt = torch.tensor([k])
    rows = []
    for kind, out, formula in (("epsilon", "ε", r"c_t\,\|\Delta\varepsilon\|^2"),
                               ("v_prediction", "v = √ᾱ ε − √(1−ᾱ) x₀", r"c_t\,\bar\alpha_t\,\|\Delta v\|^2"),
                               ("sample", "x₀", r"c_t\,\frac{\bar\alpha_t}{1-\bar\alpha_t}\,\|\Delta x_0\|^2")):
        sched = type(ddpm_scheduler).from_config(ddpm_scheduler.config, prediction_type=kind)
        factor = float(ddpm_c(sched, kt) * epsilon_scale(sched, kt).double() ** 2)
        rows.append({"family": "DDPM (SD 1.x/2.x, SDXL)", "output": out, "delta2": formula, "timestep": k,
                     "noise_level": float((1 - abar[k]).sqrt()), "factor": factor})
    sig = schedule.sigma(torch.arange(schedule.config["num_train_timesteps"]))
    j = int((sig - noise_level).abs().argmin())
    t, s = schedule.step_times(torch.tensor([j]))
    c = float(delta2_factor(t, s, "posterior"))
    tt = float(t)
    for out, formula, scale in (("v = ε − x₀", r"c\,\|\Delta v\|^2", 1.0),
                                ("ε (v = (ε − x_t)/(1−t))", r"\frac{c}{(1-t)^2}\,\|\Delta\varepsilon\|^2",
                                 1 / (1 - tt) ** 2),
                                ("x₀ (v = (x_t − x₀)/t)", r"\frac{c}{t^2}\,\|\Delta x_0\|^2", 1 / tt ** 2)):
        rows.append({"family": "flow matching (SD3, FLUX)", "output": out, "delta2": formula, "timestep": j,
                     "noise_level": tt, "factor": c * scale})
    return rows
