"""Erasure and preservation measures shared by the scales, with bootstrap intervals."""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch


def energy_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """Energy distance 2E|X-Y| - E|X-X'| - E|Y-Y'| between two samples, in the units of the data.

    The unbiased U-statistic (pairs of a point with itself are left out), so it is 0 on average
    when both samples come from the same law, and can be slightly negative.
    """
    x, y = x.double().flatten(1), y.double().flatten(1)
    if len(x) < 2 or len(y) < 2:
        raise ValueError("energy_distance needs at least 2 points in each sample")
    n, m = len(x), len(y)
    xy = torch.cdist(x, y).mean()
    xx = torch.cdist(x, x).sum() / (n * (n - 1))
    yy = torch.cdist(y, y).sum() / (m * (m - 1))
    return float(2 * xy - xx - yy)


def bootstrap(statistic: Callable[..., float], samples: Sequence[torch.Tensor], *, boot: int = 200,
              seed: int = 0, level: float = 0.95) -> dict:
    """The statistic on the samples and an interval for it: {"value", "low", "high"}.

    Resampling with replacement would duplicate points, which biases distances between samples
    (a duplicate sits at distance 0 from itself), so the interval comes from half-size subsamples
    drawn *without* replacement: value + the percentiles of (subsample statistic - their mean).
    Half-size subsamples vary more than the full sample, so the interval is conservative (about
    1.4 times too wide for a sqrt(n)-statistic).
    """
    if not samples or any(len(s) < 4 for s in samples):
        raise ValueError("bootstrap needs samples of at least 4 points")
    gen = torch.Generator().manual_seed(seed)
    value = float(statistic(*samples))
    draws = []
    for _ in range(max(boot, 2)):
        sub = [s[torch.randperm(len(s), generator=gen)[: len(s) // 2]] for s in samples]
        draws.append(float(statistic(*sub)))
    draws = torch.tensor(draws, dtype=torch.float64)
    dev = draws - draws.mean()
    tail = (1 - level) / 2
    return {"value": value, "low": value + float(dev.quantile(tail)),
            "high": value + float(dev.quantile(1 - tail))}


def wilson(k: int, n: int, z: float = 1.96) -> dict:
    """A proportion k/n with its Wilson score interval (95% by default)."""
    if n < 1:
        raise ValueError("wilson needs n >= 1")
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return {"value": p, "low": max(0.0, centre - half), "high": min(1.0, centre + half)}


def mean_ci(values: Sequence[float], level: float = 0.95, bounds: tuple | None = None) -> dict:
    """Mean of replicates with a t-interval (low = high = mean for a single value), clipped to
    ``bounds`` (e.g. (0, 1) for accuracies) when given."""
    from scipy import stats

    x = [float(v) for v in values]
    if not x:
        raise ValueError("mean_ci needs at least one value")
    m = sum(x) / len(x)
    if len(x) == 1:
        return {"value": m, "low": m, "high": m, "n": 1}
    sd = math.sqrt(sum((v - m) ** 2 for v in x) / (len(x) - 1))
    half = float(stats.t.ppf(0.5 + level / 2, len(x) - 1)) * sd / math.sqrt(len(x))
    lo, hi = bounds if bounds is not None else (-math.inf, math.inf)
    return {"value": m, "low": max(lo, m - half), "high": min(hi, m + half), "n": len(x)}


def format_ci(m: dict) -> str:
    """A measure with its interval, as the tables print it: "value [low, high]"."""
    return f"{m['value']:.3f} [{m['low']:.3f}, {m['high']:.3f}]"
