"""Ray trainable: the LFADS recipe (a sequential VAE on raw staggered observations).

Named `lfads` in a search space; Tune calls `train(config)` once per trial.
"""

from __future__ import annotations

from typing import Any

from latent_tune.tune.trainable import run_trial

RECIPE = "lfads"


def train(config: dict[str, Any]) -> None:
    """One trial: the sampled dotted values merged into the base config, trained epoch by epoch."""
    run_trial(config, recipe=RECIPE)
