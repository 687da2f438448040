"""Prompts for Stable Diffusion unlearning, built as in the official code (``utils.py`` of
[f-DMU code], ``paper/REFERENCES.md``), from prompt files we ship (``fdu/sd/data``) or that you give;
no pair of concepts is hard-coded.

Each anchor *caption* (e.g. "a painting of a harbour at sunset") yields one aligned pair:

* the **target prompt**: the caption with the target concept put in, by concept type —
  style: "{caption}, in the style of {target}" or "in {target}'s style, {caption}";
  object: the superclass word replaced by the target ("a cat on a sofa" → "a grumpy cat on a sofa");
  nudity: "{target}, {caption}", "in {target} style, {caption}" or "{caption}, {target}";
* the **anchor prompt**: the caption itself when the anchor is the superclass (the captions' class),
  "" when the anchor is the empty prompt, and otherwise the caption with the anchor concept put in the
  same way (a near anchor such as "salvador dali" for "van gogh").

Templates are drawn uniformly with a seeded generator (the official code draws the second style
template with probability 2/3, an artefact of two identical branches).
"""
from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"
CONCEPT_TYPES = ("style", "object", "nudity")
TEMPLATES = {
    "style": ["{caption}, in the style of {c}", "in {c}'s style, {caption}"],
    "nudity": ["{c}, {caption}", "in {c} style, {caption}", "{caption}, {c}"],
}
DEFAULT_SUPERCLASS = {"style": "painting", "nudity": "people"}


def shipped_captions() -> list:
    """Names of the caption files we ship (superclasses): painting, cat, dog, robot, fish, people."""
    return sorted(p.stem for p in (DATA / "captions").glob("*.txt"))


def read_prompt_file(path) -> list:
    """Non-empty, stripped lines of a text file (``#`` starts a comment line)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no prompt file at {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"the prompt file {path} is not UTF-8 text ({err.reason} at byte {err.start}): "
                         "it needs one prompt per line") from None
    if "\x00" in text:
        raise ValueError(f"the prompt file {path} holds NUL bytes: a binary file, not one prompt per line")
    lines = [line.strip() for line in text.splitlines()]
    prompts = [line for line in lines if line and not line.startswith("#")]
    if not prompts:
        raise ValueError(f"the prompt file {path} is empty: it needs one prompt per line")
    return prompts


def captions_for(superclass: str) -> list:
    """The shipped captions of a superclass, or a clear error naming the shipped ones."""
    path = DATA / "captions" / f"{superclass.strip().lower().replace(' ', '_')}.txt"
    if not path.is_file():
        raise ValueError(f"no shipped captions for the superclass {superclass!r}; shipped: "
                         f"{', '.join(shipped_captions())}. Pass your own with captions=FILE "
                         "(--captions on the command line)")
    return read_prompt_file(path)


def _put_in(concept_type: str, concept: str, caption: str, superclass: str, rng: random.Random) -> str:
    if concept_type == "object":
        if superclass.lower() not in caption.lower():
            raise ValueError(f"object prompts replace the superclass word {superclass!r} in each caption, "
                             f"but it does not occur in {caption!r}")
        i = caption.lower().index(superclass.lower())
        return caption[:i] + concept + caption[i + len(superclass):]
    return rng.choice(TEMPLATES[concept_type]).format(c=concept, caption=caption)


def build_prompts(concept_type: str, target: str, anchor: str, *, superclass: str | None = None,
                  captions: Sequence[str] | str | Path | None = None, seed: int = 0,
                  model_dir: str | Path | None = None) -> tuple[list, list]:
    """(target prompts, anchor prompts), aligned, one pair per caption. ``anchor``: the superclass word
    (e.g. "painting"), "" for the empty prompt, or any other concept (a near anchor). ``superclass``:
    the captions' class (default: "painting" for styles, "people" for nudity, the anchor for objects).
    ``captions``: a list or a prompt file, instead of the shipped captions of the superclass; without
    it, a model folder that carries ``captions/<superclass>.txt`` (``model_dir``, as the mini model
    does) supplies its own."""
    if concept_type not in CONCEPT_TYPES:
        raise ValueError(f"concept_type must be one of {CONCEPT_TYPES}, got {concept_type!r}")
    if not target or not target.strip():
        raise ValueError("target must name the concept to erase, e.g. 'van gogh'")
    anchor = (anchor or "").strip()
    if superclass is None:
        superclass = DEFAULT_SUPERCLASS.get(concept_type, anchor)
        if not superclass:
            raise ValueError("an object concept with the empty anchor needs superclass= (the class word "
                             "of the captions, e.g. 'cat')")
    own = Path(model_dir) / "captions" / f"{superclass.strip().lower().replace(' ', '_')}.txt" if model_dir else None
    if captions is None and own is not None and own.is_file():
        caps = read_prompt_file(own)
    elif captions is None:
        caps = captions_for(superclass)
    elif isinstance(captions, (str, Path)):
        caps = read_prompt_file(captions)
    else:
        caps = [c.strip() for c in captions if c and c.strip()]
        if not caps:
            raise ValueError("captions is an empty list: give at least one caption")
    rng = random.Random(seed)
    targets, anchors = [], []
    for caption in caps:
        targets.append(_put_in(concept_type, target.strip(), caption, superclass, rng))
        if anchor == "":
            anchors.append("")
        elif anchor.lower() == superclass.lower():
            anchors.append(caption)
        else:
            anchors.append(_put_in(concept_type, anchor, caption, superclass, rng))
    return targets, anchors


def eval_concepts(folder=None) -> dict:
    """The evaluation concepts of a prompt folder (default: the ones we ship): concept -> its type,
    superclass, near anchor and retained (hard-negative) concepts (the paper's evaluation protocol).
    ``folder``: a folder with a ``concepts.json`` and ``<concept>.txt`` files, e.g. ``DIR/eval`` of
    ``python -m fdu mini-sd DIR``."""
    folder = Path(folder) if folder else DATA / "eval"
    path = folder / "concepts.json"
    if not path.is_file():
        raise FileNotFoundError(f"no concepts.json in {folder}: an evaluation prompt folder holds one "
                                "(concept -> concept_type, superclass, retained) beside <concept>.txt files")
    return json.loads(path.read_text())


def eval_prompts(concept: str, folder=None) -> list:
    """The evaluation prompts of a concept in a prompt folder (default: the ones we ship, 10 each,
    written by us, not the official files)."""
    folder = Path(folder) if folder else DATA / "eval"
    path = folder / f"{concept.strip().lower().replace(' ', '_')}.txt"
    if not path.is_file():
        have = sorted(p.stem.replace("_", " ") for p in folder.glob("*.txt"))
        raise ValueError(f"no evaluation prompts for {concept!r} in {folder}; there are: {', '.join(have)}. "
                         "Pass your own prompt folder")
    return read_prompt_file(path)
