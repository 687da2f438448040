"""Stable Diffusion unlearning (SD 1.x/2.x, SDXL, SD3, FLUX) through the one loop of :mod:`fdu.unlearn`.

:func:`unlearning_task` turns a pipeline, aligned (target, anchor) prompts and anchor latents into a
:class:`fdu.unlearn.Task`; :func:`run` does everything the command line does: load the pipeline, build
the prompts, generate (or reuse) just enough anchor images, train with any divergence on the chosen
parameter group, checkpoint, and write the changed weights and a loadable pipeline folder.

What differs between the families (conditioning, latents, the training schedule: DDPM for UNets, flow
matching for SD3 and FLUX) lives in :mod:`fdu.sd.families`. Parameter groups (``PARAMETER_GROUPS``),
UNets: ``kv`` — the cross-attention key/value projections ``attn2.to_k`` / ``attn2.to_v`` (the official
default); ``attention`` — every attention projection of the UNet; ``cross_attention`` — every parameter
of the cross-attention blocks ``attn2`` (ESD-x); ``non_cross_attention`` — every UNet parameter outside
them (ESD-u); ``unet`` — the whole UNet. MMDiTs (SD3, FLUX): ``kv`` — the text stream's key/value
projections of the joint-attention blocks (``attn.add_k_proj`` / ``attn.add_v_proj``); ``attention``;
``transformer``. Every family: ``embedding`` — the text encoders' token embeddings.

With ``method="esd"`` the images noised for training are the frozen model's images of the *target*
prompts, and the anchor prompts (the empty prompt in ESD) only enter the reference
(:func:`fdu.unlearn.reference_output`). The frozen reference is :class:`fdu.unlearn.SwappedReference`:
the original values of the trained parameters only, never a second denoiser.
"""
from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..options import option, override
from ..unlearn import UnlearnConfig
from .families import PARAMETER_GROUPS, FamilyDenoiser, groups_help
from .prompts import CONCEPT_TYPES

MIXED_PRECISIONS = ("no", "fp16", "bf16")

#: the denoiser of every family (UNet or MMDiT + text encoders as one module): ``denoiser(x_t, t, prompts)``
Denoiser = FamilyDenoiser


def select_parameters(denoiser: FamilyDenoiser, group: str) -> dict:
    """name -> parameter of a group (:data:`fdu.sd.families.PARAMETER_GROUPS`, per family); marks them
    trainable, the rest frozen. A group the architecture does not have is a ValueError naming its groups."""
    from .families import select

    if group not in PARAMETER_GROUPS:
        raise ValueError(f"parameter group must be one of {PARAMETER_GROUPS}, got {group!r}")
    return select(denoiser.pipe, group)


def unlearning_task(pipe, target_prompts: Sequence[str], anchor_prompts: Sequence[str],
                    anchor_latents: torch.Tensor, *, group: str = "kv", hflip: bool = True,
                    mask_border: int = 0):
    """A :class:`fdu.unlearn.Task` for a pipeline. Latent i was generated from anchor prompt
    ``i % len(anchor_prompts)`` (from target prompt i % n for ESD); each drawn latent is trained with its own
    pair: the target prompt and the anchor prompt of the same caption. ``hflip``: flip half the
    latents left-right (the official ``--hflip``). ``mask_border``: leave this many latent pixels at
    each edge out of the closed-form loss (the official mask without augmentation leaves out 1)."""
    from ..unlearn import AnchorBatch, Task
    from .families import training_schedule

    if len(target_prompts) != len(anchor_prompts) or not target_prompts:
        raise ValueError("target and anchor prompts must be non-empty and aligned (one pair per caption), "
                         f"got {len(target_prompts)} and {len(anchor_prompts)}")
    schedule = training_schedule(pipe, tuple(anchor_latents.shape[-2:]))
    denoiser = FamilyDenoiser(pipe, schedule)
    named = select_parameters(denoiser, group)
    latents = anchor_latents.to(denoiser.net.device)
    owner = torch.arange(len(latents)) % len(anchor_prompts)

    def sample_anchor_x0(n, gen):
        i = torch.randint(len(latents), (n,), generator=gen)
        x0 = latents[i.to(latents.device)]
        if hflip:
            flip = (torch.rand(n, generator=gen) < 0.5).to(latents.device)
            x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
        pairs = owner[i].tolist()   # each latent with the target and anchor prompt of its caption
        return AnchorBatch(x0, [target_prompts[k] for k in pairs], [anchor_prompts[k] for k in pairs])

    def forward(model, x_t, t, prompts):
        return model(x_t, t, [prompts] * x_t.shape[0] if isinstance(prompts, str) else prompts)

    task = Task(model=denoiser, forward=forward, sample_anchor_x0=sample_anchor_x0,
                scheduler=schedule, params=named)
    if mask_border < 0 or 2 * mask_border >= min(latents.shape[-2:]):
        raise ValueError(f"mask_border must be >= 0 and leave some of the {tuple(latents.shape[-2:])} latent "
                         f"positions, got {mask_border}")
    if mask_border:
        mask = torch.zeros(1, 1, *latents.shape[-2:], device=latents.device)
        mask[..., mask_border:-mask_border, mask_border:-mask_border] = 1
        task.loss_mask = mask
    return task


ERASE, ANCHOR_IMAGES = "what to erase", "anchor images"


@dataclass(kw_only=True)
class RunConfig(UnlearnConfig):
    """Everything :func:`run` (and ``python -m fdu unlearn``, whose parser is built from these
    fields) takes: the loop's options (:class:`fdu.unlearn.UnlearnConfig`, with defaults for
    Stable Diffusion) and the model, prompts, parameters and anchor images."""

    model: str = option(help="hub id or local pipeline folder (offline: a folder or the hub cache)",
                        group=ERASE)
    target: str = option(help='the concept(s) to erase, e.g. "van gogh" (several: "van gogh" monet ..., or a '
                         'text file with one concept per line)', group=ERASE, nargs="+")
    joint: bool = option(False, "several targets: erase them all in one run over all their prompts (default: "
                         "sequentially, each run starting from the last one's weights, with the outputs of "
                         "concept k in OUTPUT/kk-<concept>)", group=ERASE)
    anchor: str = option(help='what to map it to: the superclass ("painting"), a near concept '
                         '("salvador dali"), or "" (the empty prompt)', group=ERASE)
    output: str = option(help="folder for checkpoints, unlearned weights, pipeline and summary",
                         group=ERASE)
    concept_type: str = option("style", "how target prompts are built from captions (the official "
                               "code's templates)", group=ERASE, choices=CONCEPT_TYPES)
    superclass: str | None = option(None, "class word of the captions (default: painting for "
                                       "style, people for nudity, the anchor for object)", group=ERASE)
    captions: str | None = option(None, "a text file of anchor captions, one per line (default: "
                                     "the model folder's own captions/<superclass>.txt if it has one, "
                                     "as the mini model does, else the shipped captions)", group=ERASE)
    preserve: tuple = option((), "prompts whose outputs --preservation-weight holds to the original "
                             "model's (e.g. the retained artists' names)", group=ERASE, nargs="*")
    group: str = option("kv", groups_help(), group="training", flag="--params", choices=PARAMETER_GROUPS)
    mixed_precision: str = option("no", "autocast dtype of the forward passes (losses stay float32)",
                                  group="training", choices=MIXED_PRECISIONS)
    resume: bool = option(False, "continue from the latest checkpoint in --output", group="training")
    mask_border: int = option(1, "latent pixels at each edge left out of the closed-form loss "
                              "(official: 1; 0: none)", group="the loss")
    max_anchor_images: int = option(1000, "at most this many (a run generates no more than steps x "
                                    "batch x accumulation x processes)", group=ANCHOR_IMAGES)
    anchor_steps: int = option(25, "sampler steps per anchor image", group=ANCHOR_IMAGES)
    anchor_guidance: float = option(6.0, "classifier-free guidance of the anchor images",
                                    group=ANCHOR_IMAGES)
    anchor_batch_size: int = option(4, "anchor images drawn per pipeline call", group=ANCHOR_IMAGES)
    resolution: int | None = option(None, "image size (default: the model's)", group=ANCHOR_IMAGES,
                                       type=int)
    hflip: bool = option(True, "do not flip half the anchor latents", group=ANCHOR_IMAGES)
    cache_dir: str | None = option(None, "where anchor images are cached (default: OUTPUT/anchors)",
                                      group=ANCHOR_IMAGES)
    uce_lambda: float = option(0.1, "λ of --method uce: the regulariser that keeps the edited K/V near the "
                               "original (> 0)", group="the loss")
    # Stable Diffusion defaults of the loop's options (the official code's, on one GPU)
    steps: int = override(UnlearnConfig, "steps", 500)
    batch_size: int = override(UnlearnConfig, "batch_size", 2)
    gradient_accumulation_steps: int = override(UnlearnConfig, "gradient_accumulation_steps", 2)
    lr: float = override(UnlearnConfig, "lr", 2.8e-4)
    critic_lr: float = override(UnlearnConfig, "critic_lr", 1e-4)
    checkpoint_every: int = override(UnlearnConfig, "checkpoint_every", 100)

    def __post_init__(self):
        self.preserve = tuple(self.preserve)
        self.target = concepts_of(self.target)
        if len(self.target) == 1:
            self.target = self.target[0]
        if self.checkpoint_dir is None:
            self.checkpoint_dir = str(Path(self.output) / "checkpoints")

    def check(self, num_train_timesteps: int | None = None):
        super().check(num_train_timesteps)
        for name, valid in (("group", PARAMETER_GROUPS), ("concept_type", CONCEPT_TYPES),
                            ("mixed_precision", MIXED_PRECISIONS)):
            if getattr(self, name) not in valid:
                raise ValueError(f"{name} must be one of {valid}, got {getattr(self, name)!r}")
        for name in ("max_anchor_images", "anchor_batch_size", "anchor_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.mask_border < 0:
            raise ValueError(f"mask_border must be >= 0, got {self.mask_border}")
        if self.variational and self.critic_warmup >= self.steps:
            raise ValueError(f"--critic-warmup ({self.critic_warmup}) must be below --steps ({self.steps}): "
                             "during the warm-up only the critic trains, so the model would come back untouched")
        if self.method == "uce":
            if self.variational or self.divergence not in ("kl", "mse"):
                raise ValueError("--method uce is a least-squares edit of the cross-attention K/V: it takes no "
                                 "--divergence or --variational (those apply to --method ca and esd)")
            if not self.uce_lambda > 0:
                raise ValueError(f"--uce-lambda must be > 0, got {self.uce_lambda}")
        if self.preservation_weight > 0 and not self.preserve:
            raise ValueError("--preservation-weight needs the prompts to preserve: --preserve PROMPT ...")


def concepts_of(target) -> tuple:
    """The concepts a --target names: one string, several, or a text file of one concept per line (a
    single value naming an existing file). Raises ValueError for none."""
    values = [target] if isinstance(target, str) else list(target)
    if len(values) == 1 and values[0] and Path(values[0]).is_file():
        try:
            values = [line.strip() for line in Path(values[0]).read_text(encoding="utf-8").splitlines()]
        except UnicodeDecodeError:
            raise ValueError(f"--target {values[0]}: not a UTF-8 text file of concepts, one per line") from None
        values = [v for v in values if v and not v.startswith("#")]
        if not values:
            raise ValueError(f"--target {target!r}: the file names no concept (one per line)")
    if not values or any(not isinstance(v, str) or not v.strip() for v in values):
        raise ValueError(f"--target needs at least one non-empty concept, got {target!r}")
    if len(set(values)) != len(values):
        raise ValueError(f"--target names a concept twice: {values}")
    return tuple(values)


def _concepts(cfg) -> tuple:
    return (cfg.target,) if isinstance(cfg.target, str) else tuple(cfg.target)


def check_known_concepts(cfg: RunConfig):
    """A model folder that lists the concepts it knows (``world.json``, as the mini model does) gets a
    clear error for a target or anchor it does not know, before anything is loaded or trained."""
    path = Path(cfg.model) / "world.json"
    if not path.is_file():
        return
    known = json.loads(path.read_text())
    valid = [c for kind in ("styles", "objects") for c in known.get(kind, [])]
    for what, name in [("target", t) for t in _concepts(cfg)] + [("anchor", cfg.anchor)]:
        if name and name.strip().lower() not in valid:
            raise ValueError(f"--{what} {name!r} is not a concept of the model {cfg.model} (its world.json): "
                             f"styles {', '.join(known.get('styles', []))}; "
                             f"objects {', '.join(known.get('objects', []))}")


def check_family_options(cfg: RunConfig):
    """For a local pipeline folder, before anything is loaded: its family is one fdu.sd unlearns, the
    parameter group exists in its architecture, and the method applies to it (UCE edits a UNet's
    cross-attention)."""
    from .families import check_group, family_of_class, read_model_index

    if not (Path(cfg.model) / "model_index.json").is_file():
        return
    family = family_of_class(read_model_index(cfg.model).get("_class_name"))
    check_group(family, cfg.group)
    if cfg.method == "uce" and family != "sd":
        raise ValueError(f"--method uce edits the cross-attention K/V of one CLIP text encoder's states (SD 1.x/2.x); "
                         f"{cfg.model} is a {family!r} pipeline: use --method ca or esd")


def check_prompts(cfg: RunConfig, targets, anchors, tokenizer, log=print):
    """Warnings for what trains but is probably not meant: the target equal to the anchor, prompts
    longer than the text encoder reads (cut, so their end is not trained)."""
    for target in _concepts(cfg):
        if target.strip().lower() == cfg.anchor.strip().lower():
            log(f"warning: --target and --anchor are both {target!r}: the model is pulled towards itself, "
                "and little will change")
    limit = tokenizer.model_max_length
    long = [p for p in dict.fromkeys([*targets, *anchors]) if len(tokenizer(p).input_ids) > limit]
    if long:
        log(f"warning: {len(long)} prompt(s) are longer than the text encoder's {limit} tokens and are cut "
            f"(what follows is not trained), e.g. {long[0][:120]!r}")
    return long


def resume_point(cfg: RunConfig, log=print) -> tuple:
    """(checkpoint, its metadata, the changed options) to resume from, checked before anything is
    loaded: the newest checkpoint that reads back (newer damaged ones are skipped with a warning),
    its run's options compared with ``cfg``'s (:func:`fdu.checkpoints.resume_changes`)."""
    from ..checkpoints import checkpoints_in, latest_good_checkpoint, load_checkpoint, resume_changes

    ckpt_dir = Path(cfg.checkpoint_dir)
    found = checkpoints_in(ckpt_dir) if ckpt_dir.is_dir() else []
    if not cfg.resume:
        if found:
            raise FileExistsError(f"{ckpt_dir} already holds checkpoints: pass --resume to continue that run, "
                                  "or choose another --output")
        return None, None, {}
    if not found:
        log(f"--resume: no checkpoint in {ckpt_dir}, starting from step 0")
        return None, None, {}
    path, meta = latest_good_checkpoint(ckpt_dir, warn=log)
    if path is None:
        load_checkpoint(found[0])  # raises, naming the newest file
    changes = resume_changes(meta.get("config"), cfg, int(meta["step"]))
    for name, (old, new) in changes.items():
        log(f"--resume: {name} changes from {old!r} to {new!r} (from step {meta['step']} on)")
    return path, meta, changes


def run(cfg: RunConfig, accelerator=None, log=print) -> dict:
    """Unlearn ``cfg.target`` from the pipeline ``cfg.model``; returns the summary also written to
    ``<output>/summary.json``. Writes ``<output>/checkpoints/step_N.safetensors``,
    ``<output>/unlearned.safetensors`` (the trained parameters by name) and ``<output>/pipeline``.
    Everything that can be checked is checked before the model is loaded: the options, the
    output folders, the prompts, the checkpoint to resume from and its options."""
    from accelerate import Accelerator

    from ..checkpoints import all_finite
    from ..critics import PatchCritic
    from ..errors import NonFiniteError
    from ..paths import writable_folder
    from ..unlearn import unlearn
    from .anchors import generate_anchor_latents
    from .families import family_of, latent_channels, prediction_type
    from .pipeline import load_pipeline
    from .prompts import build_prompts

    cfg.check()
    check_known_concepts(cfg)
    check_family_options(cfg)
    if not isinstance(cfg.target, str) and not cfg.joint:
        return run_sequence(cfg, accelerator=accelerator, log=log)
    out = writable_folder(cfg.output, "--output")
    writable_folder(cfg.checkpoint_dir, "the checkpoint folder")
    cache = writable_folder(cfg.cache_dir if cfg.cache_dir else out / "anchors", "--cache-dir")
    targets, anchors = [], []
    for concept in _concepts(cfg):   # one concept, or all of them for --joint: their caption pairs together
        t, a = build_prompts(cfg.concept_type, concept, cfg.anchor, superclass=cfg.superclass,
                             captions=cfg.captions, seed=cfg.seed, model_dir=cfg.model)
        targets, anchors = targets + list(t), anchors + list(a)
    acc = accelerator
    if acc is None:
        from accelerate.state import AcceleratorState, PartialState

        cpu = not torch.cuda.is_available()   # without GPUs, processes (if launched) talk over gloo
        if PartialState(cpu=cpu).num_processes == 1:  # one process (a notebook, a test): allow a new precision
            AcceleratorState._reset_state(reset_partial_state=True)
        acc = Accelerator(mixed_precision=cfg.mixed_precision, cpu=cpu)
    if not acc.is_main_process:
        log = lambda *args, **kwargs: None  # noqa: E731 - one process speaks
    resume_from, resume_meta, _ = resume_point(cfg, log)
    t0 = time.time()
    pipe = load_pipeline(cfg.model, device=str(acc.device), progress=cfg.progress and acc.is_main_process)
    check_prompts(cfg, targets, anchors, pipe.tokenizer, log)
    if cfg.method == "uce":   # a closed-form edit: no anchor images, no loop (all --joint targets at once)
        return _uce_run(cfg, pipe, out, targets, anchors, acc, t0)
    # no more anchor images than the run can use (every process draws its own batches); a resumed
    # run keeps the anchor images it started with
    needed = cfg.steps * cfg.batch_size * cfg.gradient_accumulation_steps * acc.num_processes
    n_images = min(needed, cfg.max_anchor_images)
    if resume_meta is not None:
        n_images = int(resume_meta.get("info", {}).get("anchor_images", n_images))
    size = cfg.resolution
    esd = cfg.method == "esd"   # ESD trains on the frozen model's own images of the target
    negative = ", ".join(_concepts(cfg)) if cfg.concept_type == "nudity" and not esd else None
    with acc.main_process_first():   # the main process generates, the others read the cache
        latents = generate_anchor_latents(pipe, targets if esd else anchors, n_images, cache, height=size, width=size,
                                          steps=cfg.anchor_steps, guidance=cfg.anchor_guidance,
                                          seed=cfg.seed, negative_prompt=negative,
                                          batch_size=cfg.anchor_batch_size,
                                          progress=cfg.progress and acc.is_main_process, warn=log)
    task = unlearning_task(pipe, targets, anchors, latents, group=cfg.group, hflip=cfg.hflip,
                           mask_border=cfg.mask_border)
    task.preserve = cfg.preserve
    critic = None
    if cfg.variational:
        torch.manual_seed(cfg.seed)
        critic = PatchCritic(latent_channels(pipe)).to(acc.device)
    t1 = time.time()
    result = unlearn(task, cfg, critic=critic, accelerator=acc, resume_from=resume_from,
                     checkpoint_info={"anchor_images": n_images})
    t2 = time.time()
    if not all_finite(task.params.values()):   # the loop checks every update; this guards the files
        raise NonFiniteError("the trained parameters hold inf or NaN; nothing was written")
    summary = {"config": asdict(cfg), "processes": acc.num_processes, "family": family_of(pipe),
               "prediction_type": prediction_type(pipe),
               "trained_parameters": sum(p.numel() for p in task.params.values()), "anchor_images": n_images,
               "first_prompts": {"target": targets[:3], "anchor": anchors[:3]},
               "resumed_from": str(resume_from) if resume_from else None, "resume": result.resume,
               "skipped_steps": result.skipped_steps,
               "final_loss": result.history["loss"][-1] if result.history["loss"] else None,
               "seconds": {"setup": round(t1 - t0, 2), "train": round(t2 - t1, 2)}}
    if torch.cuda.is_available():
        summary["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
    return _write_outputs(cfg, out, task.params, pipe, summary, acc)


def _write_outputs(cfg: RunConfig, out: Path, params: dict, pipe, summary: dict, acc) -> dict:
    """What every run writes (the main process): unlearned.safetensors (the changed tensors by name), the
    pipeline folder and summary.json; returns the summary."""
    from safetensors.torch import save_file

    if acc.is_main_process:
        from .pipeline import save_pipeline

        save_file({n: p.detach().float().cpu().contiguous() for n, p in params.items()},
                  str(out / "unlearned.safetensors"), metadata={"fdu": json.dumps(asdict(cfg))})
        save_pipeline(pipe, out / "pipeline")
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
    acc.wait_for_everyone()
    return summary


def _uce_run(cfg: RunConfig, pipe, out: Path, targets, anchors, acc, t0: float) -> dict:
    """--method uce: edit the cross-attention K/V in closed form (:mod:`fdu.uce`) and write what a trained
    run writes (unlearned.safetensors, the pipeline, summary.json)."""

    from ..checkpoints import all_finite
    from ..errors import NonFiniteError
    from ..uce import concept_texts, uce_edit
    from .families import family_of, prediction_type

    if family_of(pipe) != "sd":
        raise ValueError(f"--method uce edits SD 1.x/2.x cross-attention; this is a {family_of(pipe)!r} pipeline: use "
                         "--method ca or esd")
    edit_targets, edit_anchors = [], []
    for concept in _concepts(cfg):
        t, a = concept_texts(concept, cfg.anchor)
        edit_targets, edit_anchors = edit_targets + t, edit_anchors + a
    edited = uce_edit(pipe, edit_targets, edit_anchors, cfg.preserve, lam=cfg.uce_lambda)
    if not all_finite(edited.values()):
        raise NonFiniteError("the UCE edit produced inf or NaN weights (try a larger --uce-lambda); "
                             "nothing was written")
    summary = {"config": asdict(cfg), "processes": acc.num_processes, "prediction_type": prediction_type(pipe),
               "trained_parameters": sum(p.numel() for p in edited.values()), "anchor_images": 0,
               "first_prompts": {"target": edit_targets[:3], "anchor": edit_anchors[:3]},
               "resumed_from": None, "resume": None, "skipped_steps": [], "final_loss": None,
               "seconds": {"setup": 0.0, "train": round(time.time() - t0, 2)}}
    return _write_outputs(cfg, out, edited, pipe, summary, acc)


def _slug(concept: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in concept.lower()).strip("-") or "concept"


def run_sequence(cfg: RunConfig, accelerator=None, log=print) -> dict:
    """Several targets, erased one after another (the paper's ten artists): concept k trains from the
    pipeline concept k−1 wrote, in ``OUTPUT/kk-<concept>`` (a complete run's outputs each). A finished
    stage (its summary.json) is skipped; with ``--resume`` an interrupted one continues from its
    checkpoint, so an interrupted sequence ends with the same weights as an uninterrupted one. The last
    stage's unlearned.safetensors and pipeline are copied to OUTPUT, with a summary of every stage."""
    import shutil
    from dataclasses import replace

    from ..paths import writable_folder

    out = writable_folder(cfg.output, "--output")
    stages, model = [], cfg.model
    for k, concept in enumerate(_concepts(cfg), start=1):
        stage = out / f"{k:02d}-{_slug(concept)}"
        done = stage / "summary.json"
        if done.is_file():
            log(f"[{k}/{len(_concepts(cfg))}] {concept!r}: done earlier ({stage})")
            summary = json.loads(done.read_text())
        else:
            log(f"[{k}/{len(_concepts(cfg))}] erasing {concept!r} from {model}")
            resume = cfg.resume and (stage / "checkpoints").is_dir() and any((stage / "checkpoints").iterdir())
            stage_cfg = replace(cfg, target=concept, model=str(model), output=str(stage),
                                checkpoint_dir=str(stage / "checkpoints"), resume=resume, joint=False,
                                cache_dir=cfg.cache_dir)
            summary = run(stage_cfg, accelerator=accelerator, log=log)
        stages.append({"concept": concept, "output": str(stage), "model": str(model), "summary": summary})
        model = stage / "pipeline"
    last = Path(stages[-1]["output"])
    shutil.copyfile(last / "unlearned.safetensors", out / "unlearned.safetensors")
    if (out / "pipeline").exists():
        shutil.rmtree(out / "pipeline")
    shutil.copytree(last / "pipeline", out / "pipeline")
    summary = {"config": asdict(cfg), "mode": "sequential", "concepts": list(_concepts(cfg)),
               "processes": stages[-1]["summary"].get("processes", 1),
               "trained_parameters": stages[-1]["summary"]["trained_parameters"],
               "anchor_images": sum(s["summary"]["anchor_images"] for s in stages),
               "final_loss": stages[-1]["summary"]["final_loss"],
               "seconds": {"train": round(sum(s["summary"]["seconds"]["train"] for s in stages), 2)},
               "stages": [{k: v for k, v in s.items() if k != "summary"} for s in stages]}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def load_unlearned(pipe, path) -> list:
    """Put the weights of ``unlearned.safetensors`` into a pipeline loaded from the original model;
    returns the names changed."""
    from safetensors.torch import load_file

    from .families import weight_owners

    weights = load_file(str(path))
    modules = weight_owners(pipe)
    for name, value in weights.items():
        owner, _, rest = name.partition(".")
        param = modules[owner].get_parameter(rest)
        with torch.no_grad():
            param.copy_(value.to(param.dtype))
    return sorted(weights)
