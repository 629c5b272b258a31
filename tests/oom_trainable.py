"""Test-only trainable: the staggered recipe, except one configuration always runs out of memory.

Why: trial failures (issue 5, item 3) must be shown with a real Tune trial that raises the way
a CUDA OOM does, without a GPU. Named in a space as `tests.oom_trainable:train`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ray import tune

from latent_tune.tune.trainable import run_trial

RECIPE = "staggered"
OOM_LEARNING_RATE = 2.0e-3  # the trial with this learning rate fails every attempt
ATTEMPTS_FILE = "attempts.txt"  # one line per attempt (lr, trial id, pid), in the trial dir


def train(config: dict[str, Any]) -> None:
    """Record the attempt; raise a simulated CUDA OOM for the marked trial, else train."""
    ctx = tune.get_context()
    lr = float(config.get("training.learning_rate", 0.0))
    with open(Path(ctx.get_trial_dir()) / ATTEMPTS_FILE, "a", encoding="utf-8") as f:
        f.write(f"{lr!r} {ctx.get_trial_id()} {os.getpid()}\n")
    if abs(lr - OOM_LEARNING_RATE) < 1e-12:
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
    run_trial(config, recipe=RECIPE)
