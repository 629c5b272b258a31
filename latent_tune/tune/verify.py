"""The `verify` command: re-train a search's best configurations and its base with new seeds.

Why: a search crowns the trial with the best per-epoch rollout score, and that score is chaotic
in the training seed, so the crowned number is partly luck. Verification re-trains the top K
configurations and the base recipe with S new training seeds each, the same seeds for every
configuration (paired), all epochs, no early stopping, and ranks them by the mean over seeds:
the number it prints is what a user gets when training that recipe again. It runs as Tune trials
on the same Ray a search would use and resumes like a search.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import ray
from ray import tune
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

from latent_tune.atomic import atomic_write_text
from latent_tune.errors import CliParser, UserInputError, run_cli
from latent_tune.sanity import load_yaml_mapping
from latent_tune.training.config import flatten, validate_config
from latent_tune.tune.capacity import check_capacity, node_capacities
from latent_tune.tune.checkpoints import CheckpointPruner
from latent_tune.tune.files import TRIALS_FILE
from latent_tune.tune.plan import storage_location
from latent_tune.tune.progress import Progress
from latent_tune.tune.ray_session import (
    QUIET_ENV,
    connect,
    env,
    needs_loopback_restart,
    restart_with_loopback,
)
from latent_tune.tune.records import BASE_CONFIG_FILE, SPACE_FILE
from latent_tune.tune.resolve import META_KEY, resolve_trainable, trial_config
from latent_tune.tune.results import error_text
from latent_tune.tune.space import SearchSpace, load_space
from latent_tune.tune.verify_table import (
    BASE_ID,
    BEST_SEARCH_DIR,
    export_winner,
    format_verified,
    run_result,
    typical_run,
    verified_table,
    write_verified,
)

__all__ = [
    "DEFAULT_SEEDS",
    "DEFAULT_TOP",
    "VERIFIED_FILE",
    "VerifyPlan",
    "build_parser",
    "check_search_verify",
    "main",
    "make_verify_plan",
    "run_verify",
    "verify_after_search",
]

DEFAULT_TOP, DEFAULT_SEEDS = 3, 3
SEED_STEP = 1000  # verification seed i (from 0): the base's training.seed + SEED_STEP * (i + 1)
VERIFY_DIR = "verify"  # the verification's Tune experiment inside the search's experiment dir
VERIFIED_FILE = "verified.parquet"
PLAN_FILE = "verify_plan.json"  # what a verification started with (a resume must match it)
CONFIG_KEY = "config_id"  # the Tune config of a run: config_id x training.seed (a grid)
SEED_KEY = "training.seed"
_POP = (
    "is population-based: a configuration there is a schedule, not a fixed recipe; `verify` "
    "supports ASHA/FIFO experiments; PBT replay is future work"
)


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(
        prog="python -m latent_tune.verify",
        description="Re-train a search's top configurations and its base recipe with new "
        "training seeds (paired) and rank them by the mean over seeds.",
    )
    p.add_argument("experiment", help="experiment dir of a finished search (holds trials.parquet)")
    p.add_argument(
        "--top", type=int, default=None, help=f"configurations to verify (default {DEFAULT_TOP})"
    )
    p.add_argument(
        "--seeds", type=int, default=None, help=f"training seeds each (default {DEFAULT_SEEDS})"
    )
    p.add_argument("--address", default=None, help="Ray cluster to join (default: a local Ray)")
    p.add_argument(
        "--storage",
        default=None,
        help="where the runs are stored: a path or URI (default <experiment>/verify)",
    )
    return p


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
    if space.population_based:
        raise UserInputError(space_file, "scheduler.type", f"{space.scheduler.type} {_POP}")
    return space, space_file


def _check_count(flag: str, value: int, most: int | None, what: str) -> None:
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
    _check_count("--top", top, len(trials), f"trials of the search with a best {metric}")
    _check_count("--seeds", n_seeds, None, "training seeds per configuration")
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
        configs[tid] = {p: _plain(row[p]) for p in params if p in row and _present(row[p])}
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


def _trial_fn(plan: VerifyPlan) -> Any:
    """Each run: the configuration's tuned values + its training seed, through run_trial."""
    sp, configs = plan.space, {k: dict(v) for k, v in plan.configs.items()}
    meta = {
        "base": plan.base_text,
        "space_file": str(plan.space_file),
        "checkpoint_every": sp.checkpoint.every,
        "perturbation_interval": 0,
        "cpu": sp.resources.cpu,
        "gpu": sp.resources.gpu,
        "metric": sp.objective.metric,
        "recipe": plan.recipe,
    }
    configs[BASE_ID] = {}  # the base runs base_config.yaml as it is
    trainable = sp.trainable

    def trial(config: dict[str, Any]) -> Any:
        values = {**configs[config[CONFIG_KEY]], SEED_KEY: int(config[SEED_KEY])}
        return resolve_trainable(trainable)({**values, META_KEY: meta})

    trial.__name__ = trial.__qualname__ = f"{sp.name}-verify"
    return tune.with_resources(trial, {"cpu": sp.resources.cpu, "gpu": sp.resources.gpu})


def _tuner(plan: VerifyPlan) -> tune.Tuner:
    sp = plan.space
    if tune.Tuner.can_restore(plan.tune_path):
        print(f"resuming {plan.tune_path} (finished runs are kept)", flush=True)
        return tune.Tuner.restore(
            plan.tune_path, _trial_fn(plan), resume_unfinished=True, resume_errored=True
        )
    return tune.Tuner(
        _trial_fn(plan),
        param_space={
            CONFIG_KEY: tune.grid_search(list(plan.configs)),
            SEED_KEY: tune.grid_search(plan.seeds),
        },
        tune_config=tune.TuneConfig(
            metric=sp.objective.metric,
            mode=sp.objective.mode,
            num_samples=1,
            max_concurrent_trials=sp.trials.max_concurrent,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=plan.name,
            storage_path=plan.storage,
            verbose=0,
            callbacks=[
                Progress(sp.objective.metric, sp.objective.mode),
                CSVLoggerCallback(),
                JsonLoggerCallback(),
                CheckpointPruner(sp.checkpoint.keep),
            ],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
            failure_config=tune.FailureConfig(max_failures=sp.trials.max_failures),
            sync_config=tune.SyncConfig(sync_artifacts=True),
        ),
    )


def _resume_command(plan: VerifyPlan, address: str | None, storage: str | None) -> str:
    parts = ["python -m latent_tune.verify", str(plan.exp_dir), "--top", str(len(plan.configs) - 1)]
    parts += ["--seeds", str(len(plan.seeds))]
    parts += ["--storage", storage] if storage else []
    parts += ["--address", address] if address else []
    return " ".join(parts)


def run_verify(plan: VerifyPlan, *, address: str | None = None, storage: str | None = None) -> int:
    """Run (or resume) the verification runs on the connected Ray, then table, print, export."""
    sp, exp = plan.space, plan.exp_dir
    metric, mode = sp.objective.metric, sp.objective.mode
    atomic_write_text(exp / PLAN_FILE, json.dumps(plan.record(), indent=2, default=str) + "\n")
    print(
        f"verifying {len(plan.configs) - 1} configuration(s) of {exp.name} and the base recipe "
        f"with training seeds {plan.seeds} (the same for every configuration), "
        f"{plan.epochs} epochs each: {len(plan.configs) * len(plan.seeds)} runs at "
        f"{plan.tune_path}",
        flush=True,
    )
    Progress.current = None
    grid = _tuner(plan).fit()
    progress = Progress.current
    unfinished = progress.unfinished() if progress is not None else 0
    runs = []
    for r in grid:
        cfg = r.config or {}
        runs.append(
            run_result(
                str(cfg.get(CONFIG_KEY)), int(cfg.get(SEED_KEY, -1)), r.metrics_dataframe,
                metric=metric, mode=mode, epochs=plan.epochs,
                trial_id=str((r.metrics or {}).get("trial_id", Path(r.path or "?").name)),
                checkpoint=r.checkpoint, error=None if r.error is None else error_text(r.error),
            )
        )  # fmt: skip
    if unfinished or len(runs) < len(plan.configs) * len(plan.seeds):
        print(
            f"\nverification interrupted; resume with:\n  "
            f"{_resume_command(plan, address, storage)}",
            flush=True,
        )
        return 130
    for r in runs:
        if not r.complete:
            print(f"  run {r.config_id} seed {r.seed} failed: {r.error or 'did not finish'}")
    df = verified_table(
        runs, configs=plan.configs, search_rank=plan.search_rank, search_value=plan.search_value,
        params=plan.params, metric=metric, mode=mode,
    )  # fmt: skip
    write_verified(df, exp / VERIFIED_FILE)
    print(f"\n{metric} ({mode}) over seeds {plan.seeds}; best = a run's best epoch, final = its "
          "last; best - base paired by seed")  # fmt: skip
    print(format_verified(df, plan.params, mode))
    _export(plan, runs, df)
    print(f"table: {exp / VERIFIED_FILE}")
    return 0


def _export(plan: VerifyPlan, runs: list, df: pd.DataFrame) -> None:
    metric, win = plan.space.objective.metric, df.iloc[0]
    run = typical_run(runs, str(win["trial_id"]), float(win["best_mean"]))
    if run is None:
        print("no configuration finished a run with a finite objective: nothing exported")
        return
    out = export_winner(plan.exp_dir, run, win.to_dict(), metric)
    who = "the base recipe" if win["role"] == "base" else f"configuration {win['trial_id']}"
    print(
        f"\nverified winner: {who}, mean best {win['best_mean']:.4g} over {win['n']} seeds\n"
        f"exported to {out}: its run with seed {run.seed} (best {run.best:.4g}, epoch "
        f"{run.best_epoch}), the run whose best is closest to the mean: the typical run, not "
        f"the luckiest{_search_export(plan.exp_dir)}\n"
        f"retrain: python -m latent_tune.train {out}/config.yaml"
    )


def _search_export(exp: Path) -> str:
    moved = exp / BEST_SEARCH_DIR
    return f"; the search's own export is in {moved}" if moved.is_dir() else ""


def check_search_verify(k: int | None, space: SearchSpace, local: bool, file: Path) -> None:
    """`search --verify K`, checked before the search starts."""
    if k is None:
        return
    _check_count("--verify", k, None, "configurations to verify after the search")
    if space.population_based:
        raise UserInputError(file, "scheduler.type", f"{space.scheduler.type} {_POP}")
    if not local:
        raise UserInputError("--verify", None, "needs a local --storage (the search's tables)")


def verify_after_search(exp_path: str, k: int, address: str | None) -> int:
    """`search --verify K`: verify the top K (at most the trials that have a best) at once."""
    exp = Path(exp_path)
    trials = pd.read_parquet(exp / TRIALS_FILE) if (exp / TRIALS_FILE).is_file() else None
    space = load_space(exp / SPACE_FILE)
    col = f"best_{space.objective.metric}"
    n = 0 if trials is None or col not in trials else int(trials[col].map(math.isfinite).sum())
    if n == 0:
        print("no trial has a finite objective: nothing to verify")
        return 0
    print(f"\n--verify {k}: re-training the top {min(k, n)} with {DEFAULT_SEEDS} seeds each\n")
    return run_verify(make_verify_plan(exp, min(k, n), None, None), address=address)


def _verify(args: argparse.Namespace, argv: Sequence[str] | None) -> int:
    plan = make_verify_plan(args.experiment, args.top, args.seeds, args.storage)
    if argv is None and needs_loopback_restart(args.address, False):
        restart_with_loopback()
    with env(QUIET_ENV):
        _, local = connect(args.address, args.storage is not None)
        try:
            res = plan.space.resources
            warning = check_capacity(
                node_capacities(ray.nodes()), res.cpu, res.gpu, file=plan.space_file, fixed=local
            )
            if warning:
                print(warning, flush=True)
            return run_verify(plan, address=args.address, storage=args.storage)
        finally:
            if local:
                ray.shutdown()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m latent_tune.verify` (argv None) or of a test."""
    return run_cli(lambda: _verify(build_parser().parse_args(argv), argv))
