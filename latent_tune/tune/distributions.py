"""Space entries -> Ray Tune sampling domains, and a preview of the trial plan.

Why: the space file speaks in plain YAML (`loguniform: [1e-6, 1e-2]`); Tune and its searchers
need Domain objects. Kept in one place so the dry run, the Tuner and PBT's explore agree.
"""

from __future__ import annotations

import itertools
import math
import random
from typing import Any

from ray import tune

from latent_tune.tune.space import DistEntry, SearchSpace

__all__ = ["grid_points", "param_space", "preview_trials", "to_domain", "total_trials"]


def to_domain(entry: DistEntry, searcher: str) -> Any:
    """One entry -> a Tune Domain (or grid_search); with the grid searcher choices are gridded."""
    kind, values = entry.kind, entry.values
    if kind == "grid" or (kind == "choice" and searcher == "grid"):
        return tune.grid_search(list(values))
    if kind == "choice":
        return tune.choice(list(values))
    lo, hi = values
    if kind == "uniform":
        return tune.uniform(float(lo), float(hi))
    if kind == "loguniform":
        return tune.loguniform(float(lo), float(hi))
    return tune.randint(int(lo), int(hi))


def param_space(space: SearchSpace) -> dict[str, Any]:
    """The Tuner's param_space: dotted keys, kept flat (Tune leaves dotted keys alone)."""
    return {key: to_domain(entry, space.searcher_type) for key, entry in space.space.items()}


def grid_points(space: SearchSpace) -> int:
    """How many grid combinations each sample expands into."""
    n = 1
    for entry in space.space.values():
        if entry.kind == "grid" or (entry.kind == "choice" and space.searcher_type == "grid"):
            n *= len(entry.values)
    return n


def total_trials(space: SearchSpace) -> int:
    return space.trials.num_samples * grid_points(space)


def _sample(entry: DistEntry, rng: random.Random) -> Any:
    kind, values = entry.kind, entry.values
    if kind in ("choice", "grid"):
        return rng.choice(list(values))
    lo, hi = values
    if kind == "uniform":
        return rng.uniform(lo, hi)
    if kind == "loguniform":
        return math.exp(rng.uniform(math.log(lo), math.log(hi)))
    return rng.randrange(int(lo), int(hi))


def preview_trials(space: SearchSpace, limit: int = 10) -> list[dict[str, Any]]:
    """A seeded preview of the first trials (exact for grid values; random draws otherwise).

    Optuna's TPE adapts to results, so for it only the first draws are representative.
    """
    rng = random.Random(space.searcher.seed)
    gridded = {
        k: list(e.values)
        for k, e in space.space.items()
        if e.kind == "grid" or (e.kind == "choice" and space.searcher_type == "grid")
    }
    combos = [dict(zip(gridded, vals)) for vals in itertools.product(*gridded.values())] or [{}]
    out: list[dict[str, Any]] = []
    for _ in range(space.trials.num_samples):
        for combo in combos:
            params = {
                k: combo[k] if k in combo else _sample(e, rng) for k, e in space.space.items()
            }
            out.append(params)
            if len(out) >= limit:
                return out
    return out
