"""Erasure and preservation measures shared by the scales, with bootstrap intervals."""
from __future__ import annotations

from typing import Callable, Sequence

import torch


def energy_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """Energy distance 2E|X-Y| - E|X-X'| - E|Y-Y'| between two samples (>= 0, 0 iff same law);
    the V-statistic, in the units of the data."""
    x, y = x.double().flatten(1), y.double().flatten(1)
    xy = torch.cdist(x, y).mean()
    xx = torch.cdist(x, x).mean()
    yy = torch.cdist(y, y).mean()
    return float(2 * xy - xx - yy)


def bootstrap(statistic: Callable[..., float], samples: Sequence[torch.Tensor], *, boot: int = 200,
              seed: int = 0, level: float = 0.95) -> dict:
    """The statistic on the samples and a percentile bootstrap interval (each sample resampled
    with replacement, independently). Returns {"value", "low", "high"}."""
    if not samples or any(len(s) == 0 for s in samples):
        raise ValueError("bootstrap needs at least one non-empty sample")
    gen = torch.Generator().manual_seed(seed)
    value = float(statistic(*samples))
    draws = []
    for _ in range(max(boot, 1)):
        resampled = [s[torch.randint(len(s), (len(s),), generator=gen)] for s in samples]
        draws.append(float(statistic(*resampled)))
    draws = torch.tensor(draws, dtype=torch.float64)
    tail = (1 - level) / 2
    return {"value": value, "low": float(draws.quantile(tail)), "high": float(draws.quantile(1 - tail))}
