"""The trials a search will really start first, drawn offline from the same searcher.

Why: a dry run that shows made-up draws misleads; both searchers draw from their own seeded RNG
in the order Tune asks them, so the same searcher built with the same seed gives exactly the
first trials of the real run. Optuna's TPE draws its first 10 trials at random and only then
adapts to results, so those first 10 are exact; Ray's random/grid generator is exact throughout.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import optuna
from ray.tune.search.optuna import OptunaSearch
from ray.tune.search.variant_generator import generate_variants

from latent_tune.tune.distributions import param_space, total_trials
from latent_tune.tune.schedulers import build_searcher
from latent_tune.tune.space import SearchSpace

__all__ = ["TPE_STARTUP", "preview_trials"]

TPE_STARTUP = 10  # Optuna's TPESampler default n_startup_trials: random draws before TPE


def preview_trials(space: SearchSpace, limit: int = TPE_STARTUP) -> list[dict[str, Any]]:
    """The first `limit` trials' sampled values, in the order the search starts them."""
    n = min(limit, total_trials(space))
    domains = param_space(space)
    searcher = build_searcher(space)
    if isinstance(searcher, OptunaSearch):
        level = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(logging.WARNING)  # no "new study created" line
        try:
            searcher.set_search_properties(space.objective.metric, space.objective.mode, domains)
            return [dict(searcher.suggest(f"preview_{i}")) for i in range(n)]
        finally:
            optuna.logging.set_verbosity(level)
    # BasicVariantGenerator: one numpy Generator from the seed, shared by every sample's grid
    # expansion (what the generator does without creating Trials or an experiment dir)
    rng = np.random.default_rng(space.searcher.seed)
    out: list[dict[str, Any]] = []
    for _ in range(space.trials.num_samples):
        for _, spec in generate_variants({"config": domains}, random_state=rng):
            out.append({k: spec["config"][k] for k in space.space})
            if len(out) >= n:
                return out
    return out
