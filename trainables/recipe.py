"""Ray trainable for any recipe: the base config's own `recipe:` picks it.

Named `recipe` in a search space (`trainable: recipe`, `base: my_config.yaml` whose `recipe:` is
a bundled name or `package.module:Class`): a user's model family needs no trainable module.
"""

from __future__ import annotations

from typing import Any

from latent_tune.tune.trainable import run_trial

RECIPE = None  # keep the base config's recipe


def train(config: dict[str, Any]) -> None:
    """One trial of the base config's recipe, trained epoch by epoch."""
    run_trial(config)
