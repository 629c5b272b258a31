"""Small statistics of a verification: spread over seeds, paired differences, rank agreement.

Why paired: every configuration is re-trained with the same training seeds, so a seed's luck
(its initial weights and data order) is shared by all configurations; the difference per seed
removes that shared part, and its t-interval is much narrower than comparing two means.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import stats

__all__ = ["paired_interval", "spearman", "spread"]


def spread(values: Sequence[float]) -> tuple[float, float, float, float]:
    """(mean, sd, min, max) of the finite values; sd with n-1 (NaN below two values)."""
    v = np.asarray([x for x in values if math.isfinite(x)], dtype=float)
    if v.size == 0:
        return (math.nan,) * 4
    sd = float(v.std(ddof=1)) if v.size > 1 else math.nan
    return float(v.mean()), sd, float(v.min()), float(v.max())


def paired_interval(
    a: Mapping[int, float], b: Mapping[int, float], level: float = 0.95
) -> tuple[float, float, float, int]:
    """Mean of a - b over the seeds both have (finite), with its t-interval: (mean, lo, hi, n).

    NaN interval below two pairs; a zero spread gives a zero-width interval."""
    seeds = [s for s in a if s in b and math.isfinite(a[s]) and math.isfinite(b[s])]
    d = np.asarray([a[s] - b[s] for s in seeds], dtype=float)
    if d.size == 0:
        return math.nan, math.nan, math.nan, 0
    mean = float(d.mean())
    if d.size < 2:
        return mean, math.nan, math.nan, 1
    half = float(stats.t.ppf(0.5 + level / 2, d.size - 1) * d.std(ddof=1) / math.sqrt(d.size))
    return mean, mean - half, mean + half, int(d.size)


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation of finite pairs (NaN with fewer than two or no spread)."""
    pairs = [(a, b) for a, b in zip(x, y, strict=True) if math.isfinite(a) and math.isfinite(b)]
    if len(pairs) < 2:
        return math.nan
    xs, ys = zip(*pairs, strict=True)
    if len(set(xs)) < 2 or len(set(ys)) < 2:
        return math.nan
    return float(stats.spearmanr(xs, ys).statistic)
