"""The one unlearning loop that every scale uses (the 2-D toy, digits, Stable Diffusion).

For a target concept c* and an anchor concept c, each step

1. draws anchor images x0 (with the target and anchor conditionings that go with them), a
   timestep t and noise eps, and forms x_t (diffusers' ``DDPMScheduler.add_noise``);
2. runs the **frozen** denoiser on (x_t, c), giving ``anchor_out``, and the **trainable** one on
   (x_t, c*), giving ``trained_out``;
3. compares them with a divergence between the Gaussian reverse steps they define: closed form
   (:func:`closed_form_step`) or variational (:func:`variational_step`: a critic that ascends
   E_P[T] - E_Q[f*(T)] while the denoiser descends it);
4. steps the optimiser on the chosen parameters, once the gradients are known to be finite (and
   checks the parameters after it): a run stops with :class:`NonFiniteError` rather than carry on
   with, or write, an inf or a NaN.

The **method** (``config.method``) chooses the reference that ``anchor_out`` stands for. ``"ca"``
(Concept Ablation, Kumari et al., 2023; the paper's f-DMU): the frozen output under the anchor, on the
anchor's images. ``"esd"`` (Erased Stable Diffusion, Gandikota et al., 2023): the frozen model's
negatively guided output for the target, ε(x_t, c*) − η (ε(x_t, c*) − ε(x_t, c)), with c the empty prompt
in ESD (any anchor here) and x0 the frozen model's own images of the target (the adapter supplies them);
ESD's code reaches x_t by partial sampling with the model being trained, we noise the frozen model's
images instead. That reference is again the mean of a Gaussian reverse step, so every f applies to it
(``divergence``): ESD with KL is ESD's MSE, with another f a combination not published before.

A scale plugs in through :class:`Task`: the model, how to call it, where anchor x0 come from.
The frozen reference is either a module (a full copy) or, by default, :class:`SwappedReference`,
which keeps only the original values of the trained parameters and swaps them in for the
reference pass: no second copy of a large UNet. Checkpoints (:mod:`fdu.checkpoints`) resume
bit-identically (on CPU). One process runs behind :class:`SingleProcess`, a do-nothing stand-in
for ``accelerate.Accelerator``, so the loop reads the same with and without one.
"""
from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from . import checkpoints
from .critics import WithContext
from .divergences import get_divergence
from .errors import NonFiniteError, NonFiniteLossError, ResumeMismatchError
from .gaussian import DivergenceOverflowError
from .losses import NORMALIZATIONS, VariationalLosses, closed_form_loss, variational_losses
from .options import option
from .reverse_step import VARIANCES, epsilon_scale, output_delta2_factor

CRITIC_INPUTS = ("reverse_step", "outputs")
#: the methods (module docstring); "uce", a closed-form edit without a loop, is fdu.uce (the loop refuses it)
METHODS = ("ca", "esd", "uce")
UNITS = ("output", "epsilon")
#: the loop's choices: the loss's two, and the true δ² of the reverse steps from the scheduler
LOOP_NORMALIZATIONS = NORMALIZATIONS + ("reverse_step",)
OPTIMIZERS = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}
Forward = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor, Any], torch.Tensor]


__all__ = ["AnchorBatch", "NonFiniteError", "NonFiniteLossError", "SingleProcess", "SwappedReference", "Task",
           "UnlearnConfig", "UnlearnResult", "unlearn"]


class AnchorBatch(NamedTuple):
    """What ``Task.sample_anchor_x0`` returns: n anchor images and the conditionings drawn with them."""

    x0: torch.Tensor
    target: Any     # the trained pass's conditioning (the target concept) for these x0
    anchor: Any     # the frozen pass's conditioning (the anchor concept) for these x0


@dataclass
class Task:
    """What the loop needs from a scale (toy, digits, Stable Diffusion).

    ``forward(model, x_t, t, cond)`` returns the denoiser's output (the noise prediction) for a
    batch; ``sample_anchor_x0(n, generator)`` returns an :class:`AnchorBatch`: n anchor images x0
    and the target and anchor conditionings that go with them, in whatever form ``forward``
    understands, drawing any randomness from ``generator`` only (so runs are reproducible and
    resumable). ``preserve``: conditionings whose outputs a preservation term holds to the frozen
    model's. ``params``: the parameters to train by name (default: every parameter of ``model``
    that requires grad). ``loss_mask``: (1, 1, *spatial), the positions the closed form counts.
    """

    model: torch.nn.Module
    forward: Forward
    sample_anchor_x0: Callable[[int, torch.Generator], AnchorBatch]
    scheduler: Any                                   # a diffusers DDPMScheduler
    preserve: Sequence[Any] = ()
    params: dict | None = None                    # name -> torch.nn.Parameter
    reference: torch.nn.Module | SwappedReference | None = None
    loss_mask: torch.Tensor | None = None

    def trained_named_parameters(self) -> dict:
        named = dict(self.params) if self.params is not None else {
            n: p for n, p in self.model.named_parameters() if p.requires_grad}
        if not named:
            raise ValueError("no parameters to train: pass Task(params={name: parameter}) or leave some "
                             "parameters of the model with requires_grad=True")
        return named

    def trained_parameters(self) -> list:
        return list(self.trained_named_parameters().values())


class SwappedReference:
    """The frozen model's outputs without a second copy of the model: keeps the original values
    of the trained parameters and swaps them in (under ``no_grad``) for the reference pass."""

    def __init__(self, params: Sequence[torch.nn.Parameter]):
        self.params = list(params)
        self.original = [p.detach().clone() for p in self.params]

    @contextlib.contextmanager
    def active(self):
        current = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for p, o in zip(self.params, self.original):
                p.copy_(o)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, c in zip(self.params, current):
                    p.copy_(c)


class SingleProcess:
    """A do-nothing stand-in for ``accelerate.Accelerator``: one process, no mixed precision."""

    num_processes, process_index, is_main_process = 1, 0, True

    def prepare_optimizer(self, optimizer):
        return optimizer

    def autocast(self):
        return contextlib.nullcontext()

    def backward(self, loss):
        loss.backward()

    def unscale_gradients(self, optimizer=None):
        pass

    def wait_for_everyone(self):
        pass


@dataclass
class UnlearnConfig:
    """The loop's options. Each field's help is its ``--help`` text in ``python -m fdu unlearn``
    (see :mod:`fdu.options`); ``fdu.sd.train.RunConfig`` extends this class."""

    method: str = option("ca", "ca: Concept Ablation = the paper's f-DMU (the trained output under the target "
                         "pulled to the frozen output under the anchor, on the anchor's images); esd: ESD (pulled "
                         "to the frozen model's negatively guided output for the target, on the target's images; "
                         "with --anchor '' as in ESD); uce: UCE's closed-form edit of the cross-attention K/V "
                         "(no training loop, no divergence)", group="the loss", choices=METHODS)
    guidance: float = option(1.0, "η of --method esd: the reference is ε(c*) − η (ε(c*) − ε(anchor))",
                             group="the loss")
    divergence: str = option("kl", "kl (= MSE), squared_hellinger, pearson_chi2, jensen_shannon, alpha "
                             "(with --alpha), reverse_kl, total_variation, ... (`python -m fdu divergences`)",
                             group="the loss")
    alpha: float | None = option(None, "the α of --divergence alpha", group="the loss", type=float)
    variational: bool = option(False, "the min-max form with a critic instead of the closed form "
                               "(quadrature is used where no closed form exists)", group="the loss")
    sigma: float = option(1.0, "σ, the reverse steps' standard deviation: the temperature of the losses",
                          group="the loss")
    omega: float = option(1.0, "ω_t, a constant factor of the closed-form loss and the denoiser's "
                          "variational loss", group="the loss")
    normalization: str = option("mean", "mean: channels summed, positions averaged, σ a free temperature (the "
                                "official convention); sum: the whole squared distance over σ²; reverse_step: "
                                "the true δ² = c_t‖Δε‖² between the two DDPM reverse steps, from the scheduler "
                                "(any prediction type; σ then multiplies the step's own standard deviation: "
                                "1 is the exact divergence)", group="the loss", choices=LOOP_NORMALIZATIONS)
    variance: str = option("posterior", "the reverse step's variance for --normalization reverse_step: "
                           "posterior (β̃_t, diffusers' DDPM default) or beta (β_t)", group="the loss",
                           choices=VARIANCES)
    units: str = option("output", "output: compare the models' outputs as they are (the official code); "
                        "epsilon: convert them to noise-prediction units first (v-prediction: Δε = √ᾱ_t Δv), so "
                        "that δ² weighs the timesteps as an ε-model's would", group="the loss", choices=UNITS)
    timestep_range: tuple | None = option(None, "draw t uniformly in [LO, HI) instead of every "
                                             "timestep", group="the loss", type=int, nargs=2,
                                             metavar=("LO", "HI"))
    timestep_probs: Sequence[float] | None = option(
        None, "a probability for each training timestep to draw t from (a list of "
        "num_train_timesteps numbers: set from Python)", cli=False)
    preservation_weight: float = option(0.0, "λ > 0 adds λ · MSE between the trained and the frozen "
                                        "outputs for the preserved concepts", group="the loss")
    critic_lr: float = option(1e-3, "the critic's Adam learning rate", group="the loss")
    critic_input: str = option("reverse_step", "what the critic sees: reverse_step (draws of the two "
                               "Gaussian steps, with x_t and t) or outputs (the outputs alone, as the "
                               "official code)", group="the loss", choices=CRITIC_INPUTS)
    critic_warmup: int = option(0, "steps at the start where only the critic trains (from Python, >= steps "
                                "trains the critic alone, as fit_critic does)", group="the loss")
    steps: int = option(200, "optimiser steps", group="training")
    batch_size: int = option(64, "anchor images per micro-batch (per process)", group="training")
    gradient_accumulation_steps: int = option(1, "micro-batches per optimiser step", group="training")
    lr: float = option(1e-3, "the denoiser's learning rate", group="training")
    optimizer: str = option("adam", "adam (the official code uses AdamW) or sgd", group="training",
                            choices=tuple(OPTIMIZERS))
    max_grad_norm: float | None = option(None, "clip the trained parameters' gradient to this L2 "
                                            "norm (default: no clipping)", group="training", type=float)
    checkpoint_every: int = option(0, "write a checkpoint every this many steps (0: none)",
                                   group="training")
    checkpoint_dir: str | None = option(None, "where checkpoints go (the command line puts them "
                                           "in OUTPUT/checkpoints)", cli=False)
    log_every: int = option(10, "period of the metrics callback (a Python function)", cli=False)
    seed: int = option(0, "seed of every random draw", group="training")
    progress: bool = option(True, "no progress bars", group="training", flag="--quiet")

    def check(self, num_train_timesteps: int | None = None):
        """Every check that does not need the model; those on timesteps once it is known."""
        get_divergence(self.divergence, self.alpha)  # unknown names raise, listing the valid ones
        for name in ("steps", "batch_size", "gradient_accumulation_steps", "log_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("critic_warmup", "checkpoint_every"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("lr", "sigma", "critic_lr") + (("max_grad_norm",) if self.max_grad_norm is not None else ()):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a finite number > 0, got {value}")
        for name in ("omega", "preservation_weight", "guidance"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        for name, valid in (("method", METHODS), ("optimizer", tuple(OPTIMIZERS)), ("critic_input", CRITIC_INPUTS),
                            ("normalization", LOOP_NORMALIZATIONS), ("units", UNITS),
                            ("variance", VARIANCES)):
            if getattr(self, name) not in valid:
                raise ValueError(f"{name} must be one of {valid}, got {getattr(self, name)!r}")
        if self.checkpoint_every and not self.checkpoint_dir:
            raise ValueError("checkpoint_every > 0 needs a checkpoint_dir")
        if num_train_timesteps is None:
            return
        if self.timestep_range is not None:
            lo, hi = self.timestep_range
            if not 0 <= lo < hi <= num_train_timesteps:
                raise ValueError(f"timestep_range must satisfy 0 <= lo < hi <= "
                                 f"{num_train_timesteps}, got {self.timestep_range}")
        if self.timestep_probs is not None and len(self.timestep_probs) != num_train_timesteps:
            raise ValueError(f"timestep_probs needs {num_train_timesteps} entries, got "
                             f"{len(self.timestep_probs)}")

    def loop_config(self) -> UnlearnConfig:
        """The :class:`UnlearnConfig` part of this config (of a subclass: its loop options only)."""
        return UnlearnConfig(**{f.name: getattr(self, f.name) for f in fields(UnlearnConfig)})


@dataclass
class UnlearnResult:
    history: dict                       # per-step lists: step, loss, grad_l1_mean, grad_l1_std, ...
    metrics: list = field(default_factory=list)   # what the callback returned, with its step
    checkpoints: list = field(default_factory=list)
    steps_done: int = 0
    resume: dict | None = None          # {"from", "step", "changed": {option: [old, new]}} when resumed
    skipped_steps: list = field(default_factory=list)  # fp16 steps skipped for inf gradients

    def save(self, path) -> Path:
        path = Path(path)
        path.write_text(json.dumps({"history": self.history, "metrics": self.metrics,
                                    "steps_done": self.steps_done}, indent=1))
        return path


def frozen_output(task: Task, x_t, t, cond) -> torch.Tensor:
    """The original model's output: ``task.reference`` (a module or a :class:`SwappedReference`),
    or the model itself while no run has changed it."""
    with torch.no_grad():
        if task.reference is None:
            return task.forward(task.model, x_t, t, cond)
        if isinstance(task.reference, SwappedReference):
            with task.reference.active():
                return task.forward(task.model, x_t, t, cond)
        return task.forward(task.reference, x_t, t, cond)


# --- one micro-batch ------------------------------------------------------------------------------

class Batch(NamedTuple):
    x_t: torch.Tensor
    t: torch.Tensor
    target: Any      # conditioning of the trained pass
    anchor: Any      # conditioning of the frozen pass


def _timesteps(config: UnlearnConfig, n: int, total: int, gen: torch.Generator) -> torch.Tensor:
    if config.timestep_probs is not None:
        probs = torch.as_tensor(config.timestep_probs, dtype=torch.float64)
        return torch.multinomial(probs, n, replacement=True, generator=gen)
    lo, hi = config.timestep_range or (0, total)
    return torch.randint(lo, hi, (n,), generator=gen)


def draw_batch(task: Task, config: UnlearnConfig, gen: torch.Generator) -> Batch:
    """Anchor x0 with their conditionings, then noise and t (in this order: resuming relies on it)."""
    drawn = task.sample_anchor_x0(config.batch_size, gen)
    if not isinstance(drawn, AnchorBatch):
        raise TypeError("Task.sample_anchor_x0 must return fdu.unlearn.AnchorBatch(x0, target, anchor), "
                        f"got {type(drawn).__name__}")
    noise = torch.randn(drawn.x0.shape, generator=gen, dtype=drawn.x0.dtype)
    t = _timesteps(config, drawn.x0.shape[0], int(task.scheduler.config.num_train_timesteps), gen)
    return Batch(task.scheduler.add_noise(drawn.x0, noise, t), t, drawn.target, drawn.anchor)


def reference_output(task: Task, config: UnlearnConfig, batch: Batch) -> torch.Tensor:
    """What the trained output under the target is pulled to (float32, no gradient): the frozen output
    under the anchor (``method="ca"``), or ESD's negatively guided frozen output for the target,
    ε(x_t, c*) − η (ε(x_t, c*) − ε(x_t, anchor)) with η = ``config.guidance`` (``method="esd"``)."""
    anchor = frozen_output(task, batch.x_t, batch.t, batch.anchor).float()
    if config.method == "ca":
        return anchor
    target = frozen_output(task, batch.x_t, batch.t, batch.target).float()
    return target - config.guidance * (target - anchor)


def _outputs(task: Task, config: UnlearnConfig, batch: Batch, acc) -> tuple[torch.Tensor, torch.Tensor]:
    """(anchor_out, trained_out): the frozen model under the anchor, the trained one under the target;
    with ``config.units == "epsilon"`` both times :func:`~fdu.reverse_step.epsilon_scale`, with
    ``config.normalization == "reverse_step"`` both times √(c_t s_t²) (:mod:`fdu.reverse_step`), so that
    their summed squared difference is the true δ² between the two reverse steps."""
    with acc.autocast():
        anchor_out = reference_output(task, config, batch)
        trained_out = task.forward(task.model, batch.x_t, batch.t, batch.target).float()
    if config.normalization == "reverse_step":
        scale = output_delta2_factor(task.scheduler, batch.t, config.variance).sqrt().float()
    elif config.units == "epsilon":
        scale = epsilon_scale(task.scheduler, batch.t)
    else:
        return anchor_out, trained_out
    scale = scale.to(anchor_out.device).reshape(-1, *([1] * (anchor_out.dim() - 1)))
    return anchor_out * scale, trained_out * scale


def _loss_normalization(config: UnlearnConfig) -> str:
    """What :func:`closed_form_loss` is told: the reverse-step δ² is a plain sum once :func:`_outputs`
    has scaled the outputs by √(c_t s_t²)."""
    return "sum" if config.normalization == "reverse_step" else config.normalization


def closed_form_step(task: Task, config: UnlearnConfig, div, batch: Batch, acc) -> tuple[torch.Tensor, str]:
    """The closed-form loss ω_t D_f(‖trained_out − anchor_out‖² / σ²) of one micro-batch, or
    (inf, the reason) when it overflows or the outputs are not finite."""
    anchor_out, trained_out = _outputs(task, config, batch, acc)
    try:
        return closed_form_loss(trained_out, anchor_out, div, sigma=config.sigma, omega=config.omega,
                                normalization=_loss_normalization(config), mask=task.loss_mask), ""
    except (DivergenceOverflowError, FloatingPointError) as err:
        return torch.tensor(math.inf), str(err)


def variational_step(task: Task, config: UnlearnConfig, div, batch: Batch, acc, critic,
                     gen: torch.Generator) -> VariationalLosses:
    """Both players' losses on one micro-batch. ``critic_input="reverse_step"``: the critic sees
    draws y = output + σ z of the two Gaussian steps, with x_t and t / T; ``"outputs"``: the
    outputs alone (the official code's choice)."""
    anchor_out, trained_out = _outputs(task, config, batch, acc)
    with acc.autocast():
        if config.critic_input == "outputs":
            return variational_losses(div, critic, anchor_out, trained_out)
        bound = WithContext(critic)
        bound.context = (batch.x_t, batch.t.to(batch.x_t.dtype) / int(task.scheduler.config.num_train_timesteps))
        real = anchor_out + config.sigma * torch.randn(anchor_out.shape, generator=gen, dtype=anchor_out.dtype)
        fake = trained_out + config.sigma * torch.randn(trained_out.shape, generator=gen, dtype=trained_out.dtype)
        return variational_losses(div, bound, real, fake)


def preservation_step(task: Task, batch: Batch, acc) -> torch.Tensor:
    """Mean over ``task.preserve`` of MSE(trained output, frozen output) on the same x_t and t."""
    with acc.autocast():
        return sum(F.mse_loss(task.forward(task.model, batch.x_t, batch.t, c).float(),
                              frozen_output(task, batch.x_t, batch.t, c).float())
                   for c in task.preserve) / len(task.preserve)


# --- the optimiser step ---------------------------------------------------------------------------

def _grad_stats(params) -> dict:
    """The official GradientTracker's numbers: the L1 norm of each trained tensor's gradient,
    mean and std over tensors; plus the global L2 norm."""
    l1 = torch.stack([p.grad.abs().sum() if p.grad is not None else torch.zeros(())
                      for p in params]).double()
    l2 = math.sqrt(sum(float((p.grad.double() ** 2).sum()) for p in params if p.grad is not None))
    return {"grad_l1_mean": float(l1.mean()),
            "grad_l1_std": float(l1.std()) if len(l1) > 1 else 0.0, "grad_l2": l2}


NO_GRADIENT = {"grad_l1_mean": 0.0, "grad_l1_std": 0.0, "grad_l2": 0.0}


def _average_gradients(params, acc):
    """Mean of each gradient over the processes (data parallel without wrapping the model, so the
    frozen reference and the critic's freezing work unchanged)."""
    if acc.num_processes > 1:
        for p in params:
            if p.grad is not None:
                p.grad = acc.reduce(p.grad.contiguous(), reduction="mean")


def _on_any_process(acc, flag: bool) -> bool:
    if acc.num_processes > 1:  # every process stops together
        return bool(acc.reduce(torch.tensor(float(flag)), reduction="sum") > 0)
    return flag


def _new_history(config: UnlearnConfig, preserving: bool) -> dict:
    keys = ["step", "loss", *NO_GRADIENT] + (["critic_loss", "estimate"] if config.variational else [])
    return {k: [] for k in keys + (["preservation"] if preserving else [])}


def accumulate_gradients(task, config, div, acc, gen, critic, *, step: int, train_model: bool,
                         history: dict, last_checkpoint) -> tuple[float, float | None]:
    """Forward and backward over ``gradient_accumulation_steps`` micro-batches; returns the mean
    loss and preservation term. A non-finite loss raises before any gradient is applied."""
    k = int(config.gradient_accumulation_steps)
    preserving = config.preservation_weight > 0 and bool(task.preserve)
    loss_sum, keep_sum = 0.0, 0.0
    for _ in range(k):
        batch = draw_batch(task, config, gen)
        critic_losses, reason = None, ""
        if config.variational:
            critic_losses = variational_step(task, config, div, batch, acc, critic, gen)
            loss = config.omega * critic_losses.generator.float()
        else:
            loss, reason = closed_form_step(task, config, div, batch, acc)
        if preserving:
            keep = preservation_step(task, batch, acc)
            loss = loss + config.preservation_weight * keep
            keep_sum += float(keep.detach()) / k
        finite = bool(torch.isfinite(loss)) and (critic_losses is None or bool(torch.isfinite(critic_losses.critic)))
        if _on_any_process(acc, not finite):
            raise NonFiniteLossError(
                f"non-finite loss at step {step + 1} with divergence {div.name!r} (lr {config.lr:g}, "
                f"sigma {config.sigma:g}){': ' + reason if reason else ''}; the parameters were "
                f"not updated; {_where(last_checkpoint)}. {ADVICE}")
        if train_model:  # with the critic frozen, this leaves the critic's .grad untouched
            acc.backward(loss / k if k > 1 else loss)
        if critic_losses is not None:  # on detached outputs: never reaches the model
            acc.backward(critic_losses.critic / k if k > 1 else critic_losses.critic)
            history["critic_loss"].append(float(critic_losses.critic.detach()))
            history["estimate"].append(float(critic_losses.estimate))
        loss_sum += float(loss.detach()) / k
    return loss_sum, (keep_sum if preserving else None)


ADVICE = "Lower the learning rate, raise sigma, or pick a divergence with bounded gradients"


def _where(last_checkpoint) -> str:
    return (f"the last good checkpoint is {last_checkpoint} (resume from it with a lower learning rate: "
            "a resumed run may change lr)" if last_checkpoint else "no checkpoint was written yet")


def apply_update(optimizer, params, stats: dict, acc, *, step: int, last_checkpoint) -> bool:
    """``optimizer.step()`` only with finite gradients, and a check of the parameters after it.
    Non-finite gradients: under fp16 gradient scaling the step is skipped (the scaler lowers its
    scale; returns False), otherwise :class:`NonFiniteError` before anything changes. Parameters
    non-finite after a step taken on finite gradients (the update overflowed): NonFiniteError,
    and the model in memory is not to be used (nothing is written from it)."""
    if not math.isfinite(stats["grad_l2"]):
        if getattr(acc, "scaler", None) is not None:
            optimizer.step()   # accelerate's scaler sees the inf and skips the update
            return False
        raise NonFiniteError(f"non-finite gradients at step {step + 1} (the loss was finite); the parameters "
                             f"were not updated; {_where(last_checkpoint)}. {ADVICE}")
    optimizer.step()
    if _on_any_process(acc, not checkpoints.all_finite(params)):
        raise NonFiniteError(f"the update of step {step + 1} made parameters inf or NaN (from finite gradients: "
                             f"the step was too large); the model in memory is unusable and nothing was "
                             f"written from it; {_where(last_checkpoint)}. {ADVICE}")
    return True


def _save(config, done: int, acc, gen, **state) -> Path:
    """Every process's generator state goes into the main process's checkpoint."""
    path = Path(config.checkpoint_dir) / f"step_{done}.safetensors"
    extra = {}
    if acc.num_processes > 1:
        states = acc.gather(gen.get_state()[None])
        extra = {f"rng/generator/{r}": states[r] for r in range(1, acc.num_processes)}
    if acc.is_main_process:
        checkpoints.save_checkpoint(path, step=done, generator=gen, config=config, extra=extra, **state)
    acc.wait_for_everyone()
    return path


# --- the loop ---------------------------------------------------------------------------------------

def unlearn(task: Task, config: UnlearnConfig, *, critic: torch.nn.Module | None = None,
            callback: Callable[[int, Task], dict] | None = None,
            resume_from=None, accelerator=None, checkpoint_info: dict | None = None) -> UnlearnResult:
    """Run the unlearning loop (see the module docstring). ``critic``: required when
    ``config.variational``; with ``critic_input="reverse_step"`` the game estimates the same
    E_t,x_t[D_f] as the closed form with that σ and ``normalization="sum"``.
    ``callback(step, task)``: called every ``config.log_every`` steps (and at step 0 and the end),
    may return a dict of metrics to record. ``resume_from``: a checkpoint to continue from; its
    run's options must equal ``config``'s except those of
    :data:`fdu.checkpoints.RESUMABLE_CHANGES` (e.g. a new ``lr`` is applied to the restored
    optimiser, a larger ``steps`` extends the run); ``result.resume`` records what changed.
    ``checkpoint_info``: JSON written into every checkpoint's metadata (``"info"``).
    ``accelerator``: an ``accelerate.Accelerator`` for mixed precision (forward passes under its
    autocast, losses in float32, gradient scaling for fp16) and data parallelism (``accelerate
    launch``): each process draws its own batches (seed + process index), gradients are averaged
    over processes, only the main process logs, calls ``callback`` and writes checkpoints."""
    if config.method == "uce":
        raise ValueError("method 'uce' is a closed-form edit, not a training loop: call fdu.uce.uce_edit, or "
                         "python -m fdu unlearn --method uce")
    config.check(int(task.scheduler.config.num_train_timesteps))
    div = get_divergence(config.divergence, config.alpha)
    if config.variational and critic is None:
        raise ValueError("config.variational=True needs a critic (e.g. fdu.critics.MLPCritic)")
    if config.variational:
        div._require_variational()
    critic = critic if config.variational else None
    acc = accelerator if accelerator is not None else SingleProcess()
    params = task.trained_parameters()
    if task.reference is None:  # kept on the task, so later evaluations see the original model
        task.reference = SwappedReference(params)
    optimizer = acc.prepare_optimizer(OPTIMIZERS[config.optimizer](params, lr=config.lr))
    critic_opt = None if critic is None else acc.prepare_optimizer(
        torch.optim.Adam(critic.parameters(), lr=config.critic_lr))
    gen = torch.Generator().manual_seed(config.seed + 1_000_003 * acc.process_index)
    state = dict(params=params, optimizer=optimizer, reference=task.reference, critic=critic,
                 critic_optimizer=critic_opt)
    history = _new_history(config, config.preservation_weight > 0 and bool(task.preserve))
    start, metrics, resumed = 0, [], None
    if resume_from is not None:
        saved = checkpoints.read_metadata(resume_from)
        changes = checkpoints.resume_changes(saved.get("config"), config, int(saved["step"]))
        written_by = int(saved.get("info", {}).get("processes", acc.num_processes))
        if written_by != acc.num_processes:
            raise ResumeMismatchError(f"{resume_from} was written by a run of {written_by} process(es), this one has "
                                      f"{acc.num_processes}: resume with the same number (each draws its own batches)")
        start, history, metrics = checkpoints.restore(resume_from, generator=gen, rank=acc.process_index,
                                                      **state)
        for opt, lr in ((optimizer, config.lr), (critic_opt, config.critic_lr)):
            for group in getattr(opt, "param_groups", []):  # the new run's learning rates, not the checkpoint's
                group["lr"] = lr
        resumed = {"from": str(resume_from), "step": start, "changed": changes}
    result = UnlearnResult(history, metrics, resume=resumed)

    def record(step):
        if callback is not None and acc.is_main_process:
            metrics.append({"step": step, **(callback(step, task) or {})})

    if start == 0:
        record(0)
    from tqdm.auto import tqdm

    bar = tqdm(range(start, config.steps), initial=start, total=config.steps, leave=False,
               disable=not config.progress or not acc.is_main_process, desc=f"unlearn ({div.name})")
    last_checkpoint = resume_from
    for step in bar:
        train_model = not config.variational or step >= config.critic_warmup
        optimizer.zero_grad(set_to_none=True)
        if critic_opt is not None:
            critic_opt.zero_grad(set_to_none=True)
        loss, keep = accumulate_gradients(task, config, div, acc, gen, critic, step=step,
                                          train_model=train_model, history=history,
                                          last_checkpoint=last_checkpoint)
        stats = NO_GRADIENT
        if train_model:
            _average_gradients(params, acc)
            acc.unscale_gradients(optimizer)
            stats = _grad_stats(params)
            if config.max_grad_norm is not None and math.isfinite(stats["grad_l2"]):
                torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            if not apply_update(optimizer, params, stats, acc, step=step, last_checkpoint=last_checkpoint):
                result.skipped_steps.append(step + 1)
        if critic_opt is not None:
            _average_gradients(critic.parameters(), acc)
            critic_stats = _grad_stats(list(critic.parameters()))
            apply_update(critic_opt, list(critic.parameters()), critic_stats, acc, step=step,
                         last_checkpoint=last_checkpoint)
        for key, value in {"step": step + 1, "loss": loss, **stats}.items():
            history[key].append(value)
        if keep is not None:
            history["preservation"].append(keep)
        bar.set_postfix(loss=f"{loss:.4g}")
        done = step + 1
        if done % config.log_every == 0 or done == config.steps:
            record(done)
        if config.checkpoint_every and (done % config.checkpoint_every == 0 or done == config.steps):
            last_checkpoint = _save(config, done, acc, gen, history=history, metrics=metrics,
                                    info={**(checkpoint_info or {}), "processes": acc.num_processes}, **state)
            result.checkpoints.append(str(last_checkpoint))
    bar.close()
    result.steps_done = config.steps
    if config.checkpoint_dir and acc.is_main_process:
        Path(config.checkpoint_dir).mkdir(parents=True, exist_ok=True)
        result.save(Path(config.checkpoint_dir) / "history.json")
    return result


def fit_critic(task: Task, critic: torch.nn.Module, config: UnlearnConfig) -> list:
    """Train only the critic (the model fixed) for ``config.steps`` steps of ``config.batch_size``
    and return the per-batch variational estimates E_P[T] - E_Q[f*(T)]. With the reverse-step
    input they estimate E[D_f] that :func:`closed_form_expectation` computes exactly."""
    cfg = replace(config.loop_config(), variational=True, critic_warmup=config.steps + 1,
                  checkpoint_every=0, checkpoint_dir=None)
    return unlearn(task, cfg, critic=critic).history["estimate"]


def closed_form_expectation(task: Task, config: UnlearnConfig, n: int = 4096) -> float:
    """E over t, x0, eps of D_f(||trained_out - anchor_out||^2 / sigma^2) (``normalization="sum"``)
    between the current model under the target and the frozen one under the anchor, from n samples."""
    gen = torch.Generator().manual_seed(config.seed + 12345)
    drawn = task.sample_anchor_x0(n, gen)
    t = _timesteps(config, n, int(task.scheduler.config.num_train_timesteps), gen)
    x_t = task.scheduler.add_noise(drawn.x0, torch.randn(drawn.x0.shape, generator=gen, dtype=drawn.x0.dtype), t)
    with torch.no_grad():
        anchor_out, trained_out = _outputs(task, config, Batch(x_t, t, drawn.target, drawn.anchor), SingleProcess())
        return float(closed_form_loss(trained_out, anchor_out, config.divergence, alpha=config.alpha,
                                      sigma=config.sigma, normalization="sum"))


def gradient_share_by_timestep(task: Task, config: UnlearnConfig, *, n: int = 4096, bins: int = 10) -> dict:
    """Where a closed-form loss puts its gradient, by timestep, for the current model: each sample's
    gradient with respect to the trained output has norm 2 D_f'(δ²) ‖Δ‖ / σ² (Δ the outputs'
    difference in ``config.units``, δ² = ‖Δ‖²/σ², ``normalization="sum"``); returns the bin edges
    of t and each bin's share of the summed norms, from n samples with t uniform."""
    from .gaussian import gaussian_divergence

    gen = torch.Generator().manual_seed(config.seed + 54321)
    drawn = task.sample_anchor_x0(n, gen)
    total = int(task.scheduler.config.num_train_timesteps)
    t = torch.randint(0, total, (n,), generator=gen)
    x_t = task.scheduler.add_noise(drawn.x0, torch.randn(drawn.x0.shape, generator=gen, dtype=drawn.x0.dtype), t)
    with torch.no_grad():
        anchor_out, trained_out = _outputs(task, config, Batch(x_t, t, drawn.target, drawn.anchor), SingleProcess())
    diff = (trained_out - anchor_out).double().flatten(1).norm(dim=1)
    d2 = (diff ** 2 / config.sigma ** 2).requires_grad_(True)
    div = get_divergence(config.divergence, config.alpha)
    (slope,) = torch.autograd.grad(gaussian_divergence(div, d2).sum(), d2)
    norm = (2 * slope * diff / config.sigma ** 2).detach()
    edges = torch.linspace(0, total, bins + 1)
    which = torch.bucketize(t.double(), edges[1:-1].double(), right=True)
    share = torch.zeros(bins, dtype=torch.float64).index_add_(0, which, norm) / norm.sum()
    return {"edges": edges.tolist(), "share": share.tolist()}


def critic_estimates_by_batch_size(task_for: Callable[[str], Task], divergences: Sequence[str],
                                   batch_sizes: Sequence[int], make_critic: Callable[[], torch.nn.Module],
                                   *, steps: int, tail: int, seed: int = 0, **options) -> dict:
    """How the variational estimate depends on the batch size. For each divergence (its task from
    ``task_for(divergence)``): the exact E[D_f] (:func:`closed_form_expectation`) and, per batch
    size, the mean, std and relative bias of the last ``tail`` per-batch estimates of a fresh
    critic (``make_critic()``, built after seeding torch with ``seed``) trained ``steps`` steps.
    ``options``: further :class:`UnlearnConfig` fields (e.g. ``critic_lr``, ``sigma``)."""
    import numpy as np

    out = {}
    for div in divergences:
        task = task_for(div)
        base = UnlearnConfig(divergence=div, steps=steps, progress=False, seed=seed, **options)
        exact = closed_form_expectation(task, base, n=4096)
        out[div] = {"exact": exact}
        for b in batch_sizes:
            torch.manual_seed(seed)
            values = np.array(fit_critic(task, make_critic(), replace(base, batch_size=b))[-tail:])
            out[div][str(b)] = {"mean": float(values.mean()), "std": float(values.std()),
                                "relative_bias": float(values.mean() / exact - 1)}
    return out
