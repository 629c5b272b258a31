"""The resolved plan of a search: space, storage, experiment name, and its dry-run printout.

Why apart from the command: everything that can be wrong in the input is found here, before any
Ray process starts, and `--dry-run` prints exactly this plan.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from ray import tune

from latent_tune.bundled import bundled_dir
from latent_tune.errors import UserInputError
from latent_tune.tune.distributions import total_trials
from latent_tune.tune.preview import TPE_STARTUP, preview_trials
from latent_tune.tune.ranked_table import param_labels
from latent_tune.tune.resolve import Resolved, resolve
from latent_tune.tune.space import find_space_file, load_space

__all__ = ["Plan", "make_plan", "print_plan", "storage_location"]


@dataclass
class Plan:
    res: Resolved
    storage: str
    name: str
    exp_path: str
    local_storage: bool


def storage_location(arg: str | None, space_storage: str | None) -> tuple[str, bool, bool]:
    """(storage path or URI, is local path, given explicitly)."""
    value = arg or space_storage
    if value is None:
        return str(Path("ray_results").resolve()), True, False
    if "://" in value and not value.startswith("file://"):
        return value, False, True
    if value.startswith("file://"):
        value = value[len("file://") :]
    return str(Path(value).expanduser().resolve()), True, True


def _newest_experiment(storage: str, prefix: str) -> str | None:
    root = Path(storage)
    if not root.is_dir():
        return None
    cands = [
        p
        for p in root.iterdir()
        if p.is_dir() and p.name.startswith(prefix) and tune.Tuner.can_restore(str(p))
    ]
    return max(cands, key=lambda p: p.stat().st_mtime).name if cands else None


def make_plan(args: argparse.Namespace) -> Plan:
    space_file = find_space_file(args.space, bundled_dir("search_spaces"))
    space = load_space(space_file, args.sets)
    res = resolve(space, space_file)
    storage, local, _ = storage_location(args.storage, space.storage)
    if local and Path(storage).exists() and not Path(storage).is_dir():
        raise UserInputError("--storage", None, f"{storage} exists and is not a directory")
    name = args.name
    if args.resume and name is None:
        name = _newest_experiment(storage, f"{space.name}-") if local else None
        if name is None:
            raise UserInputError(
                "--resume",
                None,
                f"no experiment of '{space.name}' to resume under {storage} "
                "(give --name and --storage)",
            )
    if name is None:
        name = f"{space.name}-{datetime.now():%Y%m%d-%H%M%S}"
    if "/" in name or name in (".", ".."):
        raise UserInputError("--name", None, f"'{name}' is not a plain directory name")
    exp_path = f"{storage.rstrip('/')}/{name}"
    if args.resume and not tune.Tuner.can_restore(exp_path):
        raise UserInputError("--resume", None, f"no resumable experiment at {exp_path}")
    return Plan(res, storage, name, exp_path, local)


def print_plan(plan: Plan) -> None:
    sp = plan.res.space
    print(f"space:      {plan.res.space_file}")
    print(f"trainable:  {sp.trainable} (recipe {plan.res.recipe or '-'})")
    print(f"base:       {plan.res.base_file}")
    print(f"objective:  {sp.objective.mode} {sp.objective.metric}")
    sch = sp.scheduler.model_dump()
    print(f"scheduler:  {', '.join(f'{k}={v}' for k, v in sch.items() if v is not None)}")
    print(f"searcher:   {sp.searcher_type} (seed {sp.searcher.seed})")
    print(
        f"trials:     {total_trials(sp)} (max concurrent {sp.trials.max_concurrent or 'auto'}),"
        f" {plan.res.base_config.training.epochs} epochs each, resources {sp.resources.cpu} CPU"
        f" / {sp.resources.gpu} GPU per trial"
    )
    print(f"results:    {plan.exp_path}")
    print("parameters:")
    for k, e in sp.space.items():
        extra = (
            f" bounds {list(e.hard_bounds())}" if sp.population_based and e.hard_bounds() else ""
        )
        print(f"  {k}: {e.kind} {e.values}{extra}")
    if sp.searcher_type == "optuna":
        print(
            f"first trials (exactly what the search starts; Optuna's TPE adapts to results "
            f"after its first {TPE_STARTUP}):"
        )
    else:
        print("first trials (exactly what the search starts):")
    labels = param_labels(sp.space)
    for i, params in enumerate(preview_trials(sp)):
        vals = ", ".join(f"{labels[k]}={_short(v)}" for k, v in params.items())
        print(f"  {i:3d}  {vals}")


def _short(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)
