"""What a search leaves for its verification: the space, the base config and the windows.

Why: `verify` re-trains a search's best configurations and its base recipe long after the search
ended, maybe after the space file changed; so the experiment dir keeps the resolved space (after
`--set`), the validated base config every trial started from, and the evaluation windows every
trial was scored on. A space may not tune `evaluation.*`: the windows and the objective must be
the same for every trial, or their scores do not compare.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

from latent_tune.atomic import atomic_write_text
from latent_tune.data.sampling import eval_starts
from latent_tune.errors import UserInputError
from latent_tune.training.config import BaseTrainConfig
from latent_tune.training.data import load_run_data
from latent_tune.tune.space import SearchSpace

__all__ = [
    "BASE_CONFIG_FILE",
    "EVAL_WINDOWS_FILE",
    "SPACE_FILE",
    "check_fixed_evaluation",
    "eval_windows",
    "space_dict",
    "write_search_records",
]

SPACE_FILE = "space.yaml"  # the resolved search space (after --set)
BASE_CONFIG_FILE = "base_config.yaml"  # the base config with the space's overrides, validated
EVAL_WINDOWS_FILE = "eval_windows.json"  # the evaluation windows of every trial


def check_fixed_evaluation(space: SearchSpace, file: str | os.PathLike) -> None:
    """Refuse a space that tunes an `evaluation.*` key (one line naming the key)."""
    for key in space.space:
        if key == "evaluation" or key.startswith("evaluation."):
            raise UserInputError(
                file,
                f"space.{key}",
                "evaluation keys cannot be tuned: every trial must be scored on the same "
                "windows with the same objective (set it under overrides)",
            )


def eval_windows(cfg: BaseTrainConfig) -> dict[str, Any]:
    """The evaluation windows of a config, as the trainer draws them (no device copies).

    Starts are rows relative to each evaluation range (`ranges`: absolute [first, end)); the
    held-out test windows of the cross-val sets are under `test_ranges` / `test_starts`."""
    ev = cfg.evaluation
    selection, test = load_run_data(cfg).window_ranges(cfg)

    def starts_of(ranges: dict[str, tuple[int, int]]) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for name, (a, b) in ranges.items():
            try:
                s = eval_starts(b - a, ev.rollout_steps, ev.starts, ev.start_margin, ev.seed)
            except ValueError as exc:
                raise UserInputError(None, "evaluation.rollout_steps", f"{name}: {exc}") from None
            out[name] = [int(v) for v in s.tolist()]
        return out

    return {
        "seed": ev.seed,
        "start_margin": ev.start_margin,
        "rollout_steps": ev.rollout_steps,
        "test_fraction": ev.test_fraction,
        "starts": starts_of(selection),
        "ranges": {n: [int(a), int(b)] for n, (a, b) in selection.items()},
        "test_starts": starts_of(test),
        "test_ranges": {n: [int(a), int(b)] for n, (a, b) in test.items()},
    }


def space_dict(space: SearchSpace) -> dict[str, Any]:
    """The space with every default filled in; it loads back as the same space.

    PBT/PB2 checkpoint on their perturbation boundaries whatever `checkpoint.every` says, so
    the dump says so too (the loader refuses any other explicit value)."""
    d = space.model_dump(mode="json")
    interval = getattr(space.scheduler, "perturbation_interval", None)
    if interval is not None:
        d["checkpoint"]["every"] = interval
    return d


def write_search_records(exp_dir: Path, space: SearchSpace, base_config: BaseTrainConfig) -> None:
    """space.yaml, base_config.yaml and eval_windows.json in the experiment dir (atomic each)."""
    exp_dir = Path(exp_dir)
    windows = eval_windows(base_config)  # before anything is written: it may refuse the data
    exp_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(exp_dir / SPACE_FILE, yaml.safe_dump(space_dict(space), sort_keys=False))
    atomic_write_text(exp_dir / BASE_CONFIG_FILE, base_config.to_yaml())
    atomic_write_text(exp_dir / EVAL_WINDOWS_FILE, json.dumps(windows, indent=2) + "\n")
