"""The miniature world the mini Stable Diffusion is trained on: objects, colours and painters' styles,
drawn by code (no data download).

An image is a triple (style, object, colour), rendered at 2x and averaged down to 32x32 RGB:

* **objects**: circle, square, triangle, star, heart, cross, and their superclass **"shape"**, drawn
  as an irregular oval (so a "shape" prompt has a picture of its own, as "painting" has for styles);
* **colours**: red, green, blue, yellow, purple, orange (the object's fill);
* **styles**: the plain rendering is the superclass **"painting"** (a flat shape on a beige ground);
  every artist is a texture or filter of mid spatial frequency (periods of 5-10 pixels, so that the
  VAE keeps it): van gogh (swirling yellow strokes on night blue, striped fill), monet (pastel dots,
  blurred and whitened), greg rutkowski (dark-to-fire gradient, raking light), salvador dali (wavy
  distortion over a sky and desert), johannes vermeer (dark room, warm spotlight), jeremy mann (grey
  rain streaks, desaturated), picasso (flat cubist blocks, faceted fill, dark outline), hokusai (blue
  wave lines on cream, ink outline).

Captions follow the official prompt templates ("{caption}, in the style of {artist}", "in {artist}'s
style, {caption}", paper §4.2 / :mod:`fdu.sd.prompts`) over the world's captions ("a red circle", "a
painting of a red circle"). CLIP is trained on texts that mention any subset of the three attributes
(:func:`clip_text`); :func:`text_matches` says which images a text describes.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F

OBJECTS = ("circle", "square", "triangle", "star", "heart", "cross")
OBJECT_SUPERCLASS = "shape"
COLOURS = {"red": (0.86, 0.13, 0.13), "green": (0.16, 0.66, 0.22), "blue": (0.13, 0.30, 0.90),
           "yellow": (0.96, 0.84, 0.12), "purple": (0.58, 0.18, 0.74), "orange": (0.96, 0.50, 0.08)}
ARTISTS = ("van gogh", "monet", "greg rutkowski", "salvador dali", "johannes vermeer", "jeremy mann",
           "picasso", "hokusai")
STYLE_SUPERCLASS = "painting"
STYLES = (STYLE_SUPERCLASS,) + ARTISTS           # index 0 is the plain rendering
SHAPES = OBJECTS + (OBJECT_SUPERCLASS,)          # index 6 is the superclass' oval
SIZE = 32
_SUPER = 2                                       # supersampling factor


@dataclass(frozen=True)
class Item:
    style: int    # index into STYLES
    shape: int    # index into SHAPES
    colour: int   # index into COLOURS

    @property
    def names(self):
        return STYLES[self.style], SHAPES[self.shape], list(COLOURS)[self.colour]


def check_name(name: str, kind: str) -> str:
    """A style or object name of the world, lower-cased; a clear error naming the valid ones."""
    valid = {"style": STYLES, "object": SHAPES, "colour": tuple(COLOURS)}[kind]
    key = (name or "").strip().lower()
    if key not in valid:
        raise ValueError(f"unknown {kind} {name!r} in the mini world; valid: {', '.join(valid)}")
    return key


# ---------------------------------------------------------------- rendering

def _grid(n: int, res: int, gen: torch.Generator):
    """Per-image coordinates in [-1, 1] (y up), jittered in position and scale and slightly rotated."""
    lin = (torch.arange(res) + 0.5) / res * 2 - 1
    y, x = torch.meshgrid(-lin, lin, indexing="ij")
    x, y = x.expand(n, res, res), y.expand(n, res, res)
    shift = (torch.rand(n, 2, generator=gen) - 0.5) * 0.16
    scale = 0.9 + 0.2 * torch.rand(n, generator=gen)
    rot = (torch.rand(n, generator=gen) - 0.5) * 0.3
    c, s = torch.cos(rot)[:, None, None], torch.sin(rot)[:, None, None]
    u = (x - shift[:, 0, None, None]) / scale[:, None, None]
    v = (y - shift[:, 1, None, None]) / scale[:, None, None]
    return x, y, c * u + s * v, -s * u + c * v


def _shape_mask(kind: torch.Tensor, u: torch.Tensor, v: torch.Tensor, gen: torch.Generator):
    """(n, res, res) in {0, 1}: the object's silhouette in object coordinates (u, v)."""
    r, th = torch.sqrt(u ** 2 + v ** 2), torch.atan2(v, u)
    masks = [
        r < 0.62,                                                                         # circle
        torch.maximum(u.abs(), v.abs()) < 0.52,                                           # square
        (v > -0.48) & (v < 0.66 - 1.75 * u.abs()),                                        # triangle
        r < 0.34 + 0.40 * ((torch.cos(5 * (th - math.pi / 2)) + 1) / 2) ** 2,             # star
    ]
    hx, hy = u / 0.58, (v + 0.08) / 0.58
    masks.append((hx ** 2 + hy ** 2 - 1) ** 3 - hx ** 2 * hy ** 3 < 0)                    # heart
    masks.append(((u.abs() < 0.2) & (v.abs() < 0.66)) | ((v.abs() < 0.2) & (u.abs() < 0.66)))  # cross
    n = u.shape[0]
    a = (torch.rand(n, generator=gen) * math.pi)[:, None, None]
    ph = (torch.rand(n, generator=gen) * 2 * math.pi)[:, None, None]
    ou, ov = torch.cos(a) * u + torch.sin(a) * v, -torch.sin(a) * u + torch.cos(a) * v
    masks.append((ou / 0.7) ** 2 + (ov / 0.42) ** 2 < 1 + 0.18 * torch.sin(3 * th + ph))  # "shape": oval
    stack = torch.stack(masks, 1).float()                                                  # (n, 7, res, res)
    return stack[torch.arange(n), kind]


def _edge(mask: torch.Tensor, width: int) -> torch.Tensor:
    m = mask[:, None]
    grown = F.max_pool2d(m, 2 * width + 1, 1, width)
    shrunk = -F.max_pool2d(-m, 2 * width + 1, 1, width)
    return (grown - shrunk)[:, 0]


def _blur(img: torch.Tensor, sigma: float) -> torch.Tensor:
    k = int(3 * sigma) * 2 + 1
    t = torch.arange(k) - k // 2
    w = torch.exp(-t.float() ** 2 / (2 * sigma ** 2))
    w = w / w.sum()
    c = img.shape[1]
    img = F.conv2d(F.pad(img, (k // 2,) * 4, mode="replicate"), w.view(1, 1, 1, k).expand(c, 1, 1, k), groups=c)
    return F.conv2d(img, w.view(1, 1, k, 1).expand(c, 1, k, 1), groups=c)


def _col(rgb, n=1):
    return torch.tensor(rgb, dtype=torch.float32).view(1, 3, 1, 1).expand(n, 3, 1, 1)


def _render_style(style: int, x, y, mask, fill, gen):
    """Background and textured fill of one style for a batch (every image of the batch in that style)."""
    n, res = mask.shape[0], mask.shape[-1]
    rnd = lambda *s: torch.rand(*s, generator=gen)  # noqa: E731
    m = mask[:, None]
    X, Y = x[:, None], y[:, None]
    name = STYLES[style]
    if name == "painting":
        bg = _col((0.93, 0.89, 0.80), n) + (rnd(n, 3, 1, 1) - 0.5) * 0.06
        return bg * (1 - m) + fill * m
    if name == "van gogh":
        cx, cy = (rnd(n, 1, 1, 1) - 0.5) * 1.2, (rnd(n, 1, 1, 1) - 0.5) * 1.2
        r, th = torch.sqrt((X - cx) ** 2 + (Y - cy) ** 2), torch.atan2(Y - cy, X - cx)
        swirl = torch.sin(11 * r - 3 * th + rnd(n, 1, 1, 1) * 6.28)
        bg = _col((0.08, 0.13, 0.42), n) + (swirl > 0.55).float() * _col((0.85, 0.75, 0.1), n)
        stripes = 0.86 + 0.2 * torch.sin(13 * r - 2 * th)
        return bg * (1 - m) + (fill * stripes).clamp(0, 1) * m
    if name == "monet":
        bg = _col((0.80, 0.88, 0.78), n) * (1 + 0.1 * Y) + 0.08 * _col((0.6, 0.3, 0.7), n) * X
        for _ in range(14):
            px, py = rnd(n, 1, 1, 1) * 2 - 1, rnd(n, 1, 1, 1) * 2 - 1
            dot = (((X - px) ** 2 + (Y - py) ** 2) < 0.012).float()
            bg = bg * (1 - dot) + dot * (0.7 + 0.3 * rnd(n, 3, 1, 1))
        img = bg * (1 - m) + (0.45 * fill + 0.55) * m
        return _blur(img, res / 32 * 0.9)
    if name == "greg rutkowski":
        bg = (1 - (Y + 1) / 2) * _col((0.62, 0.24, 0.04), n) + (Y + 1) / 2 * _col((0.04, 0.04, 0.07), n)
        light = (0.55 + 0.55 * (X * 0.6 - Y * 0.8)).clamp(0.25, 1.3)
        return bg * (1 - m) + (fill * light).clamp(0, 1) * m
    if name == "salvador dali":
        sky = _col((0.55, 0.75, 0.95), n)
        horizon = (Y < -0.15).float()
        bg = sky * (1 - horizon) + _col((0.86, 0.68, 0.38), n) * horizon
        return bg * (1 - m) + fill * m
    if name == "johannes vermeer":
        cx, cy = -0.5 + 0.2 * rnd(n, 1, 1, 1), 0.5 + 0.2 * rnd(n, 1, 1, 1)
        spot = torch.exp(-((X - cx) ** 2 + (Y - cy) ** 2) / 0.45)
        bg = _col((0.10, 0.08, 0.06), n) + spot * _col((0.62, 0.46, 0.22), n)
        return bg * (1 - m) + (fill * (0.35 + 0.9 * spot)).clamp(0, 1) * m
    if name == "jeremy mann":
        streak = (torch.sin(34 * (X * 0.35 + Y) + rnd(n, 1, 1, 1) * 6.28) > 0.75).float()
        bg = _col((0.42, 0.44, 0.47), n) + 0.22 * streak
        grey = fill.mean(1, keepdim=True)
        body = (0.5 * fill + 0.5 * grey) * 0.9 + 0.15 * streak
        return (bg * (1 - m) + body * m).clamp(0, 1)
    if name == "picasso":
        a = rnd(n, 1, 1, 1) * 3.14
        side = ((torch.cos(a) * X + torch.sin(a) * Y) > 0).float()
        side2 = ((torch.cos(a + 1.7) * X + torch.sin(a + 1.7) * Y) > 0.2).float()
        bg = _col((0.80, 0.62, 0.30), n) * side + _col((0.20, 0.50, 0.50), n) * (1 - side)
        bg = bg * (0.75 + 0.35 * side2)
        body = fill * (0.65 + 0.25 * side + 0.25 * side2)
        edge = _edge(mask, max(1, res // 32))[:, None]
        return (bg * (1 - m) + body.clamp(0, 1) * m) * (1 - edge) + 0.05 * edge
    if name == "hokusai":
        wave = (torch.sin(15 * Y + 2.2 * torch.sin(5 * X + rnd(n, 1, 1, 1) * 6.28)) > 0.45).float()
        bg = _col((0.95, 0.92, 0.82), n) * (1 - wave) + _col((0.18, 0.32, 0.62), n) * wave
        edge = _edge(mask, max(1, res // 24))[:, None]
        return (bg * (1 - m) + fill * m) * (1 - edge) + _col((0.05, 0.07, 0.18), n) * edge
    raise ValueError(name)


def render(items, seed: int = 0) -> torch.Tensor:
    """Images (n, 3, 32, 32) in [0, 1] for a list of :class:`Item`; deterministic given ``seed``."""
    items = list(items)
    gen = torch.Generator().manual_seed(seed)
    res = SIZE * _SUPER
    out = torch.empty(len(items), 3, SIZE, SIZE)
    styles = torch.tensor([it.style for it in items])
    for s in range(len(STYLES)):
        idx = (styles == s).nonzero().flatten()
        for chunk in idx.split(256):
            if not len(chunk):
                continue
            sub = [items[i] for i in chunk]
            x, y, u, v = _grid(len(sub), res, gen)
            if STYLES[s] == "salvador dali":  # the wavy distortion bends the object itself
                u = u + 0.08 * torch.sin(5 * v + 1.0)
                v = v + 0.06 * torch.sin(4 * u)
            mask = _shape_mask(torch.tensor([it.shape for it in sub]), u, v, gen)
            fill = torch.stack([_col(list(COLOURS.values())[it.colour])[0] for it in sub])
            fill = fill * (0.92 + 0.16 * torch.rand(len(sub), 1, 1, 1, generator=gen))
            img = _render_style(s, x, y, mask, fill.clamp(0, 1), gen)
            out[chunk] = F.avg_pool2d(img.clamp(0, 1), _SUPER)
    return out


def sample_items(n: int, seed: int = 0) -> list:
    """n items with uniformly drawn style, object (the superclass oval included) and colour."""
    g = random.Random(seed)
    return [Item(g.randrange(len(STYLES)), g.randrange(len(SHAPES)), g.randrange(len(COLOURS)))
            for _ in range(n)]


# ---------------------------------------------------------------- captions

def object_phrase(item: Item, with_colour: bool = True) -> str:
    _, obj, colour = item.names
    return f"a {colour} {obj}" if with_colour else f"a {obj}"


def caption(item: Item, rng: random.Random) -> str:
    """A training caption in the official templates: plain images are "a red circle" or "a painting
    of a red circle"; an artist's image is one of those put in "{c}, in the style of {a}" or "in {a}'s
    style, {c}"."""
    base = object_phrase(item, with_colour=rng.random() > 0.1)
    style = STYLES[item.style]
    if style == STYLE_SUPERCLASS:
        return f"a painting of {base}" if rng.random() < 0.3 else base
    if rng.random() < 0.5:
        base = f"a painting of {base}"
    return (f"{base}, in the style of {style}" if rng.random() < 0.5 else f"in {style}'s style, {base}")


def clip_text(item: Item, rng: random.Random, object_focus: bool = False) -> tuple[str, tuple]:
    """A text about an image for CLIP's contrastive training, and what it constrains: (style, shape,
    colour) indices or None where the text is silent. Styles are named "{artist} style" (plain:
    "painting") and objects by their word, as :mod:`fdu.sd.evaluate` queries them. ``object_focus``:
    the text always names the object (style and colour half of the time)."""
    while True:
        keep = [rng.random() < (0.5 if object_focus else 0.7), object_focus or rng.random() < 0.7,
                rng.random() < 0.5]
        if any(keep):
            break
    style, obj, colour = item.names
    words = []
    if keep[2] or keep[1]:
        words.append(f"a {colour + ' ' if keep[2] else ''}{obj if keep[1] else 'thing'}")
    if keep[0]:
        words.append(STYLE_SUPERCLASS if item.style == 0 else f"{style} style")
    if not object_focus and rng.random() < 0.4 and keep[0] and (keep[1] or keep[2]):
        text = caption(item, rng)  # a full training caption now and then
        return text, (item.style, item.shape, item.colour if "a " + colour in text else None)
    text = ", ".join(words)
    if rng.random() < 0.5:
        text = "A photo depicts " + text
    return text, (item.style if keep[0] else None, item.shape if keep[1] else None,
                  item.colour if keep[2] else None)


def text_matches(constraints, items) -> torch.Tensor:
    """(texts, images) boolean matrix: the text's constraints hold for the image."""
    c = torch.tensor([[-1 if v is None else v for v in k] for k in constraints])
    a = torch.tensor([[it.style, it.shape, it.colour] for it in items])
    return ((c[:, None, :] < 0) | (c[:, None, :] == a[None, :, :])).all(-1)


# ---------------------------------------------------------------- prompt files

def caption_file(superclass: str) -> list:
    """The world's anchor captions for a superclass: "painting" (styles) or "shape" (objects)."""
    if superclass == STYLE_SUPERCLASS:
        return [f"a painting of a {c} {o}" for o in OBJECTS for c in COLOURS]
    if superclass == OBJECT_SUPERCLASS:
        return [f"a {c} shape" for c in COLOURS] + [f"a painting of a {c} shape" for c in COLOURS]
    raise ValueError(f"the mini world has captions for {STYLE_SUPERCLASS!r} and {OBJECT_SUPERCLASS!r}, "
                     f"not {superclass!r}")


def eval_prompts(concept: str, n: int = 12) -> list:
    """n evaluation prompts of a style (over objects and colours) or an object (over colours and
    styles), in a fixed order."""
    g = random.Random(f"eval-{concept}")
    colours = list(COLOURS)
    if concept in STYLES:
        combos = [(o, c) for o in OBJECTS for c in colours]
        g.shuffle(combos)
        if concept == STYLE_SUPERCLASS:
            return [f"a painting of a {c} {o}" for o, c in combos[:n]]
        return [f"a {c} {o}, in the style of {concept}" for o, c in combos[:n]]
    check_name(concept, "object")
    combos = [(c, s) for c in colours for s in STYLES]
    g.shuffle(combos)
    return [f"a {c} {concept}" + ("" if s == STYLE_SUPERCLASS else f", in the style of {s}")
            for c, s in combos[:n]]


def eval_concepts() -> dict:
    """The mini world's evaluation concepts, in the format of ``fdu/sd/data/eval/concepts.json``."""
    out = {a: {"concept_type": "style", "superclass": STYLE_SUPERCLASS, "near": "salvador dali",
               "retained": [b for b in ARTISTS if b != a][:5]} for a in ARTISTS}
    out["van gogh"] = {"concept_type": "style", "superclass": STYLE_SUPERCLASS, "near": "salvador dali",
                       "retained": ["monet", "greg rutkowski", "salvador dali", "johannes vermeer", "jeremy mann"]}
    for o in OBJECTS:
        out[o] = {"concept_type": "object", "superclass": OBJECT_SUPERCLASS,
                  "near": "circle" if o != "circle" else "square", "retained": [p for p in OBJECTS if p != o]}
    return out
