"""A 2-D world of concepts, a conditional MLP denoiser trained in seconds, and its measures.

Concepts are Gaussian clusters in the plane. Three animals (cat, dog, fox) sit close together under
the superclass prompt "animal"; car, tree and house are far away. The denoiser is trained
classifier-free: a sample's prompt is replaced by its superclass ("animal") or by the empty
prompt "" with some probability, so "animal" learns the mixture of the animals and "" the mixture
of everything. Every concept, the superclass and the empty prompt can be prompted.

The trainable part that unlearning touches by default is ``cond_proj``, the layer that maps a
prompt's embedding into the network: like the cross-attention K/V of Stable Diffusion, it is shared
by every prompt, so changing it for one concept can damage the others.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from . import metrics
from .layers import timestep_embedding
from .losses import LossSpec
from .unlearn import AnchorBatch, Task

#: name -> (centre, standard deviation); the animals are near one another
CONCEPTS = {
    "cat": ((-2.0, 2.0), 0.35),
    "dog": ((-0.6, 2.6), 0.35),
    "fox": ((-2.6, 0.6), 0.35),
    "car": ((2.6, -2.0), 0.4),
    "tree": ((2.4, 2.2), 0.4),
    "house": ((-0.2, -2.8), 0.4),
}
SUPERCLASS = {"animal": ("cat", "dog", "fox")}
EMPTY = ""


@dataclass
class World:
    concepts: dict = field(default_factory=lambda: dict(CONCEPTS))
    superclass: dict = field(default_factory=lambda: dict(SUPERCLASS))

    @property
    def prompts(self) -> list:
        """Every prompt the model knows: "", the superclasses, the concepts."""
        return [EMPTY, *self.superclass, *self.concepts]

    def index(self, prompt: str) -> int:
        if prompt not in self.prompts:
            raise ValueError(f"unknown prompt {prompt!r}; valid prompts: {self.prompts}")
        return self.prompts.index(prompt)

    def members(self, prompt: str) -> list:
        """The concepts a prompt stands for."""
        self.index(prompt)
        if prompt == EMPTY:
            return list(self.concepts)
        return list(self.superclass.get(prompt, (prompt,)))

    def sample(self, prompt: str, n: int, generator: torch.Generator) -> torch.Tensor:
        """True samples of a prompt (a mixture with equal weights for "" and superclasses)."""
        names = self.members(prompt)
        pick = torch.randint(len(names), (n,), generator=generator)
        centre = torch.tensor([self.concepts[m][0] for m in names], dtype=torch.float32)[pick]
        std = torch.tensor([self.concepts[m][1] for m in names], dtype=torch.float32)[pick]
        return centre + std[:, None] * torch.randn(n, 2, generator=generator)

    def in_region(self, x: torch.Tensor, concept: str, radius: float = 3.0) -> torch.Tensor:
        """Whether each point lies within ``radius`` standard deviations of a concept's centre."""
        centre, std = self.concepts[concept]
        return (x - torch.tensor(centre)).norm(dim=1) < radius * std


class Denoiser(nn.Module):
    """eps_theta(x_t, t, prompt): an MLP on [x_t, embed(t)] plus cond_proj(embed(prompt))."""

    def __init__(self, num_prompts: int, hidden: int = 128, emb: int = 32):
        super().__init__()
        self.emb = emb
        self.prompt_embedding = nn.Embedding(num_prompts, emb)
        self.input = nn.Linear(2 + emb, hidden)
        self.cond_proj = nn.Linear(emb, hidden)       # the shared conditioning pathway (K/V-like)
        self.body = nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                  nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 2))

    def forward(self, x: torch.Tensor, t: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
        h = self.input(torch.cat([x, timestep_embedding(t, self.emb)], dim=1))
        return self.body(h + self.cond_proj(self.prompt_embedding(prompt)))


def make_scheduler(num_train_timesteps: int = 100):
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule="squaredcos_cap_v2",
                         clip_sample=False)


def prompt_ids(world: World, prompt, n: int) -> torch.Tensor:
    return torch.full((n,), world.index(prompt), dtype=torch.long)


def train_denoiser(world: World, *, steps: int = 3000, batch_size: int = 512, lr: float = 2e-3,
                   p_superclass: float = 0.3, p_empty: float = 0.15, hidden: int = 128,
                   num_train_timesteps: int = 100, seed: int = 0, progress: bool = True):
    """Train the denoiser from scratch on samples of the world (seconds on a CPU).

    Returns (model, scheduler)."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = Denoiser(len(world.prompts), hidden)
    scheduler = make_scheduler(num_train_timesteps)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    names = list(world.concepts)
    parent = {m: s for s, ms in world.superclass.items() for m in ms}
    own_id = torch.tensor([world.index(n) for n in names])
    parent_id = torch.tensor([world.index(parent.get(n, n)) for n in names])
    centre = torch.tensor([world.concepts[n][0] for n in names], dtype=torch.float32)
    std = torch.tensor([world.concepts[n][1] for n in names], dtype=torch.float32)
    from tqdm.auto import tqdm

    for _ in tqdm(range(steps), disable=not progress, desc="train toy denoiser", leave=False):
        pick = torch.randint(len(names), (batch_size,), generator=gen)
        x0 = centre[pick] + std[pick, None] * torch.randn(batch_size, 2, generator=gen)
        u = torch.rand(batch_size, generator=gen)
        ids = torch.where(u < p_superclass, parent_id[pick], own_id[pick])  # no-op without a parent
        ids = torch.where(u > 1 - p_empty, torch.zeros_like(ids), ids)
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, num_train_timesteps, (batch_size,), generator=gen)
        loss = (model(scheduler.add_noise(x0, noise, t), t, ids) - noise).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return model, scheduler


@torch.no_grad()
def sample(model: Denoiser, scheduler, world: World, prompt: str, n: int, *, seed: int = 0,
           inference_steps: int = 50) -> torch.Tensor:
    """Ancestral DDPM sampling of n points for a prompt (a fresh copy of the scheduler)."""
    sch = type(scheduler).from_config(scheduler.config)
    sch.set_timesteps(inference_steps)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=gen)
    ids = prompt_ids(world, prompt, n)
    for t in sch.timesteps:
        eps = model(x, t.expand(n), ids)
        x = sch.step(eps, t, x, generator=gen).prev_sample
    return x


def unlearning_task(model: Denoiser, scheduler, world: World, target: str, anchor: str, *,
                    anchor_pool: int = 2000, preserve=(), train: str = "cond", seed: int = 0) -> Task:
    """The toy as a :class:`fdu.unlearn.Task`: anchor x0 are drawn from a pool of the original
    model's samples for the anchor prompt (generated once, as Concept Ablation does).
    ``train``: "cond" (the shared conditioning layer, default) or "all"."""
    if train not in ("cond", "all"):
        raise ValueError(f"train must be 'cond' or 'all', got {train!r}")
    pool = sample(model, scheduler, world, anchor, anchor_pool, seed=seed + 1)
    for p in model.parameters():
        p.requires_grad_(train == "all")
    if train == "cond":
        for p in model.cond_proj.parameters():
            p.requires_grad_(True)

    def forward(m, x_t, t, prompt):
        return m(x_t, t, prompt_ids(world, prompt, x_t.shape[0]))

    def sample_anchor_x0(n, gen):
        return AnchorBatch(pool[torch.randint(len(pool), (n,), generator=gen)], target, anchor)

    return Task(model=model, forward=forward, sample_anchor_x0=sample_anchor_x0, scheduler=scheduler,
                preserve=tuple(preserve))


def evaluate(model, scheduler, world: World, target: str, anchor: str, *, before: dict, n: int = 500,
             seed: int = 123, boot: int = 200, anchor_reference=None) -> dict:
    """Erasure and preservation with bootstrap intervals (95%).

    * ``in_target``: fraction of target-prompt samples still in the target's region (lower: more
      erased);
    * ``to_anchor``: energy distance between target-prompt samples and the original model's
      anchor-prompt samples (lower: closer to the anchor);
    * ``preservation``: mean over the other concepts of the energy distance between their
      samples now and before unlearning (lower: better preserved); ``before`` maps each concept
      to its samples under the original model (same n, another seed).
    """
    x = sample(model, scheduler, world, target, n, seed=seed)
    out = {"in_target": metrics.bootstrap(lambda a: world.in_region(a, target).float().mean(),
                                          (x,), boot=boot, seed=seed)}
    ref = before[anchor] if anchor_reference is None else anchor_reference
    out["to_anchor"] = metrics.bootstrap(metrics.energy_distance, (x, ref), boot=boot, seed=seed)
    others = [c for c in world.concepts if c != target]
    per = {c: metrics.energy_distance(sample(model, scheduler, world, c, n, seed=seed), before[c])
           for c in others}
    out["preservation_per_concept"] = per
    samples_now = [sample(model, scheduler, world, c, n, seed=seed) for c in others]
    out["preservation"] = metrics.bootstrap(
        lambda *xs: sum(metrics.energy_distance(a, before[c]) for a, c in zip(xs, others)) / len(others),
        tuple(samples_now), boot=boot // 4, seed=seed)
    return out


def reference_samples(model, scheduler, world: World, n: int = 500, seed: int = 7) -> dict:
    """Each prompt's samples under the original model (the 'before' of every measure)."""
    return {p: sample(model, scheduler, world, p, n, seed=seed) for p in world.prompts}




# --- experiments (notebook 04) -----------------------------------------------------------------------

def output_drift(task: Task, world: World, concepts, *, n: int = 512, seed: int = 0) -> float:
    """Mean over ``concepts`` of E||eps_now(x_t, c) - eps_original(x_t, c)||^2 at random t, with x_t
    from each concept's own samples: a cheap, sampling-free preservation measure (lower: better)."""
    from .unlearn import frozen_output

    gen = torch.Generator().manual_seed(seed)
    total = int(task.scheduler.config.num_train_timesteps)
    drift = 0.0
    with torch.no_grad():
        for c in concepts:
            x0 = world.sample(c, n, gen)
            t = torch.randint(0, total, (n,), generator=gen)
            x_t = task.scheduler.add_noise(x0, torch.randn(x0.shape, generator=gen), t)
            now = task.forward(task.model, x_t, t, c)
            drift += float((now - frozen_output(task, x_t, t, c)).pow(2).sum(1).mean())
    return drift / len(concepts)


def erasure_threshold(world: World, before: dict, target: str, anchor: str, margin: float = 0.1) -> float:
    """A target counts as erased once the share of its samples in its region is at most the
    anchor's own share (the superclass and the empty prompt contain the target) plus ``margin``."""
    return float(world.in_region(before[anchor], target).float().mean()) + margin


def run(model: Denoiser, scheduler, world: World, target: str, anchor: str, spec: LossSpec, *,
        before: dict, steps: int = 300, lr: float = 1e-2, critic_lr: float = 1e-2,
        critic_warmup: int = 20, batch_size: int = 128, sigma: float = 1.0, log_every: int = 25,
        n_curve: int = 200, n_eval: int = 500, boot: int = 100, evaluate_final: bool = True,
        optimizer: str = "adam", seed: int = 0) -> dict:
    """Unlearn ``target`` towards ``anchor`` with one :class:`LossSpec` on a copy of ``model``.

    Returns the loop's history, a curve of erasure (share of target samples in its region) and
    preservation (:func:`output_drift`) every ``log_every`` steps, the first logged step at which
    the target counts as erased (:func:`erasure_threshold`; None if never), the samples of the
    target prompt after unlearning, and (``evaluate_final``) :func:`evaluate`'s measures.
    """
    import copy

    from .critics import MLPCritic
    from .unlearn import UnlearnConfig, unlearn

    task = unlearning_task(copy.deepcopy(model), scheduler, world, target, anchor, seed=seed)
    others = [c for c in world.concepts if c != target]
    threshold = erasure_threshold(world, before, target, anchor)

    def callback(step, t):
        x = sample(t.model, scheduler, world, target, n_curve, seed=seed + 11)
        return {"in_target": float(world.in_region(x, target).float().mean()),
                "drift": output_drift(t, world, others, n=256, seed=seed)}

    torch.manual_seed(seed)
    critic = MLPCritic(2, context_dim=2) if spec.variational else None
    cfg = UnlearnConfig(divergence=spec.divergence, alpha=spec.alpha, variational=spec.variational,
                        steps=steps, batch_size=batch_size, lr=lr, critic_lr=critic_lr,
                        critic_warmup=critic_warmup if spec.variational else 0, sigma=sigma,
                        log_every=log_every, optimizer=optimizer, seed=seed, progress=False)
    try:
        result = unlearn(task, cfg, critic=critic, callback=callback)
    except FloatingPointError as err:  # NonFiniteLossError: recorded, not hidden
        return {"spec": spec, "failed": str(err), "curve": [], "steps_to_erase": None}
    curve = result.metrics
    erased = [m["step"] for m in curve if m["in_target"] <= threshold]
    out = {"spec": spec, "failed": None, "history": result.history, "curve": curve,
           "threshold": threshold, "steps_to_erase": erased[0] if erased else None,
           "samples": sample(task.model, scheduler, world, target, n_eval, seed=seed + 5)}
    if evaluate_final:
        out["evaluation"] = evaluate(task.model, scheduler, world, target, anchor, before=before,
                                     n=n_eval, boot=boot, seed=seed + 5)
        out["evaluation"]["drift"] = output_drift(task, world, others, n=512, seed=seed + 1)
    return out


def summarize(result: dict) -> dict:
    """The JSON-ready measures of one :func:`run` (or its failure message)."""
    if result["failed"]:
        return {"failed": result["failed"]}
    ev, spec = result["evaluation"], result["spec"]
    return {"divergence": spec.divergence, "alpha": spec.alpha, "variational": spec.variational,
            "in_target": ev["in_target"], "to_anchor": ev["to_anchor"], "preservation": ev["preservation"],
            "drift": ev["drift"], "steps_to_erase": result["steps_to_erase"]}


def frontier(model: Denoiser, scheduler, world: World, target: str, anchor: str, specs, lrs, *,
             before: dict, steps: int, optimizer: str = "adam", **run_kwargs) -> dict:
    """For each spec, one point per learning rate: the final erasure (share of target samples in its
    region) and damage (output drift), or ``failed``."""
    out = {}
    for spec in specs:
        points = []
        for lr in lrs:
            r = run(model, scheduler, world, target, anchor, spec, before=before, steps=steps, lr=lr,
                    log_every=steps, evaluate_final=False, optimizer=optimizer, **run_kwargs)
            last = r["curve"][-1] if r["curve"] else None
            points.append({"lr": lr, "failed": bool(r["failed"]),
                           "in_target": last["in_target"] if last else None,
                           "drift": last["drift"] if last else None})
        out[spec.label] = points
    return out


def least_damage_when_erased(points, threshold: float):
    """The smallest drift among a frontier's points that erased (in_target <= threshold), or None."""
    return min((p["drift"] for p in points if not p["failed"] and p["in_target"] <= threshold),
               default=None)


def robust_learning_rates(points, threshold: float, factor: float = 2.0) -> int:
    """How many of a frontier's learning rates erase with at most ``factor`` times the least damage."""
    best = least_damage_when_erased(points, threshold)
    if best is None:
        return 0
    return sum(1 for p in points if not p["failed"] and p["in_target"] <= threshold
               and p["drift"] <= factor * best)
