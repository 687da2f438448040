"""The mini flow-matching model: a ``StableDiffusion3Pipeline`` (an MMDiT transformer, a flow-matching
scheduler, two CLIP text encoders, no T5) trained by ``fdu`` on the procedural world of
:mod:`fdu.sd.world`, shipped in the package (``fdu/sd/data/mini_flow``, fp16, with a manifest).

It shares the mini Stable Diffusion's VAE, tokenizer and text encoder (:mod:`fdu.sd.mini`; the text
encoder, trained with the mini UNet, serves as both of SD3's CLIP encoders, with an identity projection
for the pooled embedding) and trains only the transformer, on the rectified-flow objective
‖v̂(x_t, t) − (ε − x₀)‖², x_t = (1 − t) x₀ + t ε, t uniform on the scheduler's grid (:mod:`fdu.flow`), with
10 % empty captions for classifier-free guidance and EMA weights. The prompt is encoded exactly as
``StableDiffusion3Pipeline`` encodes it by default (the penultimate CLIP layer of both encoders, and 256
zero tokens where T5 would be), so ``pipe(prompt)`` samples what was trained.

``python -m fdu mini-flow DIR`` (:func:`write`) writes DIR/pipeline (with the world's captions), DIR/clip
(the mini CLIP, the judge) and DIR/eval, as ``mini-sd`` does; ``python -m fdu mini-flow DIR --train``
rebuilds the transformer from scratch (:func:`train`; resumable; ``make mini-flow``).
"""
from __future__ import annotations

import copy
import json
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from . import world
from .pipeline import save_pipeline

SHIPPED = Path(__file__).resolve().parent / "data" / "mini_flow"


@dataclass
class FlowRecipe:
    """Every parameter of the build; the defaults made the shipped model."""

    seed: int = 0
    n_images: int = 30000
    layers: int = 4                  # JointTransformerBlocks
    heads: int = 4
    head_dim: int = 24               # width = heads x head_dim
    patch_size: int = 2              # 16x16x4 latents -> 64 image tokens
    shift: float = 1.0               # the flow-matching scheduler's time shift
    steps: int = 1500
    batch: int = 64
    lr: float = 1e-3
    warmup: int = 100
    ema_decay: float = 0.999
    caption_dropout: float = 0.1
    max_sequence_length: int = 256   # StableDiffusion3Pipeline's default (zeros where T5 would be)
    checkpoint_every: int = 100

    @classmethod
    def quick(cls) -> FlowRecipe:
        """A few steps (tests)."""
        return cls(n_images=256, steps=4, batch=8, warmup=1, checkpoint_every=2, max_sequence_length=8)


def text_encoder_with_projection(text_model):
    """A ``CLIPTextModelWithProjection`` with ``text_model``'s weights and an identity projection (the
    pooled embedding SD3 reads is then the text encoder's own pooled output)."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(**{**text_model.config.to_dict(), "projection_dim": text_model.config.hidden_size})
    model = CLIPTextModelWithProjection(cfg)
    inner = getattr(text_model, "text_model", text_model)   # transformers 5's CLIPTextModel is the transformer
    model.text_model.load_state_dict(inner.state_dict())
    with torch.no_grad():
        model.text_projection.weight.copy_(torch.eye(cfg.hidden_size))
    return model.eval()


def new_transformer(recipe: FlowRecipe, text_hidden: int):
    from diffusers import SD3Transformer2DModel

    width = recipe.heads * recipe.head_dim
    return SD3Transformer2DModel(
        sample_size=world.SIZE // 2, patch_size=recipe.patch_size, in_channels=4, out_channels=4,
        num_layers=recipe.layers, attention_head_dim=recipe.head_dim, num_attention_heads=recipe.heads,
        joint_attention_dim=2 * text_hidden, caption_projection_dim=width, pooled_projection_dim=2 * text_hidden,
        pos_embed_max_size=world.SIZE // 2 // recipe.patch_size)


def new_scheduler(recipe: FlowRecipe):
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=recipe.shift)


def assemble(transformer, vae, text_model, tokenizer, recipe: FlowRecipe):
    """The StableDiffusion3Pipeline around a transformer and the mini SD's VAE, text encoder and tokenizer."""
    from diffusers import StableDiffusion3Pipeline

    vae = copy.deepcopy(vae)
    vae.register_to_config(shift_factor=0.0)   # SD3's pipeline un-shifts latents; the mini VAE has no shift
    te = text_encoder_with_projection(text_model)
    pipe = StableDiffusion3Pipeline(transformer=transformer, scheduler=new_scheduler(recipe), vae=vae,
                                    text_encoder=te, tokenizer=tokenizer, text_encoder_2=copy.deepcopy(te),
                                    tokenizer_2=tokenizer, text_encoder_3=None, tokenizer_3=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _encode(pipe, prompts, recipe: FlowRecipe):
    with torch.no_grad():
        embeds, _, pooled, _ = pipe.encode_prompt(prompt=prompts, prompt_2=None, prompt_3=None, device="cpu",
                                                  do_classifier_free_guidance=False,
                                                  max_sequence_length=recipe.max_sequence_length)
    return embeds, pooled


def train_transformer(pipe, latents, items, recipe: FlowRecipe, ckpt: Path, progress=True):
    """The flow-matching objective on the latents; resumes from ``ckpt``; returns the EMA transformer."""
    from ..flow import FlowSchedule
    from .mini_train import _bar, _ema_update, _schedule, resume_stage, save_stage

    torch.manual_seed(recipe.seed + 21)
    model = pipe.transformer.train()
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=0.0)
    sched = _schedule(opt, recipe.steps, recipe.warmup)
    flow = FlowSchedule(1000, recipe.shift)
    gen = torch.Generator().manual_seed(recipe.seed + 21)
    rng = random.Random(recipe.seed + 21)
    step = resume_stage(ckpt, gen, rng, model=model, ema=ema, opt=opt, sched=sched)
    bar = _bar(recipe.steps, "MMDiT (flow matching)", progress)
    bar.update(step)
    while step < recipe.steps:
        idx = torch.randint(len(latents), (recipe.batch,), generator=gen)
        prompts = ["" if rng.random() < recipe.caption_dropout else world.caption(items[i], rng) for i in idx.tolist()]
        embeds, pooled = _encode(pipe, prompts, recipe)
        x0 = latents[idx]
        eps = torch.randn(x0.shape, generator=gen)
        k = torch.randint(0, 1000, (len(idx),), generator=gen)
        pred = model(hidden_states=flow.add_noise(x0, eps, k), timestep=flow.model_timestep(k),
                     encoder_hidden_states=embeds, pooled_projections=pooled).sample
        loss = F.mse_loss(pred, flow.velocity(x0, eps))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        _ema_update(ema, model, min(recipe.ema_decay, (1 + step) / (10 + step)))
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if step % recipe.checkpoint_every == 0 or step == recipe.steps:
            save_stage(ckpt, step, gen, rng, model=model, ema=ema, opt=opt, sched=sched)
    bar.close()
    return ema.eval()


def build(folder, recipe: FlowRecipe | None = None, progress: bool = True, log=print) -> dict:
    """Train the transformer into ``folder`` (resuming), then write ``folder/pipeline``, ``folder/clip``
    (the mini CLIP) and ``folder/eval``; ``folder/build`` keeps the recipe, timings and checkpoint."""
    from diffusers import StableDiffusionPipeline

    from . import mini
    from .mini_train import _atomic_dir, workspace

    recipe = recipe or FlowRecipe()
    folder = Path(folder)
    work, timings, timed = workspace(folder, recipe)

    if not (work / "mini" / "pipeline").is_dir():
        mini.write(work / "mini")
    base = StableDiffusionPipeline.from_pretrained(str(work / "mini" / "pipeline"), safety_checker=None,
                                                   requires_safety_checker=False, local_files_only=True)
    items = world.sample_items(recipe.n_images, seed=recipe.seed)
    if not (work / "latents.pt").is_file():
        def encode():
            images = world.render(items, seed=recipe.seed)
            with torch.no_grad():
                z = torch.cat([base.vae.encode(images[i:i + 512] * 2 - 1).latent_dist.mean
                               for i in range(0, len(images), 512)])
            return z * base.vae.config.scaling_factor
        from .mini_train import _atomic_save

        _atomic_save(timed("render_and_encode", encode), work / "latents.pt")
    latents = torch.load(work / "latents.pt")
    torch.manual_seed(recipe.seed + 20)
    pipe = assemble(new_transformer(recipe, base.text_encoder.config.hidden_size), base.vae, base.text_encoder,
                    base.tokenizer, recipe)
    log(f"MMDiT: {sum(p.numel() for p in pipe.transformer.parameters()) / 1e6:.2f} M parameters, "
        f"{recipe.steps} steps of {recipe.batch}, {torch.get_num_threads()} threads")
    pipe.transformer = timed("transformer", lambda: train_transformer(pipe, latents, items, recipe,
                                                                      work / "transformer.ckpt", progress))

    def write_pipeline(d):
        save_pipeline(pipe, d)
        for sub in ("tokenizer", "tokenizer_2"):
            for name in ("vocab.json", "merges.txt"):
                shutil.copy(work / "mini" / "pipeline" / "tokenizer" / name, d / sub / name)

    _atomic_dir(folder / "pipeline", write_pipeline)
    if (folder / "clip").exists():
        shutil.rmtree(folder / "clip")
    shutil.copytree(work / "mini" / "clip", folder / "clip")
    mini.write_prompt_files(folder)
    return {"recipe": asdict(recipe), "seconds": timings, "threads": torch.get_num_threads()}


def train(folder, recipe: FlowRecipe | None = None, progress: bool = True, log=print) -> Path:
    """Rebuild the transformer from scratch into ``folder`` (resumable: rerun after an interruption)."""
    from .mini import _prepare

    folder = _prepare(folder)
    info = build(folder, recipe, progress=progress, log=log)
    (folder / "manifest.json").write_text(json.dumps(info, indent=1))
    return folder


def ship(build_folder, target: Path = SHIPPED, extra: dict | None = None) -> dict:
    """Copy a build's pipeline into the package as fp16 safetensors, with a manifest (the CLIP and the
    evaluation prompts are the mini SD's: :func:`write` takes them from there)."""
    from diffusers import StableDiffusion3Pipeline

    from .mini import MANIFEST, _files, _sha256, manifest
    from .mini_train import _atomic_dir

    build_folder = Path(build_folder)
    pipe = StableDiffusion3Pipeline.from_pretrained(str(build_folder / "pipeline"), local_files_only=True,
                                                    text_encoder_3=None, tokenizer_3=None)

    def write_all(d):
        save_pipeline(pipe.to(torch.float16), d / "pipeline")
        for sub in ("tokenizer", "tokenizer_2"):
            for name in ("vocab.json", "merges.txt"):
                shutil.copy(build_folder / "pipeline" / sub / name, d / "pipeline" / sub / name)
        info = {"what": "the mini flow-matching model of fdu (python -m fdu mini-flow DIR --train rebuilds it)",
                **(extra or {}), "sha256": {str(p.relative_to(d)): _sha256(p) for p in _files(d)}}
        (d / MANIFEST).write_text(json.dumps(info, indent=1))

    _atomic_dir(Path(target), write_all)
    return manifest(target)


def write(folder, source: Path = SHIPPED) -> Path:
    """Materialise the shipped mini flow model (fp32) into ``folder``: pipeline/, clip/, eval/ (the CLIP
    and the prompts are the mini SD's)."""
    from diffusers import StableDiffusion3Pipeline

    from . import mini
    from .mini_train import _atomic_dir

    folder = mini._prepare(folder)
    source = Path(source)
    mini.verify(source)
    pipe = StableDiffusion3Pipeline.from_pretrained(str(source / "pipeline"), dtype=torch.float32,
                                                    local_files_only=True, text_encoder_3=None, tokenizer_3=None)

    def write_pipeline(d):
        save_pipeline(pipe, d)
        for sub in ("tokenizer", "tokenizer_2"):
            for name in ("vocab.json", "merges.txt"):
                shutil.copy(source / "pipeline" / sub / name, d / sub / name)

    _atomic_dir(folder / "pipeline", write_pipeline)
    mini.verify(mini.SHIPPED)                    # the judge and the prompts: the mini SD's
    mini.write_clip(folder)
    mini.write_prompt_files(folder)
    (folder / "manifest.json").write_text(json.dumps(mini.manifest(source), indent=1))
    return folder


def measure_shipped(source: Path = SHIPPED, **quality_options) -> dict:
    """Materialise the shipped model, measure its samples with :func:`fdu.sd.mini.quality` (judged by the
    mini CLIP), and record them in the manifest."""
    import tempfile

    from . import mini
    from .evaluate import load_clip
    from .pipeline import load_pipeline

    with tempfile.TemporaryDirectory() as tmp:
        folder = write(tmp, source)
        pipe = load_pipeline(str(folder / "pipeline"), progress=False)
        clip, processor = load_clip(str(folder / "clip"))
        q = mini.quality(pipe, clip, processor, **quality_options)
    info = mini.manifest(source)
    info["quality"] = {"samples": q["samples"]}
    (Path(source) / mini.MANIFEST).write_text(json.dumps(info, indent=1))
    return info["quality"]
