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
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import ray
from ray import tune

from latent_tune.atomic import atomic_write_text
from latent_tune.errors import CliParser, UserInputError, run_cli
from latent_tune.tune.capacity import check_capacity, node_capacities
from latent_tune.tune.files import TRIALS_FILE
from latent_tune.tune.progress import Progress
from latent_tune.tune.ray_session import (
    QUIET_ENV,
    connect,
    env,
    needs_loopback_restart,
    restart_with_loopback,
)
from latent_tune.tune.records import SPACE_FILE
from latent_tune.tune.resolve import META_KEY, resolve_trainable
from latent_tune.tune.results import error_text
from latent_tune.tune.run import run_config
from latent_tune.tune.space import SearchSpace, load_space
from latent_tune.tune.verify_plan import (
    DEFAULT_SEEDS,
    DEFAULT_TOP,
    PLAN_FILE,
    SEED_KEY,
    VERIFIED_FILE,
    VerifyPlan,
    check_count,
    make_verify_plan,
    refuse_population_based,
)
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

CONFIG_KEY = "config_id"  # the Tune config of a run: config_id x training.seed (a grid)


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
        run_config=run_config(sp, plan.name, plan.storage),
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
    check_count("--verify", k, None, "configurations to verify after the search")
    refuse_population_based(space, file)
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
