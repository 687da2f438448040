"""The paper's comparisons on a Stable Diffusion pipeline (notebook 06), through ``fdu.sd.run``: on
the mini Stable Diffusion on a CPU, on real SD with a GPU.

Every run is the command line's code path (prompts, anchor images drawn by the model, the SD task,
checkpoints); each checkpoint's trained K/V tensors are then put into an evaluation copy of the
pipeline and measured with the mini CLIP, as :func:`fdu.sd.evaluate.evaluate` measures real SD:

* **erased accuracy** (lower: more erased): CLIP accuracy of the target's images, the share with
  CS(target) > CS(superclass) (Wilson 95 % interval over images); **erased as anchor**: the share whose
  highest CLIP score, among the target, the superclass and the retained concepts, is the superclass';
* **retained accuracy** (higher: better kept): CLIP accuracy of the retained concepts' images;
* **KID** (lower: better kept): between the retained concepts' images now and the base model's for
  the same prompts and seeds, in the mini CLIP's image features;
* **drift** (lower: better kept): E‖ε_now(x_t, c) − ε_orig(x_t, c)‖² (mean over elements) for the
  retained concepts' prompts c, at x_t from the base model's own images of them (seeded; no sampling).

Runs return dicts in :mod:`fdu.digits_bench`'s format, so its matched-erasure, budget and verdict
functions apply unchanged.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..losses import LossSpec
from ..metrics import wilson


def load_checkpoint_into(pipe, path, group: str = "kv") -> list:
    """Put the trained tensors of an unlearning checkpoint (``checkpoints/step_N.safetensors``) into
    ``pipe``; returns the original values (to restore with :func:`restore`)."""
    from ..checkpoints import load_checkpoint
    from .families import select

    tensors, _ = load_checkpoint(path)
    params = list(select(pipe, group).values())
    original = [p.detach().clone() for p in params]
    with torch.no_grad():
        for i, p in enumerate(params):
            p.copy_(tensors[f"param/{i}"])
            p.requires_grad_(False)
    return list(zip(params, original))


def restore(swapped: list):
    with torch.no_grad():
        for p, o in swapped:
            p.copy_(o)


@dataclass
class Bench:
    """Measures of one erasure on a loaded pipeline: ``erased_prompts`` of the target, and
    ``retained`` (concept -> prompts) of the concepts that should stay."""

    pipe: object
    clip: object
    processor: object
    target: str
    erased_prompts: Sequence[str]
    retained: dict
    concept_type: str = "style"
    superclass: str = "painting"
    steps: int = 10              # sampler steps of the measured images
    guidance: float = 7.5
    seed: int = 0
    base: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if not self.erased_prompts or not self.retained or not all(self.retained.values()):
            raise ValueError("Bench needs erased prompts and at least one retained concept with prompts")
        self.retained_prompts = [p for c in self.retained for p in self.retained[c]]
        self.base = self._images()
        self._drift_batch()

    def _text(self, concept):
        from .evaluate import concept_text

        return concept_text(concept, self.concept_type)

    @torch.no_grad()
    def _drift_batch(self):
        """x_t, t and prompts for the sampling-free drift measure: the base model's own images of the
        retained prompts, encoded and noised at seeded timesteps."""
        import numpy as np

        g = torch.Generator().manual_seed(self.seed + 77)
        x = torch.from_numpy(np.stack([np.asarray(im.convert("RGB")) for im in self.base["retained"]]))
        x = x.permute(0, 3, 1, 2).float() / 127.5 - 1
        vae = self.pipe.vae
        from .families import from_vae_latents
        from .pipeline import training_scheduler

        x0 = from_vae_latents(self.pipe, vae.encode(x.to(vae.device, vae.dtype)).latent_dist.mean.float().cpu())
        sched = self._sched = training_scheduler(self.pipe, tuple(x0.shape[-2:]))
        t = torch.randint(50, int(sched.config.num_train_timesteps) - 50, (len(x0),), generator=g)
        self._x_t = sched.add_noise(x0, torch.randn(x0.shape, generator=g), t)
        self._t, self._prompts = t, list(self.retained_prompts)
        self._eps0 = self._eps()

    @torch.no_grad()
    def _eps(self):
        from .families import FamilyDenoiser

        d = FamilyDenoiser(self.pipe, self._sched)
        out = [d(self._x_t[i:i + 32].to(d.net.device), self._t[i:i + 32], self._prompts[i:i + 32])
               for i in range(0, len(self._t), 32)]
        return torch.cat(out).float().cpu()

    @torch.no_grad()
    def _images(self) -> dict:
        from .evaluate import generate

        return {"erased": generate(self.pipe, self.erased_prompts, steps=self.steps, guidance=self.guidance,
                                   seed=self.seed),
                "retained": generate(self.pipe, self.retained_prompts, steps=self.steps, guidance=self.guidance,
                                     seed=self.seed)}

    @torch.no_grad()
    def measure(self) -> dict:
        """The measures of the pipeline as it is now (checkpoint tensors swapped in by the caller)."""
        from torchmetrics.image.kid import KernelInceptionDistance

        from .evaluate import ClipImageFeatures, _uint8, clip_scores

        ims = self._images()
        names = [self.target, *self.retained]
        s = clip_scores(self.clip, self.processor, ims["erased"],
                        [self._text(self.target), self.superclass] + [self._text(c) for c in names[1:]])
        k = int((s[:, 0] > s[:, 1]).sum())
        as_anchor = int((s.argmax(1) == 1).sum())      # the superclass wins among all the concepts
        kept, start = 0, 0
        for c, prompts in self.retained.items():
            part = ims["retained"][start:start + len(prompts)]
            start += len(prompts)
            r = clip_scores(self.clip, self.processor, part, [self._text(c), self.superclass])
            kept += int((r[:, 0] > r[:, 1]).sum())
        n = len(ims["retained"])
        kid = KernelInceptionDistance(feature=ClipImageFeatures(self.clip, self.processor),
                                      subset_size=max(2, n // 2), subsets=20)
        torch.manual_seed(self.seed)
        kid.update(_uint8(self.base["retained"]), real=True)
        kid.update(_uint8(ims["retained"]), real=False)
        mean, std = kid.compute()
        return {"erased_accuracy": wilson(k, len(ims["erased"])),
                "erased_as_anchor": wilson(as_anchor, len(ims["erased"])),
                "retained_accuracy": wilson(kept, n), "kid": {"mean": float(mean), "std": float(std)},
                "drift": float((self._eps() - self._eps0).pow(2).mean())}


def run(bench: Bench, spec: LossSpec, *, model: str, workdir, anchor: str, anchor_kind: str = "superclass",
        seed: int = 0,
        lr: float = 1e-3, steps: int = 200, checkpoints: Sequence[int] = (25, 50, 100, 200),
        cache_dir=None, base_point: dict | None = None, **run_options) -> dict:
    """One unlearning run through :func:`fdu.sd.run`, measured at each checkpoint (and step 0).
    ``anchor_kind``: "superclass", "near" or "empty" (how the comparisons group the run)."""
    import math

    from ..errors import NonFiniteError
    from .train import RunConfig
    from .train import run as sd_run

    every = math.gcd(*checkpoints)
    if max(checkpoints) != steps:
        raise ValueError(f"the last checkpoint must be steps={steps}, got {checkpoints}")
    method, group = run_options.get("method", "ca"), run_options.get("group", "kv")
    tag = (f"{'' if method == 'ca' else method + '-'}{spec.divergence}{'-var' if spec.variational else ''}"
           f"{'' if group == 'kv' else '-' + group}-{anchor or 'empty'}-s{seed}").replace(" ", "_")
    out = Path(workdir) / tag
    cfg = RunConfig(model=model, target=bench.target, anchor=anchor, output=str(out),
                    concept_type=bench.concept_type, divergence=spec.divergence, alpha=spec.alpha,
                    variational=spec.variational, steps=steps, lr=lr, seed=seed, checkpoint_every=every,
                    resume=(out / "checkpoints").is_dir(), cache_dir=str(cache_dir) if cache_dir else None,
                    progress=False, **run_options)
    failed = False
    try:
        sd_run(cfg, log=lambda *a: None)
    except NonFiniteError as err:   # a diverged run stops with a clear error and is recorded as failed
        failed = str(err)
    curve = [{"step": 0, **(base_point or bench.measure())}]
    for c in checkpoints:
        path = out / "checkpoints" / f"step_{c}.safetensors"
        if not path.is_file():
            break
        swapped = load_checkpoint_into(bench.pipe, path, group=group)
        try:
            curve.append({"step": c, **bench.measure()})
        finally:
            restore(swapped)
    return {"spec": spec, "target": bench.target, "anchor": anchor or "empty", "anchor_kind": anchor_kind,
            "seed": seed, "lr": lr,
            "failed": bool(failed), "error": failed or None, "curve": curve}


def swap_in(pipe, path) -> list:
    """Put the tensors of an ``unlearned.safetensors`` into ``pipe``; returns what :func:`restore` needs."""
    from safetensors.torch import load_file

    from .families import weight_owners

    modules = weight_owners(pipe)
    swapped = []
    for name, value in load_file(str(path)).items():
        owner, _, rest = name.partition(".")
        param = modules[owner].get_parameter(rest)
        swapped.append((param, param.detach().clone()))
        with torch.no_grad():
            param.copy_(value.to(param.dtype))
    return swapped


@torch.no_grad()
def concept_accuracy(bench: Bench, concept: str, prompts: Sequence[str]) -> dict:
    """CLIP accuracy of a concept's prompts on the pipeline as it is now: the share of images whose CLIP
    score for the concept beats the superclass' (Wilson 95 % interval)."""
    from .evaluate import clip_scores, generate

    images = generate(bench.pipe, list(prompts), steps=bench.steps, guidance=bench.guidance, seed=bench.seed)
    s = clip_scores(bench.clip, bench.processor, images, [bench._text(concept), bench.superclass])
    return wilson(int((s[:, 0] > s[:, 1]).sum()), len(images))


def sequence_curve(bench: Bench, stages: Sequence[tuple], prompts: dict) -> list:
    """Measures after each stage of a sequential erasure: ``stages`` = [(concept, stage folder)] in order
    (each folder's unlearned.safetensors holds the weights after that stage), ``prompts``: concept ->
    evaluation prompts. Point k: the CLIP accuracy of every concept erased so far, and the retained
    concepts' accuracy, KID against the base model and drift (``bench.retained``; the base model is
    point 0)."""
    concepts = [c for c, _ in stages]
    base = bench.measure()
    points = [{"erased": 0, "erased_accuracy": {}, **{k: base[k] for k in ("retained_accuracy", "kid", "drift")}}]
    for k, (concept, folder) in enumerate(stages, start=1):
        swapped = swap_in(bench.pipe, Path(folder) / "unlearned.safetensors")
        try:
            m = bench.measure()
            accuracy = {c: concept_accuracy(bench, c, prompts[c]) for c in concepts[:k]}
        finally:
            restore(swapped)
        points.append({"erased": k, "concept": concept, "erased_accuracy": accuracy,
                       **{key: m[key] for key in ("retained_accuracy", "kid", "drift")}})
    return points


def serialisable(runs: list) -> list:
    """Runs with their LossSpec as a dict (for the results JSON)."""
    return [{**r, "spec": {"label": r["spec"].label, "divergence": r["spec"].divergence,
                           "alpha": r["spec"].alpha, "variational": r["spec"].variational}} for r in runs]


def history(workdir, tag: str) -> dict:
    return json.loads((Path(workdir) / tag / "checkpoints" / "history.json").read_text())["history"]


CLOSED_SPECS = [LossSpec("KL = MSE", "kl"), LossSpec("squared Hellinger", "squared_hellinger"),
                LossSpec("Pearson χ²", "pearson_chi2")]
VARIATIONAL_HELLINGER = LossSpec("variational Hellinger", "squared_hellinger", variational=True)


def summarise(runs: list, *, threshold: float, budget_step: int, lr: float) -> dict:
    """The comparisons of the paper's claims 4, 5, 6 and 10 over a set of measured runs (superclass
    anchor unless the claim is about anchors):

    * ``matched_first`` / ``matched_best``: per loss, the first / least-drifting checkpoint whose erased
      accuracy is at most ``threshold``, per seed, and Hellinger against MSE paired over seeds;
    * ``budget``: every loss at ``budget_step`` (means over seeds); χ² against MSE (claim 5), variational
      against closed-form Hellinger (claim 6);
    * ``anchors``: drift, KID, accuracies per loss and anchor at ``budget_step``, and for how many losses
      the near / superclass anchor drifts less than the empty prompt (claim 10)."""
    from .. import digits_bench as db

    sup = [r for r in runs if r["anchor_kind"] == "superclass"]
    first = db.matched_erasure(sup, threshold, mode="first")
    best = db.matched_erasure(sup, threshold, mode="best")
    budget = db.at_budget(sup, lr, budget_step)
    kinds = [dict(r, anchor=r["anchor_kind"]) for r in runs]
    anchors = db.by_anchor(kinds, budget_step)
    labels = [s.label for s in CLOSED_SPECS + [VARIATIONAL_HELLINGER]]
    verdict = {"hellinger_vs_mse_first_erased": db.compare_at_matched_erasure(first, "squared Hellinger", "KL = MSE"),
               "hellinger_vs_mse_best_erased": db.compare_at_matched_erasure(best, "squared Hellinger", "KL = MSE")}
    if "Pearson χ²" in budget and "KL = MSE" in budget:
        verdict["chi2_vs_mse_budget"] = db.chi2_verdict(budget, "Pearson χ²", "KL = MSE")
    if VARIATIONAL_HELLINGER.label in budget:
        verdict["variational_hellinger_budget"] = db.variational_hellinger_verdict(budget, VARIATIONAL_HELLINGER.label)
    if any("empty" in a for a in anchors.values()):
        verdict["anchors"] = db.anchor_verdict(anchors, labels)
    return {"threshold": threshold, "budget_step": budget_step, "lr": lr,
            "matched_first": {k: {m: v for m, v in e.items() if m != "points"} for k, e in first.items()},
            "matched_best": {k: {m: v for m, v in e.items() if m != "points"} for k, e in best.items()},
            "budget": budget, "anchors": anchors, "verdict": verdict}
