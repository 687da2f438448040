"""The mini Stable Diffusion: a text-to-image model in Stable Diffusion's exact diffusers format and a
CLIP, trained by :mod:`fdu.sd.mini_train` on the procedural world of :mod:`fdu.sd.world`, shipped in
the package (``fdu/sd/data/mini``, fp16 safetensors, with a manifest of the recipe and checksums).

``python -m fdu mini-sd DIR`` (:func:`write`) writes, in seconds:

* ``DIR/pipeline`` — a ``StableDiffusionPipeline`` folder (fp32); it carries the world's anchor
  captions in ``DIR/pipeline/captions`` ("painting" for styles, "shape" for objects), which
  ``python -m fdu unlearn --model DIR/pipeline`` uses when no ``--captions`` is given;
* ``DIR/clip`` — a ``CLIPModel`` + ``CLIPProcessor`` folder for ``python -m fdu evaluate --clip-model``;
* ``DIR/eval`` — evaluation prompt files and a ``concepts.json`` in the format of ``fdu/sd/data/eval``
  (``python -m fdu evaluate --eval-prompts DIR/eval``).

``python -m fdu mini-sd DIR --train`` rebuilds all of it from scratch instead (:func:`train`).
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import torch

from . import world

SHIPPED = Path(__file__).resolve().parent / "data" / "mini"
MANIFEST = "manifest.json"


class CorruptedModelError(ValueError):
    """A shipped file is missing or does not match the checksum in the manifest."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _files(folder: Path) -> list:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def manifest(source: Path = SHIPPED) -> dict:
    path = Path(source) / MANIFEST
    if not path.is_file():
        raise CorruptedModelError(f"no {MANIFEST} in {source}: the shipped mini model is missing. Rebuild it "
                                  "with `python -m fdu mini-sd DIR --train` (or `make mini-sd`)")
    return json.loads(path.read_text())


def verify(source: Path = SHIPPED) -> dict:
    """Check every shipped file against the manifest's sha256; returns the manifest."""
    source = Path(source)
    info = manifest(source)
    for rel, digest in info["sha256"].items():
        path = source / rel
        if not path.is_file():
            raise CorruptedModelError(f"the shipped mini model lacks {path}; reinstall fdu or rebuild with "
                                      "`python -m fdu mini-sd DIR --train`")
        if _sha256(path) != digest:
            raise CorruptedModelError(f"{path} is corrupted (its sha256 differs from {source / MANIFEST}); "
                                      "restore it from git (`git checkout -- fdu/sd/data/mini`) or rebuild "
                                      "with `python -m fdu mini-sd DIR --train`")
    return info


def _prepare(folder) -> Path:
    if folder is None or not str(folder).strip():
        raise ValueError("mini-sd needs a folder to write to, e.g. `python -m fdu mini-sd runs/mini`")
    folder = Path(folder).expanduser()
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{folder} exists and is not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def write_prompt_files(folder: Path):
    """DIR/eval (prompt files + concepts.json) and DIR/pipeline/captions (anchor captions)."""
    from .mini_train import _atomic_dir

    def write_eval(d):
        concepts = world.eval_concepts()
        names = set(concepts) | {world.STYLE_SUPERCLASS} | {c for v in concepts.values() for c in v["retained"]}
        for c in sorted(names):
            (d / f"{c.replace(' ', '_')}.txt").write_text("\n".join(world.eval_prompts(c)) + "\n")
        (d / "concepts.json").write_text(json.dumps(concepts, indent=1))

    _atomic_dir(folder / "eval", write_eval)
    caps = folder / "pipeline" / "captions"
    caps.mkdir(parents=True, exist_ok=True)
    for sup in (world.STYLE_SUPERCLASS, world.OBJECT_SUPERCLASS):
        (caps / f"{sup}.txt").write_text("\n".join(world.caption_file(sup)) + "\n")
    (folder / "pipeline" / "world.json").write_text(json.dumps(
        {"styles": list(world.STYLES), "objects": list(world.SHAPES), "colours": list(world.COLOURS)}, indent=1))


def write_clip(folder: Path, source: Path = SHIPPED) -> Path:
    """The shipped mini CLIP (fp32) as ``folder/clip``: the judge of both mini models."""
    from transformers import CLIPModel, CLIPProcessor

    from .mini_train import _atomic_dir

    clip = CLIPModel.from_pretrained(str(Path(source) / "clip"), dtype=torch.float32)
    processor = CLIPProcessor.from_pretrained(str(Path(source) / "clip"))

    def write_to(d):
        clip.save_pretrained(str(d))
        processor.save_pretrained(str(d))
        for name in ("vocab.json", "merges.txt"):
            shutil.copy(Path(source) / "clip" / name, d / name)

    return _atomic_dir(Path(folder) / "clip", write_to)


def write(folder, source: Path = SHIPPED) -> Path:
    """Materialise the shipped mini model (fp32) into ``folder``: pipeline/, clip/, eval/."""
    from diffusers import StableDiffusionPipeline

    from .mini_train import _atomic_dir

    folder = _prepare(folder)
    source = Path(source)
    verify(source)
    pipe = StableDiffusionPipeline.from_pretrained(str(source / "pipeline"), dtype=torch.float32,
                                                   safety_checker=None, requires_safety_checker=False,
                                                   local_files_only=True)

    def write_pipeline(d):
        pipe.save_pretrained(str(d))
        for name in ("vocab.json", "merges.txt"):
            shutil.copy(source / "pipeline" / "tokenizer" / name, d / "tokenizer" / name)

    _atomic_dir(folder / "pipeline", write_pipeline)
    write_clip(folder, source)
    write_prompt_files(folder)
    (folder / "manifest.json").write_text(json.dumps(manifest(source), indent=1))
    return folder


def ship(build_folder, target: Path = SHIPPED, extra: dict | None = None) -> dict:
    """Copy a build's pipeline and CLIP into the package as fp16 safetensors, with a manifest."""
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPModel, CLIPProcessor

    from .mini_train import _atomic_dir

    build_folder = Path(build_folder)
    pipe = StableDiffusionPipeline.from_pretrained(str(build_folder / "pipeline"), safety_checker=None,
                                                   requires_safety_checker=False, local_files_only=True)
    clip = CLIPModel.from_pretrained(str(build_folder / "clip"))
    processor = CLIPProcessor.from_pretrained(str(build_folder / "clip"))

    def write_all(d):
        pipe.to(torch.float16).save_pretrained(str(d / "pipeline"))
        for name in ("vocab.json", "merges.txt"):
            shutil.copy(build_folder / "pipeline" / "tokenizer" / name, d / "pipeline" / "tokenizer" / name)
        clip.to(torch.float16).save_pretrained(str(d / "clip"))
        processor.save_pretrained(str(d / "clip"))
        for name in ("vocab.json", "merges.txt"):
            shutil.copy(build_folder / "clip" / name, d / "clip" / name)
        info = {"what": "the mini Stable Diffusion of fdu (python -m fdu mini-sd DIR --train rebuilds it)",
                **(extra or {}),
                "sha256": {str(p.relative_to(d)): _sha256(p) for p in _files(d)}}
        (d / MANIFEST).write_text(json.dumps(info, indent=1))

    _atomic_dir(Path(target), write_all)
    return manifest(target)


def measure_shipped(source: Path = SHIPPED, **quality_options) -> dict:
    """Materialise the shipped model, measure :func:`quality`, and record it in the manifest."""
    import tempfile

    from .evaluate import load_clip
    from .pipeline import load_pipeline

    with tempfile.TemporaryDirectory() as tmp:
        folder = write(tmp, source)
        pipe = load_pipeline(str(folder / "pipeline"))
        clip, processor = load_clip(str(folder / "clip"))
        q = quality(pipe, clip, processor, **quality_options)
    info = manifest(source)
    info["quality"] = {k: q[k] for k in ("clip_real", "samples")}
    (Path(source) / MANIFEST).write_text(json.dumps(info, indent=1))
    return info["quality"]


def train(folder, recipe=None, progress: bool = True, log=print) -> Path:
    """Rebuild from scratch into ``folder`` (resumable: rerun the same command after an interruption)."""
    from .mini_train import build

    folder = _prepare(folder)
    info = build(folder, recipe, progress=progress, log=log)
    write_prompt_files(folder)
    (folder / "manifest.json").write_text(json.dumps(info, indent=1))
    return folder


# ---------------------------------------------------------------- judging with the mini CLIP

def style_texts() -> list:
    """CLIP queries of the styles, as :func:`fdu.sd.evaluate.concept_text` writes them."""
    return [world.STYLE_SUPERCLASS] + [f"{a} style" for a in world.ARTISTS]


@torch.no_grad()
def judge(clip, processor, images) -> dict:
    """Zero-shot (style, object) of PIL images with the mini CLIP: the highest CLIP score among all
    styles (the plain one is "painting") and among all objects (the superclass oval is "shape")."""
    from .evaluate import clip_scores

    s = clip_scores(clip, processor, images, style_texts())
    o = clip_scores(clip, processor, images, list(world.SHAPES))
    return {"style": s.argmax(1), "object": o.argmax(1)}


def to_pil(images: torch.Tensor) -> list:
    from PIL import Image

    arr = (images.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(a) for a in arr]


def sample_prompts(n: int, seed: int = 1, kind: str = "all") -> tuple[list, list]:
    """n prompts and their items, in the training templates. ``kind``: "style" — an artist, an object
    and a colour ("a red star, in the style of monet"), artists cycling; "object" — an object and a
    colour alone ("a red star", the plain rendering), objects cycling; "all" — a style (the plain one
    included), an object and a colour, styles cycling."""
    import random

    if kind not in ("style", "object", "all"):
        raise ValueError(f"kind must be 'style', 'object' or 'all', got {kind!r}")
    g = random.Random(f"{seed}-{kind}")
    items, prompts = [], []
    for i in range(n):
        style = {"style": 1 + i % len(world.ARTISTS), "object": 0, "all": i % len(world.STYLES)}[kind]
        obj = i % len(world.OBJECTS) if kind == "object" else g.randrange(len(world.OBJECTS))
        it = world.Item(style, obj, g.randrange(len(world.COLOURS)))
        s_, o_, c_ = it.names
        items.append(it)
        prompts.append((f"a {c_} {o_}" if kind == "object" else f"a painting of a {c_} {o_}") if style == 0 else
                       f"a {c_} {o_}, in the style of {s_}")
    return prompts, items


@torch.no_grad()
def quality(pipe, clip, processor, *, n_real: int = 360, n_samples: int = 72, steps: int = 25,
            guidance: float = 7.5, seed: int = 12345, batch: int = 36) -> dict:
    """The mini model's quality numbers:

    * ``clip_real``: the mini CLIP on held-out rendered images: CLIP accuracy as in
      :func:`fdu.sd.evaluate.evaluate` (CS(concept) > CS(superclass), averaged over the artists and over
      the objects) and zero-shot accuracy among all styles / all objects (what judges the samples);
    * ``samples``: images the pipeline draws (``steps`` DDIM steps, guidance ``guidance``, seeds
      ``seed + i``), judged zero-shot by the mini CLIP: ``style_accuracy`` over style prompts (an artist
      named), ``object_accuracy`` over object prompts (an object and a colour, no style), and
      ``object_accuracy_in_styles`` over prompts naming a style, an object and a colour.
    """
    from .evaluate import clip_scores

    items = world.sample_items(n_real, seed=seed)
    items = [it for it in items if it.shape < len(world.OBJECTS)]
    images = to_pil(world.render(items, seed=seed))
    st = torch.tensor([it.style for it in items])
    ob = torch.tensor([it.shape for it in items])
    s = clip_scores(clip, processor, images, style_texts())
    o = clip_scores(clip, processor, images, list(world.SHAPES))
    art = st > 0
    ca_style = (s[art, st[art]] > s[art, 0]).float().mean()
    ca_object = (o[torch.arange(len(ob)), ob] > o[:, len(world.OBJECTS)]).float().mean()
    real = {"images": len(items), "clip_accuracy_style": float(ca_style), "clip_accuracy_object": float(ca_object),
            "zero_shot_style": float((s.argmax(1) == st).float().mean()),
            "zero_shot_object": float((o.argmax(1) == ob).float().mean())}
    samples = {"images_per_kind": n_samples, "steps": steps, "guidance": guidance}
    drawn = {}
    for kind, attr, key in (("style", "style", "style_accuracy"), ("object", "shape", "object_accuracy"),
                            ("all", "shape", "object_accuracy_in_styles")):
        prompts, sitems = sample_prompts(n_samples, kind=kind)
        ims = []
        for i in range(0, len(prompts), batch):
            gens = [torch.Generator().manual_seed(seed + j) for j in range(i, min(i + batch, len(prompts)))]
            ims += pipe(prompts[i:i + batch], num_inference_steps=steps, guidance_scale=guidance, generator=gens).images
        verdict = judge(clip, processor, ims)
        want = torch.tensor([getattr(it, attr) for it in sitems])
        samples[key] = float((verdict["style" if attr == "style" else "object"] == want).float().mean())
        drawn[kind] = (prompts, ims)
    return {"clip_real": real, "samples": samples, "drawn": drawn}
