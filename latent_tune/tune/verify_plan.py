"""What a verification will run, checked before Ray starts and before anything is written.

Why apart from the command: every refusal (no such experiment, no records, a PBT experiment,
--top or --seeds out of range, a resume with other settings) happens here, so the command
can only fail on bad input before it has touched the experiment dir.
"""

from __future__ import annotations

import importlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from latent_tune.errors import UserInputError
from latent_tune.sanity import load_yaml_mapping
from latent_tune.training.config_loading import flatten, validate_config
from latent_tune.tune.files import TRIALS_FILE
from latent_tune.tune.plan import storage_location
from latent_tune.tune.records import BASE_CONFIG_FILE, SPACE_FILE
from latent_tune.tune.resolve import resolve_trainable, trial_config
from latent_tune.tune.space import SearchSpace, load_space
from latent_tune.tune.verify_table import BASE_ID

__all__ = [
    "DEFAULT_SEEDS",
    "DEFAULT_TOP",
    "PLAN_FILE",
    "SEED_KEY",
    "VERIFIED_FILE",
    "VERIFY_DIR",
    "VerifyPlan",
    "check_count",
    "make_verify_plan",
    "refuse_population_based",
]

DEFAULT_TOP, DEFAULT_SEEDS = 3, 3
SEED_STEP = 1000  # verification seed i (from 0): the base's training.seed + SEED_STEP * (i + 1)
VERIFY_DIR = "verify"  # the verification's Tune experiment inside the search's experiment dir
VERIFIED_FILE = "verified.parquet"
PLAN_FILE = "verify_plan.json"  # what a verification started with (a resume must match it)
SEED_KEY = "training.seed"
_POP = (
    "is population-based: a configuration there is a schedule, not a fixed recipe; `verify` "
    "supports ASHA/FIFO experiments; PBT replay is future work"
)


@dataclass
class VerifyPlan:
    exp_dir: Path
    space: SearchSpace
    space_file: Path
    base_text: str
    recipe: str | None
    epochs: int
    configs: dict[str, dict[str, Any]]  # config id -> tuned values (base: the base's values)
    search_rank: dict[str, int]
    search_value: dict[str, float]
    seeds: list[int]
    storage: str
    name: str
    local_storage: bool

    @property
    def tune_path(self) -> str:
        return f"{self.storage.rstrip('/')}/{self.name}"

    @property
    def params(self) -> list[str]:
        return list(self.space.space)

    def record(self) -> dict[str, Any]:
        return {"top": len(self.configs) - 1, "seeds": self.seeds, "configs": self.configs}


def _plain(v: Any) -> Any:
    """numpy scalars from Parquet -> Python values (ints stay ints)."""
    return v.item() if hasattr(v, "item") else v


def _load_space(exp: Path) -> tuple[SearchSpace, Path]:
    space_file = exp / SPACE_FILE
    for f in (TRIALS_FILE, SPACE_FILE, BASE_CONFIG_FILE):
        if not (exp / f).is_file():
            raise UserInputError(exp, None, f"no {f}: not the experiment dir of a finished search")
    space = load_space(space_file)
    refuse_population_based(space, space_file)
    return space, space_file


def refuse_population_based(space: SearchSpace, file: str | Path) -> None:
    """A PBT/PB2 configuration is a schedule: re-training its final values is not verifying it."""
    if space.population_based:
        raise UserInputError(file, "scheduler.type", f"{space.scheduler.type} {_POP}")


def check_count(flag: str, value: int, most: int | None, what: str) -> None:
    if value < 1 or (most is not None and value > most):
        bound = f"between 1 and {most}" if most is not None else "at least 1"
        raise UserInputError(flag, None, f"must be {bound} ({what}), got {value}")


def make_verify_plan(
    exp_dir: str | Path, top: int | None, seeds: int | None, storage: str | None
) -> VerifyPlan:
    """Check everything before Ray starts and before anything is written."""
    exp = Path(exp_dir).expanduser().resolve()
    if not exp.is_dir():
        raise UserInputError(exp_dir, None, "no such experiment directory")
    space, space_file = _load_space(exp)
    metric, mode = space.objective.metric, space.objective.mode
    trials = pd.read_parquet(exp / TRIALS_FILE)
    col = f"best_{metric}"
    if col not in trials.columns or "trial_id" not in trials.columns:
        raise UserInputError(exp / TRIALS_FILE, col, "missing: not the trials table of a search")
    trials = trials[pd.to_numeric(trials[col], errors="coerce").map(math.isfinite)]
    trials = trials.sort_values(col, ascending=mode == "min", kind="stable")
    store, local, _ = storage_location(storage, None)
    name = f"{exp.name}-{VERIFY_DIR}" if storage else VERIFY_DIR
    store = store if storage else str(exp)
    old = _old_plan(exp)
    if top is None:  # the recorded plan's, else the default (at most the trials there are)
        top = old["top"] if old else min(DEFAULT_TOP, max(1, len(trials)))
    n_seeds = seeds if seeds is not None else (len(old["seeds"]) if old else DEFAULT_SEEDS)
    check_count("--top", top, len(trials), f"trials of the search with a best {metric}")
    check_count("--seeds", n_seeds, None, "training seeds per configuration")
    base_file = exp / BASE_CONFIG_FILE
    base = load_yaml_mapping(base_file)
    base_cfg = validate_config(base, file=base_file)
    defaults = flatten(base_cfg)
    seed0 = int(base_cfg.training.seed)
    seed_list = [seed0 + SEED_STEP * (i + 1) for i in range(n_seeds)]
    params = list(space.space)
    head = trials.head(top)
    configs = {BASE_ID: {p: defaults.get(p) for p in params}}
    rank, value = {}, {}
    for i, (_, row) in enumerate(head.iterrows(), 1):
        tid = str(row["trial_id"])
        for p in params:  # a value missing would silently train the base's instead
            if p not in row or not _present(row[p]):
                raise UserInputError(exp / TRIALS_FILE, p, f"no value for trial {tid}")
        configs[tid] = {p: _plain(row[p]) for p in params}
        rank[tid] = int(row["rank"]) if "rank" in row else i
        value[tid] = float(row[col])
    fn = resolve_trainable(space.trainable, file=space_file)
    recipe = getattr(importlib.import_module(fn.__module__), "RECIPE", None)
    for cid, values in configs.items():  # a config that cannot train is found now
        run = values if cid != BASE_ID else {}
        trial_config(base, {**run, SEED_KEY: seed_list[0]}, recipe=recipe, file=space_file,
                     defaults=defaults)  # fmt: skip
    plan = VerifyPlan(
        exp, space, space_file, base_file.read_text(encoding="utf-8"), recipe,
        int(base_cfg.training.epochs), configs, rank, value, seed_list, store, name, local,
    )  # fmt: skip
    if old is not None and json.loads(json.dumps(plan.record(), default=str)) != old:
        raise UserInputError(
            exp / PLAN_FILE,
            None,
            f"this experiment's verification ran with --top {old['top']} --seeds "
            f"{len(old['seeds'])}: rerun with those to resume, or remove {exp / VERIFY_DIR} and "
            f"{exp / PLAN_FILE} to start again",
        )
    return plan


def _present(v: Any) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def _old_plan(exp: Path) -> dict[str, Any] | None:
    path = exp / PLAN_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        raise UserInputError(path, None, "not valid JSON (remove it to start again)") from None
