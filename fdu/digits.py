"""Small images that ship with scikit-learn (8x8 handwritten digits), prompted with text.

The Stable Diffusion analogue at a scale a CPU trains in seconds:

* prompts ("a handwritten three", "the digit 3", ...) are tokenised word by word and encoded by a
  small :class:`TextEncoder` into a sequence of token embeddings;
* the :class:`Denoiser` reads them through cross-attention blocks whose key and value projections
  (``attn2.to_k``, ``attn2.to_v``, as in diffusers' UNets) are what unlearning trains by default;
* the empty prompt "" and the superclass prompt "a handwritten digit" are concepts too
  (classifier-free training with prompt dropout; sampling uses classifier-free guidance);
* a :class:`Judge` classifier trained on the real digits plays CLIP's role (accuracy of the erased and
  retained prompts) and gives the features for a KID (torchmetrics' implementation).

Trained models are cached on disk keyed by their parameters (``FDU_CACHE_DIR``, default
``$XDG_CACHE_HOME/fdu``, i.e. ``~/.cache/fdu``: outside the checkout), so notebooks and tests share them.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TEMPLATES = ["a handwritten {w}", "the digit {d}", "a picture of the number {w}", "{w}"]
HELD_OUT_TEMPLATES = ["an image of a {w}", "number {d} written by hand"]
SUPERCLASS = "a handwritten digit"
EMPTY = ""
#: visually close digits, the "near" anchors
NEAR = {0: 6, 1: 7, 2: 3, 3: 8, 4: 9, 5: 6, 6: 5, 7: 1, 8: 3, 9: 4}


def prompts_for(digit: int, templates: Sequence[str] = TEMPLATES) -> list:
    if not 0 <= int(digit) <= 9:
        raise ValueError(f"digit must be in 0..9, got {digit}")
    return [t.format(w=WORDS[digit], d=digit) for t in templates]


def anchor_prompts(kind: str, target: int, templates: Sequence[str] = TEMPLATES) -> list:
    """The anchor prompts aligned with the target's: "near" (the same templates with the near
    digit), "superclass" or "empty"."""
    if kind == "near":
        return prompts_for(NEAR[int(target)], templates)
    if kind == "superclass":
        return [SUPERCLASS] * len(templates)
    if kind == "empty":
        return [EMPTY] * len(templates)
    raise ValueError(f"anchor kind must be 'near', 'superclass' or 'empty', got {kind!r}")


# --- data -------------------------------------------------------------------------------------------

def load(seed: int = 0):
    """(x_train, y_train, x_test, y_test): images in [-1, 1], shape (N, 1, 8, 8); a stratified 80/20
    split of scikit-learn's bundled digits (no download)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32)[:, None] / 8.0 - 1.0
    y = torch.tensor(data.target, dtype=torch.long)
    i_train, i_test = train_test_split(torch.arange(len(y)).numpy(), test_size=0.2,
                                       random_state=seed, stratify=y.numpy())
    return x[i_train], y[i_train], x[i_test], y[i_test]


# --- text ---------------------------------------------------------------------------------------------

class Tokenizer:
    """Word-level: a start token, then one id per word; unknown words map to <unk>."""

    PAD, BOS, UNK = 0, 1, 2

    def __init__(self, max_len: int = 8):
        words = set()
        for d in range(10):
            for p in prompts_for(d, TEMPLATES + HELD_OUT_TEMPLATES):
                words.update(p.split())
        words.update(SUPERCLASS.split())
        self.vocab = {w: i + 3 for i, w in enumerate(sorted(words))}
        self.max_len = max_len

    def __len__(self):
        return len(self.vocab) + 3

    def __call__(self, prompts: Sequence[str]) -> torch.Tensor:
        ids = torch.full((len(prompts), self.max_len), self.PAD, dtype=torch.long)
        for i, p in enumerate(prompts):
            toks = [self.BOS] + [self.vocab.get(w, self.UNK) for w in p.lower().split()]
            toks = toks[: self.max_len]
            ids[i, : len(toks)] = torch.tensor(toks)
        return ids


class TextEncoder(nn.Module):
    """Token ids (B, L) -> token embeddings (B, L, dim) and a mask of real tokens."""

    def __init__(self, vocab_size: int, dim: int = 32, max_len: int = 8):
        super().__init__()
        self.token = nn.Embedding(vocab_size, dim)
        self.position = nn.Parameter(torch.zeros(max_len, dim))
        self.mix = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, ids: torch.Tensor):
        h = self.token(ids) + self.position[: ids.shape[1]]
        mask = ids != Tokenizer.PAD
        context = h.masked_fill(~mask[..., None], 0).sum(1) / mask.sum(1, keepdim=True)
        return h + self.mix(h + context[:, None]), mask


# --- the denoiser --------------------------------------------------------------------------------------

class CrossAttention(nn.Module):
    """Queries from the image features, keys and values from the prompt's tokens."""

    def __init__(self, hidden: int, text_dim: int, tokens: int = 4):
        super().__init__()
        self.tokens, self.width = tokens, hidden // tokens
        self.to_q = nn.Linear(self.width, self.width, bias=False)
        self.to_k = nn.Linear(text_dim, self.width, bias=False)
        self.to_v = nn.Linear(text_dim, self.width, bias=False)
        self.to_out = nn.Linear(hidden, hidden)
        self.query = nn.Parameter(torch.randn(tokens, self.width) / math.sqrt(self.width))

    def forward(self, h, text, mask):
        q = self.query + self.to_q(h.view(h.shape[0], self.tokens, self.width))
        att = q @ self.to_k(text).transpose(1, 2) / math.sqrt(self.width)
        att = att.masked_fill(~mask[:, None, :], float("-inf")).softmax(-1)
        return self.to_out((att @ self.to_v(text)).flatten(1))


class Block(nn.Module):
    def __init__(self, hidden: int, text_dim: int):
        super().__init__()
        self.ff = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, hidden), nn.SiLU(),
                                nn.Linear(hidden, hidden))
        self.norm = nn.LayerNorm(hidden)
        self.attn2 = CrossAttention(hidden, text_dim)

    def forward(self, h, text, mask):
        h = h + self.ff(h)
        return h + self.attn2(self.norm(h), text, mask)


class Denoiser(nn.Module):
    """eps_theta(x_t, t, prompt tokens) for 8x8 images: an MLP with cross-attention blocks."""

    def __init__(self, text_dim: int = 32, hidden: int = 256, depth: int = 3, emb: int = 64):
        super().__init__()
        self.emb = emb
        self.input = nn.Linear(64 + emb, hidden)
        self.blocks = nn.ModuleList([Block(hidden, text_dim) for _ in range(depth)])
        self.output = nn.Sequential(nn.LayerNorm(hidden), nn.SiLU(), nn.Linear(hidden, 64))

    def forward(self, x, t, text, mask):
        from .layers import timestep_embedding

        h = self.input(torch.cat([x.flatten(1), timestep_embedding(t, self.emb)], dim=1))
        for block in self.blocks:
            h = block(h, text, mask)
        return self.output(h).view_as(x)


class Model(nn.Module):
    """Tokenizer + text encoder + denoiser: ``model(x_t, t, prompts)``."""

    def __init__(self, text_dim: int = 32, hidden: int = 256, depth: int = 3):
        super().__init__()
        self.tokenizer = Tokenizer()
        self.text_encoder = TextEncoder(len(self.tokenizer), text_dim)
        self.unet = Denoiser(text_dim, hidden, depth)

    def encode(self, prompts):
        """Token embeddings and mask for a list of prompts (or already tokenised ids). A list is
        encoded once per distinct prompt and indexed (batches repeat a few prompts)."""
        if isinstance(prompts, torch.Tensor):
            return self.text_encoder(prompts)
        position = {p: i for i, p in enumerate(dict.fromkeys(prompts))}
        text, mask = self.text_encoder(self.tokenizer(list(position)))
        index = torch.tensor([position[p] for p in prompts], dtype=torch.long)
        return text[index], mask[index]

    def forward(self, x, t, prompts):
        text, mask = self.encode(prompts)
        return self.unet(x, t, text, mask)

    def kv_parameters(self) -> list:
        """The cross-attention key/value projections: what unlearning trains by default."""
        from .layers import is_cross_attention_kv

        return [p for name, p in self.named_parameters() if is_cross_attention_kv(name)]


def make_scheduler(num_train_timesteps: int = 100, prediction_type: str = "v_prediction"):
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule="squaredcos_cap_v2",
                         clip_sample=False, prediction_type=prediction_type)


# --- cache ---------------------------------------------------------------------------------------------

def cache_dir() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fdu"
    folder = Path(os.environ.get("FDU_CACHE_DIR") or default)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _cached(kind: str, params: dict, module: nn.Module, build, enabled: bool = True) -> nn.Module:
    """Load ``module``'s weights from the cache keyed by (kind, params), or build and store them
    (``enabled=False``: always build, store nothing)."""
    from safetensors.torch import load_file, save_file

    if not enabled:
        build(module)
        return module

    key = hashlib.sha256(json.dumps({"kind": kind, **params}, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir() / f"{kind}-{key}.safetensors"
    if path.exists():
        module.load_state_dict(load_file(str(path)))
        return module
    build(module)
    state = {k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}
    tmp = path.with_suffix(f".{os.getpid()}.tmp")   # processes training the same model never share a file
    save_file(state, str(tmp), metadata={"params": json.dumps(params)})
    tmp.replace(path)
    return module


# --- training -----------------------------------------------------------------------------------------

def train_model(*, steps: int = 2000, batch_size: int = 256, lr: float = 2e-3, p_superclass: float = 0.1,
                p_empty: float = 0.1, hidden: int = 256, depth: int = 3, seed: int = 0,
                cache: bool = True, progress: bool = True):
    """The text-conditioned denoiser, trained on the training split (cached). Returns (model, scheduler)."""
    params = dict(steps=steps, batch_size=batch_size, lr=lr, p_superclass=p_superclass, p_empty=p_empty,
                  hidden=hidden, depth=depth, seed=seed, version=3)
    scheduler = make_scheduler()
    torch.manual_seed(seed)
    model = Model(hidden=hidden, depth=depth)

    def build(m):
        from tqdm.auto import tqdm

        x, y, _, _ = load()
        gen = torch.Generator().manual_seed(seed)
        opt = torch.optim.Adam(m.parameters(), lr=lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        tok = m.tokenizer
        table = torch.stack([tok(prompts_for(d)) for d in range(10)])        # (10, templates, L)
        special = tok([SUPERCLASS, EMPTY])
        for _ in tqdm(range(steps), disable=not progress, desc="train digits denoiser", leave=False):
            i = torch.randint(len(x), (batch_size,), generator=gen)
            k = torch.randint(len(TEMPLATES), (batch_size,), generator=gen)
            u = torch.rand(batch_size, generator=gen)
            prompts = table[y[i], k]
            prompts = torch.where((u < p_superclass)[:, None], special[0], prompts)
            prompts = torch.where((u > 1 - p_empty)[:, None], special[1], prompts)
            noise = torch.randn(batch_size, 1, 8, 8, generator=gen)
            t = torch.randint(0, scheduler.config.num_train_timesteps, (batch_size,), generator=gen)
            target = (scheduler.get_velocity(x[i], noise, t)
                      if scheduler.config.prediction_type == "v_prediction" else noise)
            loss = F.mse_loss(m(scheduler.add_noise(x[i], noise, t), t, prompts), target)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()

    _cached("digits-model", params, model, build, enabled=cache)
    return model.eval(), scheduler


@torch.no_grad()
def sample(model: Model, scheduler, prompts: Sequence[str], n: int, *, guidance: float = 2.0,
           inference_steps: int = 50, seed: int = 0) -> torch.Tensor:
    """n images for the prompts (cycled), DDIM with classifier-free guidance; values in [-1, 1]."""
    from diffusers import DDIMScheduler

    if not prompts:
        raise ValueError("prompts must be a non-empty list of strings")
    sch = DDIMScheduler.from_config(scheduler.config)
    sch.set_timesteps(inference_steps)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=gen)
    cond = [prompts[i % len(prompts)] for i in range(n)]
    text, mask = model.encode(cond + [EMPTY] * n)
    for t in sch.timesteps:
        eps = model.unet(torch.cat([x, x]), t.expand(2 * n), text, mask)
        eps_c, eps_u = eps[:n], eps[n:]
        x = sch.step(eps_u + guidance * (eps_c - eps_u), t, x).prev_sample
    return x.clamp(-1, 1)


# --- the judge ----------------------------------------------------------------------------------------

class Judge(nn.Module):
    """A small CNN digit classifier; ``features`` (128-d) feed the KID."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1),
                                  nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64 * 16, 128), nn.ReLU())
        self.head = nn.Linear(128, 10)

    def features(self, x):
        return self.body(x)

    def forward(self, x):
        return self.head(self.body(x))

    @torch.no_grad()
    def predict(self, x) -> torch.Tensor:
        return self(x).argmax(1)


class JudgeFeatures(nn.Module):
    """The judge's features as a module, for torchmetrics' KID (``feature=``), divided by ``scale``."""

    def __init__(self, judge: Judge, scale: float = 1.0):
        super().__init__()
        self.judge, self.scale = judge, float(scale)

    def forward(self, x):
        return self.judge.features(x.float()) / self.scale


def train_judge(*, epochs: int = 30, seed: int = 0, cache: bool = True, progress: bool = True):
    """The judge, trained on the training split (cached). Returns (judge, test accuracy)."""
    params = dict(epochs=epochs, seed=seed, version=1)
    torch.manual_seed(seed)
    judge = Judge()
    x, y, x_test, y_test = load()

    def build(m):
        from tqdm.auto import tqdm

        gen = torch.Generator().manual_seed(seed)
        opt = torch.optim.Adam(m.parameters(), lr=2e-3)
        for _ in tqdm(range(epochs), disable=not progress, desc="train judge", leave=False):
            for idx in torch.randperm(len(x), generator=gen).split(64):
                shift = torch.randint(-1, 2, (2,), generator=gen)  # +-1 pixel: a little augmentation
                xb = torch.roll(x[idx], shifts=(int(shift[0]), int(shift[1])), dims=(2, 3))
                loss = F.cross_entropy(m(xb), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()

    _cached("digits-judge", params, judge, build, enabled=cache)
    judge.eval()
    accuracy = float((judge.predict(x_test) == y_test).float().mean())
    return judge, accuracy


def kid(judge: Judge, real: torch.Tensor, fake: torch.Tensor, *, subset_size: int = 100,
        subsets: int = 50, seed: int = 0) -> dict:
    """Kernel inception distance in the judge's feature space (torchmetrics), mean and std over
    random subsets (seeded). The features are divided by their root-mean-square size on ``real``
    (per coordinate), so the polynomial kernel (x.y/d + 1)^3 sees inputs of order one, as with
    Inception features; without it the judge's large ReLU features make the estimate very noisy."""
    from torchmetrics.image.kid import KernelInceptionDistance

    size = min(subset_size, len(real), len(fake))
    with torch.no_grad():
        scale = float(judge.features(real.float()).pow(2).mean().sqrt().clamp_min(1e-8))
    metric = KernelInceptionDistance(feature=JudgeFeatures(judge, scale), subsets=subsets, subset_size=size)
    state = torch.get_rng_state()
    torch.manual_seed(seed)
    try:
        metric.update(real, real=True)
        metric.update(fake, real=False)
        mean, std = metric.compute()
    finally:
        torch.set_rng_state(state)
    return {"mean": float(mean), "std": float(std)}


# --- unlearning ---------------------------------------------------------------------------------------

def unlearning_task(model: Model, scheduler, target: int, anchor: str = "near", *, anchor_pool: int = 1000,
                    guidance: float = 2.0, train: str = "kv", seed: int = 0, pool=None):
    """The digits as a :class:`fdu.unlearn.Task`: erase ``target`` (its training prompts) towards the
    ``anchor`` kind ("near", "superclass" or "empty"), with anchor x0 drawn from a pool of the original
    model's guided samples for the anchor prompts. ``train``: "kv" (cross-attention keys and values,
    default) or "all". Prompts are assigned to the batch cyclically, target and anchor aligned.
    ``pool``: anchor images to use instead of sampling ``anchor_pool`` new ones (a benchmark shares
    one pool between runs)."""
    from .unlearn import AnchorBatch, Task

    if train not in ("kv", "all"):
        raise ValueError(f"train must be 'kv' or 'all', got {train!r}")
    target_prompts = prompts_for(target)
    anchors = anchor_prompts(anchor, target)
    if pool is None:
        pool = sample(model, scheduler, anchors, anchor_pool, guidance=guidance, seed=seed + 1)
    for p in model.parameters():
        p.requires_grad_(train == "all")
    for p in model.kv_parameters():
        p.requires_grad_(True)

    def forward(m, x_t, t, prompts):
        return m(x_t, t, [prompts[i % len(prompts)] for i in range(x_t.shape[0])])

    def sample_anchor_x0(n, gen):
        return AnchorBatch(pool[torch.randint(len(pool), (n,), generator=gen)], target_prompts, anchors)

    return Task(model=model, forward=forward, sample_anchor_x0=sample_anchor_x0, scheduler=scheduler)


@torch.no_grad()
def accuracies(model: Model, scheduler, judge: Judge, target: int, *, anchor_digit=None, n: int = 100,
               guidance: float = 2.0, seed: int = 0, templates: Sequence[str] = TEMPLATES) -> dict:
    """Erased accuracy (target prompts classified as the target), erased-as-anchor rate, and the
    retained accuracy of every other digit (their prompts classified as themselves)."""
    x = sample(model, scheduler, prompts_for(target, templates), n, guidance=guidance, seed=seed)
    pred = judge.predict(x)
    out = {"erased_accuracy": float((pred == target).float().mean())}
    if anchor_digit is not None:
        out["erased_as_anchor"] = float((pred == anchor_digit).float().mean())
    retained = {}
    for d in range(10):
        if d != target:
            xs = sample(model, scheduler, prompts_for(d), n, guidance=guidance, seed=seed + 1 + d)
            retained[d] = float((judge.predict(xs) == d).float().mean())
    out["retained_per_digit"] = retained
    out["retained_accuracy"] = sum(retained.values()) / len(retained)
    return out
