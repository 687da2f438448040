"""Training the mini Stable Diffusion from scratch (``python -m fdu mini-sd DIR --train``).

The recipe (:class:`Recipe`, every parameter and the seed) builds, in stages, each saved when done so
an interrupted build resumes at the stage (and the UNet at its last checkpoint) where it stopped:

1. the world's training set (:mod:`fdu.sd.world`): ``n_images`` items, rendered on the fly;
2. a CLIP-layout BPE tokenizer trained on the world's words (``tokenizers``' BpeTrainer, CLIP's byte
   alphabet and ``</w>`` suffix; saved as vocab.json + merges.txt so ``CLIPTokenizer`` loads it);
3. a CLIP (``CLIPModel``, a ViT with 4x4 patches and a text tower), contrastive on the world's images and
   texts, with soft targets over every text that describes an image (:func:`world.text_matches`);
4. a VAE (``AutoencoderKL``, 2x down-sampling: 32x32x3 images to 16x16x4 latents), L1 + MSE + a small KL;
   its ``scaling_factor`` is set from the latents' standard deviation, as SD's 0.18215 was;
5. the UNet (``UNet2DConditionModel`` with cross-attention, ε-prediction, SD's scaled-linear betas) and
   the text encoder (``CLIPTextModel``, initialised from the CLIP's text tower, as SD's text encoder is a
   CLIP's), on the VAE's latents with 10 % empty captions for classifier-free guidance, EMA weights; then
   a second phase with half the timesteps drawn from the noisy end, where the objects' shapes form;
6. the CLIP trained further on texts that always name the object (shapes are what it learns last);
7. the pipeline folder (``StableDiffusionPipeline`` with a DDIM scheduler) and the CLIP folder, written
   to a temporary name and renamed into place at the end: a build never leaves a half-written model.
"""
from __future__ import annotations

import copy
import json
import math
import random
import re
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from . import world

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)   # CLIPImageProcessor's defaults (OpenAI's)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class Recipe:
    """Every parameter of the build; the defaults made the shipped model."""

    seed: int = 0
    n_images: int = 30000          # training images (rendered once, 32x32)
    max_length: int = 24           # tokens per prompt, start and end included
    vocab_size: int = 600          # BPE vocabulary (the 512 byte tokens, the merges, 2 specials)
    text_hidden: int = 64          # text tower width = the UNet's cross_attention_dim
    text_layers: int = 3
    vision_hidden: int = 64
    vision_layers: int = 3
    clip_steps: int = 800
    clip_batch: int = 256
    clip_lr: float = 1e-3
    clip_object_steps: int = 400   # then CLIP continues on texts that always name the object
    clip_object_lr: float = 5e-4
    vae_steps: int = 600
    vae_batch: int = 64
    vae_lr: float = 1e-3
    vae_kl_weight: float = 1e-6
    unet_channels: tuple = (32, 64, 128)
    unet_steps: int = 2000
    unet_batch: int = 64
    unet_lr: float = 1e-3
    unet_warmup: int = 100
    unet2_steps: int = 1000        # phase 2: more weight on the noisy timesteps, where shapes form
    unet2_lr: float = 5e-4
    unet2_warmup: int = 50
    unet2_high_t_share: float = 0.5
    high_t_from: int = 400
    ema_decay: float = 0.999
    caption_dropout: float = 0.1
    checkpoint_every: int = 250

    @classmethod
    def quick(cls) -> Recipe:
        """A few steps of every stage (tests)."""
        return cls(n_images=256, vocab_size=560, clip_steps=3, clip_object_steps=2, clip_batch=32,
                   vae_steps=3, vae_batch=16, unet_steps=4, unet2_steps=2, unet_batch=8, unet_warmup=2,
                   checkpoint_every=2)


def _atomic_dir(final: Path, write) -> Path:
    """Call write(tmp) then rename tmp to final (so a folder under the final name is complete)."""
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final


def _atomic_save(obj, path: Path):
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def _schedule(opt, total: int, warmup: int):
    """Linear warm-up, then a cosine down to a tenth of the learning rate."""
    def factor(step):
        return min(1.0, (step + 1) / max(warmup, 1)) * (0.1 + 0.45 * (1 + math.cos(math.pi * min(step / total, 1))))
    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _bar(total, desc, progress):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not progress, leave=False)


# ---------------------------------------------------------------- tokenizer

def _words(rng: random.Random, n: int = 4000) -> list:
    items = world.sample_items(n, seed=rng.randrange(10 ** 6))
    texts = [world.caption(it, rng) for it in items] + [world.clip_text(it, rng)[0] for it in items]
    texts += [t for c in (world.STYLE_SUPERCLASS, world.OBJECT_SUPERCLASS) for t in world.caption_file(c)]
    pattern = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[a-z]+|[0-9]|[^\sa-z0-9]+")   # CLIP's split, ASCII
    return [w for t in texts for w in pattern.findall(t.lower())]


def build_tokenizer(folder, recipe: Recipe):
    """Train the BPE and write a CLIP tokenizer folder (vocab.json, merges.txt, tokenizer.json)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    from .pipeline import _byte_alphabet

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    alphabet = _byte_alphabet()
    bpe = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    bpe.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.BpeTrainer(vocab_size=recipe.vocab_size, initial_alphabet=alphabet,
                                  end_of_word_suffix="</w>", show_progress=False, special_tokens=[])
    bpe.train_from_iterator(_words(random.Random(recipe.seed)), trainer)
    merges = json.loads(bpe.to_str())["model"]["merges"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in merges]
    vocab = {c: i for i, c in enumerate(alphabet)}
    vocab.update({c + "</w>": i + len(alphabet) for i, c in enumerate(alphabet)})
    for m in merges:
        vocab.setdefault(m.replace(" ", ""), len(vocab))
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"),
                        model_max_length=recipe.max_length)
    tok.save_pretrained(str(folder))
    (folder / "vocab.json").write_text(json.dumps(vocab))   # save_pretrained may drop these two
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return CLIPTokenizer.from_pretrained(str(folder))


# ---------------------------------------------------------------- models

def clip_config(tokenizer, recipe: Recipe):
    from transformers import CLIPConfig

    text = dict(vocab_size=len(tokenizer), hidden_size=recipe.text_hidden, intermediate_size=4 * recipe.text_hidden,
                num_hidden_layers=recipe.text_layers, num_attention_heads=4, max_position_embeddings=recipe.max_length,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id)
    vision = dict(hidden_size=recipe.vision_hidden, intermediate_size=4 * recipe.vision_hidden,
                  num_hidden_layers=recipe.vision_layers, num_attention_heads=4, image_size=world.SIZE,
                  patch_size=4)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=64)


def clip_pixels(images: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] to CLIP's normalised pixel values (what CLIPImageProcessor does at 32 px)."""
    images = (images * 255).round() / 255   # the processor sees uint8 images
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (images - mean) / std


def new_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32),
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         layers_per_block=1, norm_num_groups=8, sample_size=world.SIZE,
                         mid_block_add_attention=False)


def new_unet(recipe: Recipe):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=world.SIZE // 2, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=tuple(recipe.unet_channels),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=recipe.text_hidden, attention_head_dim=4, norm_num_groups=16)


def new_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon")


# ---------------------------------------------------------------- stages

def train_clip(images, items, tokenizer, recipe: Recipe, progress=True, model=None, object_focus: bool = False):
    """Contrastive training with soft targets (every text that describes an image is a positive). With
    ``model``, continue it for ``clip_object_steps`` on texts that name the object 70 % of the time."""
    from transformers import CLIPModel

    stage = 2 if model is not None else 1
    torch.manual_seed(recipe.seed + (1 if stage == 1 else 11))
    rng = random.Random(recipe.seed + (1 if stage == 1 else 11))
    model = model if model is not None else CLIPModel(clip_config(tokenizer, recipe))
    model.train()
    steps, lr = (recipe.clip_object_steps, recipe.clip_object_lr) if stage == 2 else (recipe.clip_steps, recipe.clip_lr)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    sched = _schedule(opt, steps, steps // 10)
    bar = _bar(steps, "CLIP" if stage == 1 else "CLIP (objects)", progress)
    for _ in range(steps):
        idx = [rng.randrange(len(items)) for _ in range(recipe.clip_batch)]
        batch = [items[i] for i in idx]
        texts, constraints = zip(*(world.clip_text(it, rng, object_focus=stage == 2 and rng.random() < 0.7)
                                   for it in batch))
        match = world.text_matches(constraints, batch).float()
        ids = tokenizer(list(texts), padding="max_length", max_length=recipe.max_length, truncation=True,
                        return_tensors="pt")
        out = model(input_ids=ids.input_ids, attention_mask=ids.attention_mask,
                    pixel_values=clip_pixels(images[idx]))
        logits = out.logits_per_text                       # (texts, images)
        loss = -(F.log_softmax(logits, 1) * match / match.sum(1, keepdim=True)).sum(1).mean() \
            - (F.log_softmax(logits.T, 1) * match.T / match.T.sum(1, keepdim=True)).sum(1).mean()
        opt.zero_grad()
        (loss / 2).backward()
        opt.step()
        sched.step()
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item() / 2:.3f}")
    bar.close()
    return model.eval()


def train_vae(images, recipe: Recipe, progress=True):
    torch.manual_seed(recipe.seed + 2)
    gen = torch.Generator().manual_seed(recipe.seed + 2)
    vae = new_vae()
    opt = torch.optim.AdamW(vae.parameters(), lr=recipe.vae_lr)
    sched = _schedule(opt, recipe.vae_steps, recipe.vae_steps // 20)
    bar = _bar(recipe.vae_steps, "VAE", progress)
    for _ in range(recipe.vae_steps):
        x = images[torch.randint(len(images), (recipe.vae_batch,), generator=gen)] * 2 - 1
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample(generator=gen)).sample
        loss = (rec - x).abs().mean() + F.mse_loss(rec, x) + recipe.vae_kl_weight * post.kl().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
    bar.close()
    vae.eval()
    with torch.no_grad():
        z = torch.cat([vae.encode(images[i:i + 512] * 2 - 1).latent_dist.mean for i in range(0, len(images), 512)])
    vae.register_to_config(scaling_factor=float(1 / z.std()))
    return vae, z * vae.config.scaling_factor


def save_stage(ckpt: Path, step: int, gen, rng, **stateful):
    """A stage's checkpoint: every object's state_dict by its name, the generator, the random state, the step."""
    _atomic_save({**{k: v.state_dict() for k, v in stateful.items()}, "gen": gen.get_state(),
                  "rng": rng.getstate(), "step": step}, ckpt)


def resume_stage(ckpt: Path, gen, rng, **stateful) -> int:
    """Restore what :func:`save_stage` wrote into the same objects; the step to continue from (0 without one)."""
    if not ckpt.is_file():
        return 0
    state = torch.load(ckpt, weights_only=False)
    for key, obj in stateful.items():
        obj.load_state_dict(state[key])
    gen.set_state(state["gen"])
    rng.setstate(state["rng"])
    return state["step"]


def _ema_update(ema, model, decay):
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters()):
            e.lerp_(p, 1 - decay)


def train_unet(latents, items, tokenizer, clip, recipe: Recipe, ckpt: Path, progress=True, *, phase: int = 1,
               start: Path | None = None):
    """UNet + text encoder on the latents; resumes from ``ckpt`` (written every checkpoint_every steps).

    Phase 1 starts from scratch (the text encoder from the CLIP's text tower). Phase 2 continues phase
    1's weights and EMA (``start``: its checkpoint) with a fresh optimiser at ``unet2_lr`` and draws a
    share ``unet2_high_t_share`` of the timesteps from [``high_t_from``, T): the noisy steps where the
    layout, and so the object's shape, is decided (styles and colours are learned first)."""
    from diffusers import DDPMScheduler
    from transformers import CLIPTextModel

    torch.manual_seed(recipe.seed + 3)
    unet = new_unet(recipe)
    text = CLIPTextModel(clip.config.text_config)
    text.load_state_dict(clip.text_model.state_dict())
    models = torch.nn.ModuleList([unet, text])
    ema = copy.deepcopy(models).requires_grad_(False)
    if phase == 2:
        state = torch.load(start, weights_only=False)
        models.load_state_dict(state["models"])
        ema.load_state_dict(state["ema"])
    total, lr, warmup = ((recipe.unet_steps, recipe.unet_lr, recipe.unet_warmup) if phase == 1 else
                         (recipe.unet2_steps, recipe.unet2_lr, recipe.unet2_warmup))
    opt = torch.optim.AdamW(models.parameters(), lr=lr, weight_decay=0.0)
    sched = _schedule(opt, total, warmup)
    noise = DDPMScheduler.from_config(new_scheduler().config)
    T = noise.config.num_train_timesteps
    gen = torch.Generator().manual_seed(recipe.seed + (3 if phase == 1 else 13))
    rng = random.Random(recipe.seed + (3 if phase == 1 else 13))
    step = resume_stage(ckpt, gen, rng, models=models, ema=ema, opt=opt, sched=sched)
    bar = _bar(total, f"UNet (phase {phase})", progress)
    bar.update(step)
    while step < total:
        idx = torch.randint(len(latents), (recipe.unet_batch,), generator=gen)
        prompts = ["" if rng.random() < recipe.caption_dropout else world.caption(items[i], rng) for i in idx.tolist()]
        ids = tokenizer(prompts, padding="max_length", max_length=recipe.max_length, truncation=True,
                        return_tensors="pt").input_ids
        x0 = latents[idx]
        eps = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, T, (len(idx),), generator=gen)
        if phase == 2:
            high = torch.rand(len(idx), generator=gen) < recipe.unet2_high_t_share
            t = torch.where(high, torch.randint(recipe.high_t_from, T, (len(idx),), generator=gen), t)
        pred = unet(noise.add_noise(x0, eps, t), t, encoder_hidden_states=text(ids)[0]).sample
        loss = F.mse_loss(pred, eps)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(models.parameters(), 1.0)
        opt.step()
        sched.step()
        _ema_update(ema, models, min(recipe.ema_decay, (1 + step) / (10 + step)) if phase == 1 else recipe.ema_decay)
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if step % recipe.checkpoint_every == 0 or step == total:
            save_stage(ckpt, step, gen, rng, models=models, ema=ema, opt=opt, sched=sched)
    bar.close()
    return ema[0].eval(), ema[1].eval()


def workspace(folder, recipe) -> tuple:
    """(folder/build, its timings dict, timed(name, fn)) for a resumable build: the recipe is saved there, and
    a build folder holding another recipe is refused; ``timed`` runs a stage and adds its seconds to
    timings.json."""
    work = Path(folder) / "build"
    work.mkdir(parents=True, exist_ok=True)
    saved = work / "recipe.json"
    if saved.is_file() and json.loads(saved.read_text()) != json.loads(json.dumps(asdict(recipe))):
        raise FileExistsError(f"{work} holds a build with another recipe: remove it or choose another folder")
    saved.write_text(json.dumps(asdict(recipe), indent=1))
    timings = json.loads((work / "timings.json").read_text()) if (work / "timings.json").is_file() else {}

    def timed(name, fn):
        t0 = time.time()
        out = fn()
        timings[name] = round(timings.get(name, 0) + time.time() - t0, 1)
        (work / "timings.json").write_text(json.dumps(timings, indent=1))
        return out
    return work, timings, timed


def build(folder, recipe: Recipe | None = None, progress: bool = True, log=print) -> dict:
    """Run every stage into ``folder`` (resuming finished stages); writes ``folder/pipeline`` and
    ``folder/clip`` at the end, and ``folder/build/recipe.json`` + ``timings.json``."""
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    recipe = recipe or Recipe()
    work, timings, timed = workspace(folder, recipe)

    torch.manual_seed(recipe.seed)
    items = world.sample_items(recipe.n_images, seed=recipe.seed)
    images = timed("render", lambda: world.render(items, seed=recipe.seed))
    if not (work / "tokenizer").is_dir():
        timed("tokenizer", lambda: _atomic_dir(work / "tokenizer", lambda d: build_tokenizer(d, recipe)))
    tokenizer = CLIPTokenizer.from_pretrained(str(work / "tokenizer"))
    if not (work / "clip").is_dir():
        clip = timed("clip", lambda: train_clip(images, items, tokenizer, recipe, progress))
        _atomic_dir(work / "clip", lambda d: clip.save_pretrained(str(d)))
    clip = CLIPModel.from_pretrained(str(work / "clip")).eval()
    if not (work / "vae").is_dir():
        vae, latents = timed("vae", lambda: train_vae(images, recipe, progress))
        _atomic_dir(work / "vae", lambda d: vae.save_pretrained(str(d)))
        _atomic_save(latents, work / "latents.pt")
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(str(work / "vae")).eval()
    latents = torch.load(work / "latents.pt")
    log(f"VAE latents {tuple(latents.shape[1:])}, scaling_factor {vae.config.scaling_factor:.4f}")
    unet, text = timed("unet", lambda: train_unet(latents, items, tokenizer, clip, recipe,
                                                  work / "unet.ckpt", progress))
    if recipe.unet2_steps:
        unet, text = timed("unet_phase2", lambda: train_unet(latents, items, tokenizer, clip, recipe,
                                                             work / "unet2.ckpt", progress, phase=2,
                                                             start=work / "unet.ckpt"))
    if not (work / "clip_objects").is_dir():    # the CLIP continues, after the text encoder took its start
        clip2 = timed("clip_objects", lambda: train_clip(images, items, tokenizer, recipe, progress, model=clip))
        _atomic_dir(work / "clip_objects", lambda d: clip2.save_pretrained(str(d)))
    clip = CLIPModel.from_pretrained(str(work / "clip_objects")).eval()
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet,
                                   scheduler=new_scheduler(), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)

    def write_pipeline(d):
        pipe.save_pretrained(str(d))
        for name in ("vocab.json", "merges.txt"):
            shutil.copy(work / "tokenizer" / name, d / "tokenizer" / name)

    def write_clip(d):
        clip.save_pretrained(str(d))
        proc = CLIPProcessor(image_processor=CLIPImageProcessor(
            size={"shortest_edge": world.SIZE}, crop_size={"height": world.SIZE, "width": world.SIZE}),
            tokenizer=tokenizer)
        proc.save_pretrained(str(d))
        for name in ("vocab.json", "merges.txt"):
            shutil.copy(work / "tokenizer" / name, d / name)

    _atomic_dir(folder / "pipeline", write_pipeline)
    _atomic_dir(folder / "clip", write_clip)
    return {"recipe": asdict(recipe), "seconds": timings}
