"""Checkpoints of the unlearning loop: one ``.safetensors`` file per checkpoint.

Tensors hold the trained parameters, the optimiser (and critic optimiser) states, the critic, the
frozen reference's original values and the random-number generators; the rest (step, optimiser
hyper-parameters, history, metrics, config) is JSON in the file's metadata under ``"fdu"``.
Resuming from one continues bit-identically to an uninterrupted run (on CPU): :func:`restore`
puts every piece back where :func:`save_checkpoint` took it from.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


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
                    extra: dict | None = None) -> Path:
    """Write one checkpoint; ``reference``: a :class:`fdu.unlearn.SwappedReference` (its original
    values are saved) or anything else (nothing saved); ``extra``: more tensors (e.g. the other
    processes' generator states as ``rng/generator/<rank>``)."""
    tensors = {f"param/{i}": p.detach().clone().contiguous() for i, p in enumerate(params)}
    meta = {"step": step, "history": history, "metrics": metrics,
            "optimizer": _flatten_optimizer("optimizer", optimizer, tensors),
            "config": asdict(config) if config is not None else None}
    tensors["rng/generator"] = generator.get_state()
    tensors["rng/torch"] = torch.get_rng_state()
    tensors.update({k: v.contiguous() for k, v in (extra or {}).items()})
    if hasattr(reference, "original"):
        tensors.update({f"reference/{i}": o.contiguous() for i, o in enumerate(reference.original)})
    if critic is not None:
        tensors.update({f"critic/{k}": v.detach().clone().contiguous()
                        for k, v in critic.state_dict().items()})
        meta["critic_optimizer"] = _flatten_optimizer("critic_optimizer", critic_optimizer, tensors)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"fdu": json.dumps(meta)})
    tmp.replace(path)  # a crash mid-write never leaves a half checkpoint under the real name
    return path


def load_checkpoint(path) -> tuple[dict, dict]:
    """(tensors, metadata) of a checkpoint written by :func:`save_checkpoint`."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path} (checkpoints are written as "
                                "<checkpoint_dir>/step_<N>.safetensors)")
    with safe_open(str(path), framework="pt") as handle:
        meta = json.loads(handle.metadata()["fdu"])
    return load_file(str(path)), meta


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


def latest_checkpoint(folder) -> Path | None:
    """The ``step_<N>.safetensors`` with the largest N in ``folder``, or None (other names ignored)."""
    found = [p for p in Path(folder).glob("step_*.safetensors") if p.stem[5:].isdigit()]
    return max(found, key=lambda p: int(p.stem[5:])) if found else None
