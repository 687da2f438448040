"""Evaluation as in the paper [Novello 2026] and its code (``evaluate.py``): CLIP score, CLIP accuracy and KID.

* **CLIP score (CS)** of an image for a concept: 2.5 · max(cos(image, "A photo depicts " + text), 0);
  for styles the text is "{artist} style" (and "painting" for the superclass).
* **CLIP accuracy (CA)** of a concept's images: the share with CS(concept) > CS(anchor text), the anchor
  text being the superclass ("painting"). Lower is better for the erased concept, higher for the
  retained ones (the hard negatives: other artists).
* **KID** between the unlearned model's images and the base model's for the same prompts and seeds, in
  CLIP's image features (torchmetrics' implementation; Inception weights need a download, CLIP's are
  already here). Lower is better.

The CLIP model is a parameter (hub id or folder; the paper uses OpenAI's ViT-B/32).
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn


def load_clip(model: str, device: str = "cpu"):
    """(CLIPModel, CLIPProcessor) from a hub id or folder; a clear error offline."""
    from transformers import CLIPModel, CLIPProcessor

    try:
        clip = CLIPModel.from_pretrained(model).to(device).eval()
        processor = CLIPProcessor.from_pretrained(model)
    except OSError as err:
        from .pipeline import ModelNotAvailableError

        raise ModelNotAvailableError(
            f"cannot load the CLIP model {model!r} (not a local folder, not in the hub cache). Pass "
            "--clip-model with a folder, or use the tiny one that `python -m fdu tiny-pipeline DIR` "
            f"writes to DIR/clip for a CPU check. ({str(err)[:200]})") from err
    return clip, processor


class ClipImageFeatures(nn.Module):
    """CLIP's normalised image embeddings of uint8 images (B, 3, H, W), for torchmetrics' KID."""

    def __init__(self, clip, processor):
        super().__init__()
        self.clip, self.processor = clip, processor

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pixels = self.processor(images=list(images), return_tensors="pt")["pixel_values"]
        emb = self.clip.get_image_features(pixel_values=pixels.to(self.clip.device))
        emb = getattr(emb, "pooler_output", emb)
        return torch.nn.functional.normalize(emb.float(), dim=-1)


@torch.no_grad()
def clip_scores(clip, processor, images, texts: Sequence[str]) -> torch.Tensor:
    """(images, texts) matrix of 2.5 · max(cos, 0) with "A photo depicts " before each text."""
    inputs = processor(text=[f"A photo depicts {t}" for t in texts], images=list(images),
                       return_tensors="pt", padding=True, truncation=True)
    inputs = {k: v.to(clip.device) for k, v in inputs.items()}
    out = clip(**inputs)
    img = torch.nn.functional.normalize(out.image_embeds.float(), dim=-1)
    txt = torch.nn.functional.normalize(out.text_embeds.float(), dim=-1)
    return 2.5 * (img @ txt.T).clamp_min(0)


def concept_text(concept: str, concept_type: str) -> str:
    return f"{concept} style" if concept_type == "style" else concept


@torch.no_grad()
def generate(pipe, prompts: Sequence[str], *, steps: int = 30, guidance: float = 7.5, seed: int = 0,
             size: int | None = None, batch_size: int = 16) -> list:
    """One image per prompt, each from its own generator seeded ``seed`` (as the official evaluation,
    which re-seeds for every prompt); ``batch_size`` prompts go through the pipeline at once."""
    images = []
    prompts = list(prompts)
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i:i + batch_size]
        gens = [torch.Generator(device="cpu").manual_seed(seed) for _ in chunk]
        images += pipe(chunk, num_inference_steps=steps, guidance_scale=guidance, generator=gens,
                       height=size, width=size).images
    return images


def _uint8(images) -> torch.Tensor:
    import numpy as np

    return torch.from_numpy(np.stack([np.asarray(im.convert("RGB")) for im in images])).permute(0, 3, 1, 2)


def check_evaluation(*, steps: int, guidance: float, size: int | None, kid_subset: int = 50):
    """ValueError for evaluation settings that cannot work, before any image is drawn."""
    if int(steps) < 1:
        raise ValueError(f"steps (sampler steps per image) must be >= 1, got {steps}")
    if not (math.isfinite(guidance) and guidance >= 0):
        raise ValueError(f"guidance must be a finite number >= 0 (1: no classifier-free guidance), got {guidance}")
    if size is not None and (size < 8 or size % 8):
        raise ValueError(f"size must be a positive multiple of 8 (the VAE halves it three times), got {size}")
    if int(kid_subset) < 2:
        raise ValueError(f"kid_subset must be >= 2, got {kid_subset}")


def evaluate(base_pipe, unlearned_pipe, concept: str, *, clip_model: str, retained: Sequence[str] | None = None,
             prompts: dict | None = None, concept_type: str = "style", superclass: str = "painting",
             steps: int = 30, guidance: float = 7.5, seed: int = 0, size: int | None = None,
             kid_subset: int = 50, progress: bool = True, cache: dict | None = None) -> dict:
    """CS, CA (erased concept and each retained one) for both models, and KID of the unlearned model's
    images against the base model's. ``prompts``: concept -> prompt list (default: the shipped files).
    ``cache``: a dict kept between calls with the same base model, so its images are drawn once."""
    from torchmetrics.image.kid import KernelInceptionDistance
    from tqdm.auto import tqdm

    from .prompts import eval_concepts, eval_prompts

    check_evaluation(steps=steps, guidance=guidance, size=size, kid_subset=kid_subset)
    if retained is None:
        retained = eval_concepts().get(concept, {}).get("retained", [])
    concepts = [concept] + [c for c in retained if c != concept]
    prompts = prompts or {c: eval_prompts(c) for c in concepts}
    for c in concepts:
        if not prompts.get(c):
            raise ValueError(f"no evaluation prompts for {c!r}")
    clip, processor = load_clip(clip_model, str(base_pipe.device))
    anchor = superclass
    rows = {"base": {}, "unlearned": {}}
    images = {"base": {}, "unlearned": {}}
    bar = tqdm(total=2 * len(concepts), disable=not progress, desc="evaluate", leave=False)
    for name, pipe in (("base", base_pipe), ("unlearned", unlearned_pipe)):
        for c in concepts:
            key = (tuple(prompts[c]), steps, guidance, seed, size)
            if name == "base" and cache is not None and key in cache:
                ims = cache[key]
            else:
                ims = generate(pipe, prompts[c], steps=steps, guidance=guidance, seed=seed, size=size)
            if name == "base" and cache is not None:
                cache[key] = ims
            images[name][c] = ims
            s = clip_scores(clip, processor, ims, [concept_text(c, concept_type), anchor])
            rows[name][c] = {"clip_score": float(s[:, 0].mean()),
                             "clip_accuracy": float((s[:, 0] > s[:, 1]).float().mean()), "images": len(ims)}
            bar.update(1)
    bar.close()
    feats = ClipImageFeatures(clip, processor)
    kid = {}
    for c in concepts:
        real, fake = _uint8(images["base"][c]), _uint8(images["unlearned"][c])
        size_ = min(kid_subset, len(real))
        if size_ < 2:
            continue
        metric = KernelInceptionDistance(feature=feats, subset_size=size_, subsets=20)
        torch.manual_seed(seed)
        metric.update(real, real=True)
        metric.update(fake, real=False)
        mean, std = metric.compute()
        kid[c] = {"mean": float(mean), "std": float(std)}
    table = {}
    for name in ("base", "unlearned"):
        r = rows[name]
        kept = [r[c] for c in concepts[1:]]
        table[name] = {"erased_clip_score": r[concept]["clip_score"],
                       "erased_clip_accuracy": r[concept]["clip_accuracy"],
                       "retained_clip_score": sum(k["clip_score"] for k in kept) / len(kept) if kept else None,
                       "retained_clip_accuracy": sum(k["clip_accuracy"] for k in kept) / len(kept) if kept else None}
    kept_kid = [kid[c]["mean"] for c in concepts[1:] if c in kid]
    table["unlearned"]["kid_retained"] = sum(kept_kid) / len(kept_kid) if kept_kid else None
    return {"concept": concept, "retained": list(concepts[1:]), "clip_model": clip_model,
            "settings": {"steps": steps, "guidance": guidance, "seed": seed, "size": size},
            "per_concept": rows, "kid": kid, "table": table}


def table_markdown(report: dict) -> str:
    """The paper-style table (one row per model) of one evaluation report."""
    def f(x):
        return "–" if x is None else f"{x:.3f}"

    t = []
    t.append("| model | erased CS ↓ | erased CA ↓ | retained CS ↑ | retained CA ↑ | KID (retained) ↓ |")
    t.append("|---|---|---|---|---|---|")
    for name in ("base", "unlearned"):
        r = report["table"][name]
        t.append(f"| {name} | {f(r['erased_clip_score'])} | {f(r['erased_clip_accuracy'])} | "
                 f"{f(r['retained_clip_score'])} | {f(r['retained_clip_accuracy'])} | {f(r.get('kid_retained'))} |")
    return "\n".join(t)


def save_report(report: dict, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1))
    path.with_suffix(".md").write_text(table_markdown(report) + "\n")
    return path
