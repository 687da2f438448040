"""Checkpoints of the unlearning loop: one ``.safetensors`` file per checkpoint.

Tensors hold the trained parameters, the optimiser (and critic optimiser) states, the critic, the
frozen reference's original values and the random-number generators; the rest (step, optimiser
hyper-parameters, history, metrics, config) is JSON in the file's metadata under ``"fdu"``.
Resuming from one continues bit-identically to an uninterrupted run (on CPU): :func:`restore`
puts every piece back where :func:`save_checkpoint` took it from.

A checkpoint is written only with finite tensors, and under its real name only once complete, so
every ``step_<N>.safetensors`` that reads back is a good one; :func:`load_checkpoint` names a file
that does not (truncated, empty, damaged) and the previous good one, which
:func:`latest_good_checkpoint` falls back to. :func:`resume_changes` compares a resumed run's
options with its checkpoint's.
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .errors import CorruptCheckpointError, NonFiniteError, ResumeMismatchError


def all_finite(tensors: Iterable[torch.Tensor]) -> bool:
    """Whether every value of every floating-point tensor is finite: one max-abs per tensor (which
    carries NaN and inf and cannot overflow), one synchronisation."""
    floats = [t.detach() for t in tensors if t.is_floating_point() and t.numel()]
    if not floats:
        return True
    norms = torch._foreach_norm(floats, math.inf) if hasattr(torch, "_foreach_norm") else [
        t.abs().max() for t in floats]
    try:
        return bool(torch.isfinite(torch.stack(norms)).all())
    except RuntimeError:  # tensors on several devices
        return all(bool(torch.isfinite(n)) for n in norms)


def non_finite_names(tensors: dict) -> list:
    """Names of the floating-point tensors of ``tensors`` holding an inf or a NaN."""
    return [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]


def _flatten_optimizer(prefix: str, opt: torch.optim.Optimizer, tensors: dict) -> dict:
    state = opt.state_dict()
    for idx, entry in state["state"].items():
        for key, value in entry.items():
            tensors[f"{prefix}/state/{idx}/{key}"] = torch.as_tensor(value).detach().clone()
    return {"param_groups": state["param_groups"]}


def _restore_optimizer(prefix: str, opt: torch.optim.Optimizer, tensors: dict, meta: dict):
    state: dict = {}
    for key, value in tensors.items():
        if key.startswith(prefix + "/state/"):
            idx, name = key[len(prefix) + 7:].split("/", 1)
            state.setdefault(int(idx), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(path, *, step: int, params, optimizer, generator: torch.Generator, history,
                    metrics, reference=None, critic=None, critic_optimizer=None, config=None,
                    extra: dict | None = None, info: dict | None = None) -> Path:
    """Write one checkpoint; ``reference``: a :class:`fdu.unlearn.SwappedReference` (its original
    values are saved) or anything else (nothing saved); ``extra``: more tensors (e.g. the other
    processes' generator states as ``rng/generator/<rank>``); ``info``: more JSON metadata (e.g.
    how many anchor images the run uses). Refuses (:class:`fdu.errors.NonFiniteError`, nothing
    written) when a tensor holds an inf or a NaN."""
    tensors = {f"param/{i}": p.detach().clone().contiguous() for i, p in enumerate(params)}
    meta = {"step": step, "history": history, "metrics": metrics,
            "optimizer": _flatten_optimizer("optimizer", optimizer, tensors),
            "config": asdict(config) if config is not None else None, "info": info or {}}
    tensors["rng/generator"] = generator.get_state()
    tensors["rng/torch"] = torch.get_rng_state()
    tensors.update({k: v.contiguous() for k, v in (extra or {}).items()})
    if hasattr(reference, "original"):
        tensors.update({f"reference/{i}": o.contiguous() for i, o in enumerate(reference.original)})
    if critic is not None:
        tensors.update({f"critic/{k}": v.detach().clone().contiguous()
                        for k, v in critic.state_dict().items()})
        meta["critic_optimizer"] = _flatten_optimizer("critic_optimizer", critic_optimizer, tensors)
    if not all_finite(tensors.values()):
        bad = non_finite_names(tensors)
        raise NonFiniteError(f"not writing the checkpoint {path}: {len(bad)} tensor(s) hold inf or NaN "
                             f"({', '.join(bad[:5])}{', ...' if len(bad) > 5 else ''})")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"fdu": json.dumps(meta)})
    tmp.replace(path)  # a crash mid-write never leaves a half checkpoint under the real name
    return path


def read_metadata(path) -> dict:
    """The JSON metadata of a checkpoint (its header only: cheap); :class:`CorruptCheckpointError`
    naming the file (and the previous good one) when the file is not a whole checkpoint."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path} (checkpoints are written as "
                                "<checkpoint_dir>/step_<N>.safetensors)")
    try:
        with safe_open(str(path), framework="pt") as handle:
            return json.loads((handle.metadata() or {})["fdu"])
    except KeyError:
        reason = "not an fdu checkpoint: no 'fdu' metadata"
    except Exception as err:  # safetensors raises its own SafetensorError for a damaged file
        reason = f"{type(err).__name__}: {err}" if path.stat().st_size else "an empty file"
    raise CorruptCheckpointError(path, reason, previous_good_checkpoint(path))


def load_checkpoint(path) -> tuple[dict, dict]:
    """(tensors, metadata) of a checkpoint written by :func:`save_checkpoint`, checked: a file that
    is damaged or holds an inf or a NaN raises :class:`CorruptCheckpointError`."""
    meta = read_metadata(path)
    try:
        tensors = load_file(str(path))
    except Exception as err:
        raise CorruptCheckpointError(path, f"{type(err).__name__}: {err}", previous_good_checkpoint(path)) from err
    if not all_finite(tensors.values()):
        bad = non_finite_names(tensors)
        raise CorruptCheckpointError(path, f"{', '.join(bad[:3])} hold(s) inf or NaN, which fdu never writes: "
                                     "the file was damaged", previous_good_checkpoint(path))
    return tensors, meta


def restore(path, *, params, optimizer, generator: torch.Generator, reference=None, critic=None,
            critic_optimizer=None, rank: int = 0) -> tuple[int, dict, list]:
    """Put a checkpoint back into a run's objects; returns (step, history, metrics)."""
    tensors, meta = load_checkpoint(path)
    with torch.no_grad():
        for i, p in enumerate(params):
            p.copy_(tensors[f"param/{i}"])
    _restore_optimizer("optimizer", optimizer, tensors, meta["optimizer"])
    if hasattr(reference, "original") and "reference/0" in tensors:
        reference.original = [tensors[f"reference/{i}"] for i in range(len(params))]
    if critic is not None:
        critic.load_state_dict({k[7:]: v for k, v in tensors.items() if k.startswith("critic/")})
        _restore_optimizer("critic_optimizer", critic_optimizer, tensors, meta["critic_optimizer"])
    generator.set_state(tensors["rng/generator" if rank == 0 else f"rng/generator/{rank}"])
    torch.set_rng_state(tensors["rng/torch"])
    return int(meta["step"]), meta["history"], meta["metrics"]


def checkpoints_in(folder) -> list:
    """The ``step_<N>.safetensors`` of ``folder``, newest (largest N) first (other names ignored)."""
    found = [p for p in Path(folder).glob("step_*.safetensors") if p.stem[5:].isdigit()]
    return sorted(found, key=lambda p: int(p.stem[5:]), reverse=True)


def latest_checkpoint(folder) -> Path | None:
    """The ``step_<N>.safetensors`` with the largest N in ``folder``, or None (other names ignored)."""
    found = checkpoints_in(folder)
    return found[0] if found else None


def _readable(path: Path) -> bool:
    try:
        read_metadata(path)
        return True
    except (CorruptCheckpointError, OSError):
        return False


def previous_good_checkpoint(path) -> Path | None:
    """The newest checkpoint before ``path`` in its folder whose header reads back, or None."""
    path = Path(path)
    step = int(path.stem[5:]) if path.stem[5:].isdigit() else math.inf
    return next((p for p in checkpoints_in(path.parent) if int(p.stem[5:]) < step and _readable(p)), None)


def latest_good_checkpoint(folder, warn: Callable[[str], None] = print) -> tuple[Path | None, dict | None]:
    """(path, metadata) of the newest checkpoint in ``folder`` that loads whole and finite, or
    (None, None); each newer one that does not is reported through ``warn`` and skipped."""
    for path in checkpoints_in(folder):
        try:
            _, meta = load_checkpoint(path)
            return path, meta
        except CorruptCheckpointError as err:
            warn(f"warning: skipping {path}: {err.reason}")
    return None, None


#: options a resumed run may change: applied from the new run on (the rest define the run)
RESUMABLE_CHANGES = ("steps", "lr", "critic_lr", "max_grad_norm", "checkpoint_every", "log_every",
                     "progress", "anchor_batch_size")
#: options that only say where things go
LOCATIONS = ("output", "checkpoint_dir", "cache_dir", "resume")


def resume_changes(saved: dict | None, config, step: int) -> dict:
    """{option: [checkpoint's value, new value]} of the options that a resumed run changes and may
    change (:data:`RESUMABLE_CHANGES`: applied from step ``step`` on); raises
    :class:`fdu.errors.ResumeMismatchError` listing every other difference, or a ``steps`` below
    the checkpoint's step."""
    current = json.loads(json.dumps(asdict(config)))  # tuples as lists, as in the checkpoint
    saved = saved or {}
    differ = {k: [saved[k], v] for k, v in current.items()
              if k in saved and k not in LOCATIONS and saved[k] != v}
    refused = {k: v for k, v in differ.items() if k not in RESUMABLE_CHANGES}
    problems = [f"{k}: checkpoint {old!r}, now {new!r}" for k, (old, new) in refused.items()]
    if current.get("steps", step) < step:
        problems.append(f"steps: the checkpoint is at step {step}, past the requested {current['steps']}")
    if problems:
        raise ResumeMismatchError(
            "cannot resume: these options differ from the checkpoint's run (" + "; ".join(problems) +
            "). Resume with the checkpoint's values, or start a new run in another output folder. "
            f"A resumed run may change only {', '.join(RESUMABLE_CHANGES)}")
    return differ
