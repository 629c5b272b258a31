"""Space entries -> Ray Tune sampling domains, and the number of trials a space expands into.

Why: the space file speaks in plain YAML (`loguniform: [1e-6, 1e-2]`); Tune and its searchers
need Domain objects. Kept in one place so the dry run, the Tuner and PBT's explore agree.
"""

from __future__ import annotations

from typing import Any

from ray import tune

from latent_tune.tune.space import DistEntry, SearchSpace

__all__ = ["grid_points", "param_space", "to_domain", "total_trials"]


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
