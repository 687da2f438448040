"""The one unlearning loop that every scale uses (the 2-D toy, digits, Stable Diffusion).

For a target concept c* and an anchor concept c, each step

1. draws x0 from the anchor's images, a timestep t and noise eps, and forms x_t (diffusers'
   ``DDPMScheduler.add_noise``);
2. runs the **frozen** denoiser on (x_t, c) and the **trainable** one on (x_t, c*);
3. compares the two outputs with a divergence between the Gaussian reverse steps they define:
   closed form (:func:`fdu.closed_form_loss`) or variational (a critic that ascends
   E_P[T] - E_Q[f*(T)] while the denoiser descends it, :func:`fdu.variational_losses`);
4. steps the optimiser on the chosen parameters.

A scale plugs in through :class:`Task`: the model, how to call it, where anchor x0 comes from,
the conditionings. The frozen reference is either a module (a full copy) or, by default,
:class:`SwappedReference`, which keeps only the original values of the trained parameters and swaps
them in for the reference pass: no second copy of a large UNet.

Checkpoints are single ``.safetensors`` files holding the trained parameters, the optimiser and
critic states, the random-number generators and the history; resuming from one continues
bit-identically to an uninterrupted run (on CPU).
"""
from __future__ import annotations

import contextlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from .critics import WithContext
from .divergences import get_divergence
from .gaussian import DivergenceOverflowError
from .losses import closed_form_loss, variational_losses

CRITIC_INPUTS = ("reverse_step", "outputs")
OPTIMIZERS = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}
Forward = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor, Any], torch.Tensor]


class NonFiniteLossError(FloatingPointError):
    """The loss became inf or NaN; the parameters were not updated with it."""


@dataclass
class Task:
    """What the loop needs from a scale (toy, digits, Stable Diffusion).

    ``forward(model, x_t, t, cond)`` returns the denoiser's output (the noise prediction) for a
    batch; ``sample_anchor_x0(n, generator)`` returns n anchor images x0, drawing any randomness
    from ``generator`` only (so runs are reproducible and resumable); ``target`` / ``anchor`` /
    ``preserve`` are conditionings in whatever form ``forward`` understands. ``params``: the
    parameters to train (default: every parameter of ``model`` that requires grad).
    """

    model: torch.nn.Module
    forward: Forward
    sample_anchor_x0: Callable[[int, torch.Generator], torch.Tensor]
    target: Any
    anchor: Any
    scheduler: Any                                   # a diffusers DDPMScheduler
    preserve: Sequence[Any] = ()
    params: Optional[Sequence[torch.nn.Parameter]] = None
    reference: Optional[Union[torch.nn.Module, "SwappedReference"]] = None
    loss_mask: Optional[torch.Tensor] = None          # (1, 1, *spatial): positions the closed form counts

    def trained_parameters(self) -> list:
        params = list(self.params) if self.params is not None else [
            p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("no parameters to train: pass Task(params=...) or leave some "
                             "parameters of the model with requires_grad=True")
        return params


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


@dataclass
class UnlearnConfig:
    divergence: str = "kl"
    alpha: Optional[float] = None
    variational: bool = False          # False: closed form (quadrature where none exists)
    steps: int = 200
    batch_size: int = 64
    lr: float = 1e-3
    optimizer: str = "adam"            # "adam" (the official code uses AdamW) or "sgd"
    sigma: float = 1.0                 # temperature of the closed forms
    weight: float = 1.0                # omega_t (a number; see timestep_weights for a schedule)
    normalization: str = "mean"
    timestep_range: Optional[tuple] = None     # (lo, hi): draw t uniformly in [lo, hi)
    timestep_weights: Optional[Sequence[float]] = None  # or: a distribution over all timesteps
    preservation_weight: float = 0.0   # > 0: hold the outputs for ``Task.preserve`` to the frozen
    critic_lr: float = 1e-3
    critic_input: str = "reverse_step"  # or "outputs" (the official code's choice), see unlearn()
    critic_warmup: int = 0             # steps at the start where only the critic is trained
    max_grad_norm: Optional[float] = None
    gradient_accumulation_steps: int = 1   # micro-batches of batch_size per optimiser step
    checkpoint_every: int = 0          # 0: no checkpoints
    checkpoint_dir: Optional[str] = None
    log_every: int = 10                # metrics callback period (steps)
    seed: int = 0
    progress: bool = True

    def check(self, num_train_timesteps: int):
        get_divergence(self.divergence, self.alpha)  # unknown names raise, listing the valid ones
        for name in ("steps", "batch_size", "gradient_accumulation_steps"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lr", "sigma", "critic_lr"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a finite number > 0, got {value}")
        if self.weight < 0 or self.preservation_weight < 0:
            raise ValueError("weight and preservation_weight must be >= 0")
        if self.timestep_range is not None:
            lo, hi = self.timestep_range
            if not 0 <= lo < hi <= num_train_timesteps:
                raise ValueError(f"timestep_range must satisfy 0 <= lo < hi <= "
                                 f"{num_train_timesteps}, got {self.timestep_range}")
        if self.timestep_weights is not None and len(self.timestep_weights) != num_train_timesteps:
            raise ValueError(f"timestep_weights needs {num_train_timesteps} entries, got "
                             f"{len(self.timestep_weights)}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {tuple(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.critic_input not in CRITIC_INPUTS:
            raise ValueError(f"critic_input must be one of {CRITIC_INPUTS}, got {self.critic_input!r}")
        if self.checkpoint_every and not self.checkpoint_dir:
            raise ValueError("checkpoint_every > 0 needs a checkpoint_dir")


@dataclass
class UnlearnResult:
    history: dict                       # per-step lists: step, loss, grad_l1_mean, grad_l1_std, ...
    metrics: list = field(default_factory=list)   # what the callback returned, with its step
    checkpoints: list = field(default_factory=list)
    steps_done: int = 0

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


def _timesteps(config: UnlearnConfig, n: int, total: int, gen: torch.Generator) -> torch.Tensor:
    if config.timestep_weights is not None:
        probs = torch.as_tensor(config.timestep_weights, dtype=torch.float64)
        return torch.multinomial(probs, n, replacement=True, generator=gen)
    lo, hi = config.timestep_range or (0, total)
    return torch.randint(lo, hi, (n,), generator=gen)


def _grad_stats(params) -> dict:
    """The official GradientTracker's numbers: the L1 norm of each trained tensor's gradient,
    mean and std over tensors; plus the global L2 norm."""
    l1 = torch.stack([p.grad.abs().sum() if p.grad is not None else torch.zeros(())
                      for p in params]).double()
    l2 = math.sqrt(sum(float((p.grad.double() ** 2).sum()) for p in params if p.grad is not None))
    return {"grad_l1_mean": float(l1.mean()),
            "grad_l1_std": float(l1.std()) if len(l1) > 1 else 0.0, "grad_l2": l2}


def _flatten_optimizer(prefix: str, opt: torch.optim.Optimizer, tensors: dict) -> dict:
    state = opt.state_dict()
    for idx, entry in state["state"].items():
        for key, value in entry.items():
            tensors[f"{prefix}/state/{idx}/{key}"] = torch.as_tensor(value).detach().clone()
    return {"param_groups": state["param_groups"]}


def _restore_optimizer(prefix: str, opt: torch.optim.Optimizer, tensors: dict, meta: dict):
    state: dict = {}
    for key, value in tensors.items():
        if key.startswith(prefix + "/state/"):
            idx, name = key[len(prefix) + 7:].split("/", 1)
            state.setdefault(int(idx), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(path, *, step: int, params, optimizer, generator: torch.Generator, history,
                    metrics, reference=None, critic=None, critic_optimizer=None,
                    config: Optional[UnlearnConfig] = None, extra: Optional[dict] = None) -> Path:
    """One ``.safetensors`` file: tensors for parameters, optimiser states and RNG states; the
    rest (step, optimiser hyper-parameters, history, config) as JSON in its metadata."""
    tensors = {f"param/{i}": p.detach().clone().contiguous() for i, p in enumerate(params)}
    meta = {"step": step, "history": history, "metrics": metrics,
            "optimizer": _flatten_optimizer("optimizer", optimizer, tensors),
            "config": asdict(config) if config is not None else None}
    tensors["rng/generator"] = generator.get_state()
    tensors["rng/torch"] = torch.get_rng_state()
    tensors.update({k: v.contiguous() for k, v in (extra or {}).items()})
    if isinstance(reference, SwappedReference):
        tensors.update({f"reference/{i}": o.contiguous() for i, o in enumerate(reference.original)})
    if critic is not None:
        tensors.update({f"critic/{k}": v.detach().clone().contiguous()
                        for k, v in critic.state_dict().items()})
        meta["critic_optimizer"] = _flatten_optimizer("critic_optimizer", critic_optimizer, tensors)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"fdu": json.dumps(meta)})
    tmp.replace(path)  # a crash mid-write never leaves a half checkpoint under the real name
    return path


def load_checkpoint(path) -> tuple[dict, dict]:
    """(tensors, metadata) of a checkpoint written by :func:`save_checkpoint`."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path} (checkpoints are written as "
                                "<checkpoint_dir>/step_<N>.safetensors)")
    with safe_open(str(path), framework="pt") as handle:
        meta = json.loads(handle.metadata()["fdu"])
    return load_file(str(path)), meta


def _average_gradients(params, accelerator):
    """Mean of each gradient over the processes (data parallel without wrapping the model, so the
    frozen reference and the critic's freezing work unchanged)."""
    if accelerator is None or accelerator.num_processes == 1:
        return
    for p in params:
        if p.grad is not None:
            p.grad = accelerator.reduce(p.grad.contiguous(), reduction="mean")


def unlearn(task: Task, config: UnlearnConfig, *, critic: Optional[torch.nn.Module] = None,
            callback: Optional[Callable[[int, Task], dict]] = None,
            resume_from=None, accelerator=None) -> UnlearnResult:
    """Run the unlearning loop; see the module docstring. ``critic``: required when
    ``config.variational``. With ``config.critic_input="reverse_step"`` (default) the critic is
    called as critic(y, x_t, t / T) on draws y = output + sigma * z of the two Gaussian steps, so the
    game estimates the same E_t,x_t[D_f] as the closed form with that sigma and
    ``normalization="sum"``; with ``"outputs"`` it sees the outputs alone, as in the official code,
    and compares only their marginal distributions over the batch. ``callback(step, task)`` is called every ``config.log_every`` steps
    (and at step 0 and the end) and may return a dict of metrics to record. ``resume_from``: a path to a
    checkpoint; the run continues from its step to ``config.steps``.

    ``accelerator``: an ``accelerate.Accelerator`` for mixed precision (forward passes under its
    autocast, losses in float32, gradient scaling for fp16) and data parallelism over processes
    (``accelerate launch``): each process draws its own batches (seed + process index), gradients are
    averaged over processes, and only the main process logs, calls ``callback`` and writes checkpoints
    (with every process's random state, so a resumed multi-process run continues exactly)."""
    scheduler = task.scheduler
    total_t = int(scheduler.config.num_train_timesteps)
    config.check(total_t)
    div = get_divergence(config.divergence, config.alpha)
    if config.variational:
        if critic is None:
            raise ValueError("config.variational=True needs a critic (e.g. fdu.critics.MLPCritic)")
        div._require_variational()
    params = task.trained_parameters()
    bound = WithContext(critic) if config.variational else None
    if task.reference is None:  # kept on the task, so later evaluations see the original model
        task.reference = SwappedReference(params)
    reference = task.reference
    optimizer = OPTIMIZERS[config.optimizer](params, lr=config.lr)
    critic_opt = torch.optim.Adam(critic.parameters(), lr=config.critic_lr) if config.variational \
        else None
    acc = accelerator
    rank = acc.process_index if acc is not None else 0
    main = rank == 0
    if acc is not None:
        optimizer = acc.prepare_optimizer(optimizer)  # gradient scaling under fp16
        if critic_opt is not None:
            critic_opt = acc.prepare_optimizer(critic_opt)
    autocast = acc.autocast if acc is not None else contextlib.nullcontext
    gen = torch.Generator().manual_seed(config.seed + 1_000_003 * rank)
    history = {k: [] for k in ("step", "loss", "grad_l1_mean", "grad_l1_std", "grad_l2")}
    if config.variational:
        history.update(critic_loss=[], estimate=[])
    if config.preservation_weight > 0:
        history["preservation"] = []
    metrics: list = []
    start = 0
    if resume_from is not None:
        tensors, meta = load_checkpoint(resume_from)
        with torch.no_grad():
            for i, p in enumerate(params):
                p.copy_(tensors[f"param/{i}"])
        _restore_optimizer("optimizer", optimizer, tensors, meta["optimizer"])
        if isinstance(reference, SwappedReference) and "reference/0" in tensors:
            reference.original = [tensors[f"reference/{i}"] for i in range(len(params))]
        if config.variational:
            critic.load_state_dict({k[7:]: v for k, v in tensors.items() if k.startswith("critic/")})
            _restore_optimizer("critic_optimizer", critic_opt, tensors, meta["critic_optimizer"])
        gen.set_state(tensors["rng/generator" if rank == 0 else f"rng/generator/{rank}"])
        torch.set_rng_state(tensors["rng/torch"])
        history, metrics, start = meta["history"], meta["metrics"], int(meta["step"])

    def record_metrics(step):
        if callback is not None and main:
            out = callback(step, task) or {}
            metrics.append({"step": step, **out})

    result = UnlearnResult(history, metrics)
    last_checkpoint = Path(resume_from) if resume_from is not None else None
    if start == 0:
        record_metrics(0)
    from tqdm.auto import tqdm

    bar = tqdm(range(start, config.steps), initial=start, total=config.steps,
               disable=not config.progress or not main, desc=f"unlearn ({div.name})", leave=False)
    accumulate = int(config.gradient_accumulation_steps)

    def micro_batch():
        """One micro-batch: (model loss, variational losses or None, preservation or None, overflow)."""
        x0 = task.sample_anchor_x0(config.batch_size, gen)
        noise = torch.randn(x0.shape, generator=gen, dtype=x0.dtype)
        t = _timesteps(config, x0.shape[0], total_t, gen)
        x_t = scheduler.add_noise(x0, noise, t)
        with autocast():
            target = frozen_output(task, x_t, t, task.anchor).float()
            pred = task.forward(task.model, x_t, t, task.target).float()
        overflow, losses, keep = "", None, None
        if config.variational:
            with autocast():
                if config.critic_input == "reverse_step":
                    bound.context = (x_t, t.to(x_t.dtype) / total_t)
                    real = target + config.sigma * torch.randn(target.shape, generator=gen, dtype=target.dtype)
                    fake = pred + config.sigma * torch.randn(pred.shape, generator=gen, dtype=pred.dtype)
                    losses = variational_losses(div, bound, real, fake)
                else:
                    losses = variational_losses(div, critic, target, pred)
            loss = config.weight * losses.generator.float()
        else:
            try:
                mask = None if task.loss_mask is None else \
                    task.loss_mask.to(pred.device).expand(pred.shape[0], 1, *pred.shape[2:])
                loss = closed_form_loss(pred, target, div, sigma=config.sigma, weight=config.weight,
                                        normalization=config.normalization, mask=mask)
            except (DivergenceOverflowError, FloatingPointError) as err:  # overflow, or NaN outputs
                loss = torch.tensor(math.inf)
                overflow = str(err)
        if config.preservation_weight > 0 and task.preserve:
            with autocast():
                keep = sum(F.mse_loss(task.forward(task.model, x_t, t, c).float(),
                                      frozen_output(task, x_t, t, c).float())
                           for c in task.preserve) / len(task.preserve)
            loss = loss + config.preservation_weight * keep
        return loss, losses, keep, overflow

    def backward(value):
        if acc is not None:
            acc.backward(value)
        else:
            value.backward()

    for step in bar:
        update_model = step >= config.critic_warmup or not config.variational
        optimizer.zero_grad(set_to_none=True)
        if config.variational:
            critic_opt.zero_grad(set_to_none=True)
        step_loss, step_keep = 0.0, 0.0
        for _ in range(accumulate):
            loss, losses, keep, overflow = micro_batch()
            bad = not bool(torch.isfinite(loss)) or (config.variational and
                                                     not bool(torch.isfinite(losses.critic)))
            if acc is not None and acc.num_processes > 1:  # every process stops together
                bad = bool(acc.reduce(torch.tensor(float(bad)), reduction="sum") > 0)
            if bad:
                where = (f"the last good checkpoint is {last_checkpoint}" if last_checkpoint else
                         "no checkpoint was written yet (set checkpoint_every)")
                raise NonFiniteLossError(
                    f"non-finite loss at step {step} with divergence {div.name!r} (lr {config.lr:g}, "
                    f"sigma {config.sigma:g}){': ' + overflow if overflow else ''}; the parameters were "
                    f"not updated; {where}. Lower the learning rate, raise sigma, or pick a divergence "
                    "with bounded gradients")
            if update_model:  # with the critic frozen, this leaves the critic's .grad untouched
                backward(loss / accumulate if accumulate > 1 else loss)
            if config.variational:  # on detached outputs: never reaches the model
                backward(losses.critic / accumulate if accumulate > 1 else losses.critic)
                history["critic_loss"].append(float(losses.critic.detach()))
                history["estimate"].append(float(losses.estimate))
            step_loss += float(loss.detach()) / accumulate
            if keep is not None:
                step_keep += float(keep.detach()) / accumulate
        if update_model:
            _average_gradients(params, acc)
            if acc is not None:
                acc.unscale_gradients(optimizer)
        stats = _grad_stats(params) if update_model else {
            "grad_l1_mean": 0.0, "grad_l1_std": 0.0, "grad_l2": 0.0}
        if update_model:
            if config.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
        if config.variational:
            _average_gradients(critic.parameters(), acc)
            critic_opt.step()
        if config.preservation_weight > 0 and task.preserve:
            history["preservation"].append(step_keep)
        history["step"].append(step + 1)
        history["loss"].append(step_loss)
        for key, value in stats.items():
            history[key].append(value)
        bar.set_postfix(loss=f"{step_loss:.4g}")
        done = step + 1
        if done % config.log_every == 0 or done == config.steps:
            record_metrics(done)
        if config.checkpoint_every and (done % config.checkpoint_every == 0 or done == config.steps):
            path = Path(config.checkpoint_dir) / f"step_{done}.safetensors"
            extra = {}
            if acc is not None and acc.num_processes > 1:
                states = acc.gather(gen.get_state()[None])
                extra = {f"rng/generator/{r}": states[r] for r in range(1, acc.num_processes)}
            if main:
                save_checkpoint(path, step=done, params=params, optimizer=optimizer, generator=gen,
                                history=history, metrics=metrics, reference=reference,
                                critic=critic if config.variational else None,
                                critic_optimizer=critic_opt, config=config, extra=extra)
            if acc is not None:
                acc.wait_for_everyone()
            last_checkpoint = path
            result.checkpoints.append(str(path))
    bar.close()
    result.steps_done = config.steps
    if config.checkpoint_dir and main:
        result.save(Path(config.checkpoint_dir) / "history.json")
    return result


def fit_critic(task: Task, critic: torch.nn.Module, config: UnlearnConfig) -> list:
    """Train only the critic (the model fixed) for ``config.steps`` steps of ``config.batch_size``
    and return the per-batch variational estimates E_P[T] - E_Q[f*(T)]. With the reverse-step
    input they estimate E[D_f] that :func:`closed_form_expectation` computes exactly."""
    cfg = UnlearnConfig(**{**asdict(config), "variational": True, "critic_warmup": config.steps + 1,
                           "checkpoint_every": 0, "checkpoint_dir": None})
    return unlearn(task, cfg, critic=critic).history["estimate"]


def closed_form_expectation(task: Task, config: UnlearnConfig, n: int = 4096) -> float:
    """E over t, x0, eps of D_f(||pred - target||^2 / sigma^2) (``normalization="sum"``) between
    the current model under the target and the frozen one under the anchor, from n samples."""
    gen = torch.Generator().manual_seed(config.seed + 12345)
    x0 = task.sample_anchor_x0(n, gen)
    total_t = int(task.scheduler.config.num_train_timesteps)
    t = _timesteps(config, n, total_t, gen)
    x_t = task.scheduler.add_noise(x0, torch.randn(x0.shape, generator=gen, dtype=x0.dtype), t)
    with torch.no_grad():
        target = frozen_output(task, x_t, t, task.anchor)
        pred = task.forward(task.model, x_t, t, task.target)
        return float(closed_form_loss(pred, target, config.divergence, alpha=config.alpha,
                                      sigma=config.sigma, normalization="sum"))
