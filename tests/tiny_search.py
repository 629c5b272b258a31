"""Tiny search spaces for the Ray tests: the tiny staggered recipe, about a second per epoch.

Why one place: every Ray test (search, failures, divergence, load, driver kill, node loss,
multi-node) runs a real search of the same tiny recipe; only the epochs, the batch count and a
few sections differ, and each test names just those. Not a test module (no `test_` prefix).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from latent_tune.search import main as search_main

__all__ = [
    "FIRST_FINISH_S",
    "LR_SPACE",
    "run_search",
    "tiny_overrides",
    "tiny_space",
    "write_space",
]

# the most a tiny search may take to finish its first trial, Ray start included: a waiting bound,
# never a timing (a run that finishes sooner moves on at once); 240 s ran out on 2 cores with
# two busy-loop processes beside the tests
FIRST_FINISH_S = 600
LR_SPACE = {"training.learning_rate": {"loguniform": [3e-4, 3e-3]}}


def tiny_overrides(epochs: int, changes: dict[str, Any] | None = None) -> dict[str, Any]:
    """Training-config overrides (dotted) of a fast tiny trial, with `changes` applied."""
    return {
        "training.epochs": epochs,
        "training.chunks_per_epoch": 1,
        "training.batches_per_chunk": 10,
        "evaluation.rollout_steps": 150,
        "evaluation.starts": 2,
        "evaluation.figures_every": 0,
        **(changes or {}),
    }


def tiny_space(name: str, overrides: dict[str, Any], **sections: Any) -> dict[str, Any]:
    """A FIFO search over the learning rate of the tiny recipe, no report.html; `sections`
    replace the defaults."""
    space: dict[str, Any] = {
        "name": name,
        "trainable": "eed_staggered",
        "base": "eed_staggered_tiny.yaml",
        "overrides": overrides,
        "scheduler": {"type": "fifo"},
        "searcher": {"type": "random", "seed": 0},
        "space": LR_SPACE,
        "resources": {"cpu": 1},
        "stopping": {"diverged_patience": 0},
        "report": {"html": False},  # the HTML page has its own tests; keep the Ray tests fast
    }
    space.update(sections)
    return space


def write_space(directory: Path, space: dict[str, Any]) -> Path:
    """The space as `<directory>/<name>.yaml`, ready for the search command."""
    path = directory / f"{space['name']}.yaml"
    path.write_text(yaml.safe_dump(space))
    return path


def run_search(argv: Sequence[str]) -> tuple[int, str]:
    """The search command in this process (Ray already started by the test): (status, stdout)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = search_main(list(argv))
    return rc, out.getvalue()
