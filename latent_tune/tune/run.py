"""Build the Tuner of a search, run or resume it, and export and rank what it produced.

Why apart from the command: this is the part that needs a live Ray; the command module keeps
only argument parsing and the order of the steps.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import optuna
import ray
from ray import tune
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

from latent_tune.tune.capacity import check_capacity, node_capacities
from latent_tune.tune.checkpoints import CheckpointPruner
from latent_tune.tune.distributions import param_space, total_trials
from latent_tune.tune.export import export_all, write_objective_record
from latent_tune.tune.html_report import write_report_html
from latent_tune.tune.plan import Plan
from latent_tune.tune.progress import Progress
from latent_tune.tune.ranked_table import format_ranked
from latent_tune.tune.ray_session import dashboard_login_hint
from latent_tune.tune.records import SPACE_FILE, write_search_records
from latent_tune.tune.resolve import make_trial_fn
from latent_tune.tune.results import records_from_grid
from latent_tune.tune.schedulers import TIME_ATTR, build_scheduler, build_searcher
from latent_tune.tune.space import Objective, SearchSpace
from latent_tune.tune.stoppers import SearchStopper

__all__ = ["build_tuner", "check_plan_capacity", "print_where", "run_search", "write_html"]


def _trial_fn(plan: Plan) -> Any:
    sp = plan.res.space
    meta = {**plan.res.meta(), "smoothing": sp.objective.smoothing.model_dump()}
    return make_trial_fn(sp.trainable, meta, sp.name)


def build_tuner(plan: Plan) -> tuple[tune.Tuner, SearchStopper]:
    res, sp = plan.res, plan.res.space
    epochs = res.base_config.training.epochs
    sch = sp.scheduler
    stopper = SearchStopper(
        sp.objective.metric,
        sp.objective.mode,
        time_attr=TIME_ATTR,
        diverged_patience=sp.stopping.diverged_patience,
        interval=getattr(sch, "perturbation_interval", None),
        patience=getattr(sch, "patience", None),
        min_improvement=getattr(sch, "min_improvement", 5.0e-4),
        burn_in=getattr(sch, "burn_in", 0),
    )
    resources = {"cpu": sp.resources.cpu, "gpu": sp.resources.gpu}
    trainable = tune.with_resources(_trial_fn(plan), resources)
    tuner = tune.Tuner(
        trainable,
        param_space=param_space(sp),
        tune_config=tune.TuneConfig(
            metric=sp.objective.rank_metric,  # schedulers and searchers compare this key
            mode=sp.objective.mode,
            scheduler=build_scheduler(sp, epochs),
            search_alg=build_searcher(sp),
            num_samples=sp.trials.num_samples,
            max_concurrent_trials=sp.trials.max_concurrent
            if sp.searcher_type == "optuna"
            else None,
            reuse_actors=True,
        ),
        run_config=run_config(sp, plan.name, plan.storage, stopper),
    )
    return tuner, stopper


def run_config(sp: SearchSpace, name: str, storage: str, stop: Any = None) -> tune.RunConfig:
    """The RunConfig of every Tune run of the service (a search and its verification)."""
    return tune.RunConfig(
        name=name,
        storage_path=storage,
        stop=stop,
        verbose=0,
        callbacks=[
            Progress(sp.objective.metric, sp.objective.mode),
            CSVLoggerCallback(),
            JsonLoggerCallback(),
            CheckpointPruner(sp.checkpoint.keep),
        ],
        # retention by CheckpointPruner: Ray's num_to_keep can delete a PBT donor's
        # checkpoint before the exploiting trial has restored from it
        checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
        failure_config=tune.FailureConfig(max_failures=sp.trials.max_failures),
        sync_config=tune.SyncConfig(sync_artifacts=True),
    )


def _resume_command(plan: Plan, args: argparse.Namespace) -> str:
    parts = [
        "python",
        "-m",
        "latent_tune.search",
        args.space,
        "--resume",
        "--name",
        plan.name,
        "--storage",
        plan.storage,
    ]
    for s in args.sets:
        parts += ["--set", s]
    if args.address:
        parts += ["--address", args.address]
    return " ".join(parts)


def check_plan_capacity(plan: Plan, *, fixed: bool) -> None:
    """Refuse (own local Ray) or warn (a cluster) when no node can hold one trial."""
    res = plan.res.space.resources
    warning = check_capacity(
        node_capacities(ray.nodes()),
        res.cpu,
        res.gpu,
        file=plan.res.space_file,
        fixed=fixed,
    )
    if warning:
        print(warning, flush=True)


def _print_failed(trials: Any) -> None:
    """List trials that failed after all retries (the search still exits 0: it completed)."""
    if trials.empty or "status" not in trials.columns:
        return
    failed = trials[trials["status"] == "ERROR"]
    if failed.empty:
        return
    print(f"\n{len(failed)} of {len(trials)} trials failed (after their retries):")
    for _, row in failed.iterrows():
        print(f"  {row['trial_id']}: {row.get('error') or 'unknown error'}")


def print_where(plan: Plan, ctx: Any) -> None:
    """Where to look while the search runs: results, dashboard (and how to log in), TensorBoard."""
    print(f"results:     {plan.exp_path}")
    url = getattr(ctx, "dashboard_url", None)
    if url:
        print(f"dashboard:   http://{url}")
        hint = dashboard_login_hint()
        if hint:
            print(f"             {hint}")
    if plan.local_storage:
        print(f"tensorboard: tensorboard --logdir {plan.exp_path} --host 127.0.0.1")


def write_html(exp_dir: Path, objective: Objective) -> None:
    """report.html beside the tables, ranked like them; a failure costs one warning line."""
    try:
        out = write_report_html(
            [exp_dir], exp_dir / "report.html", metric=objective.rank_metric, mode=objective.mode
        )
    except Exception as exc:  # noqa: BLE001 - the search itself succeeded
        print(f"warning: report.html not written: {type(exc).__name__}: {exc}", flush=True)
    else:
        print(f"report:      {out}", flush=True)


def run_search(plan: Plan, args: argparse.Namespace, ctx: Any) -> int:
    sp = plan.res.space
    print_where(plan, ctx)
    for name in ("ray.tune", "ray.train", "ray.air"):
        logging.getLogger(name).setLevel(logging.WARNING)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    stopper: SearchStopper | None = None
    Progress.current = None
    if args.resume:
        print(
            f"resuming {plan.name} (finished trials are kept, running ones continue from "
            "their last checkpoint)",
            flush=True,
        )
        resources = {"cpu": sp.resources.cpu, "gpu": sp.resources.gpu}
        tuner = tune.Tuner.restore(
            plan.exp_path,
            tune.with_resources(_trial_fn(plan), resources),
            resume_unfinished=True,
            resume_errored=True,
        )
    else:
        tuner, stopper = build_tuner(plan)
    if plan.local_storage and not (args.resume and Path(plan.exp_path, SPACE_FILE).is_file()):
        write_search_records(Path(plan.exp_path), sp, plan.res.base_config)  # for `verify`
    if plan.local_storage:
        write_objective_record(Path(plan.exp_path), sp.objective.record())
    grid = tuner.fit()
    n_total = total_trials(sp)
    finished = grid.num_terminated + grid.num_errors
    # a plateau stop ends the search early on purpose; anything else unfinished = interrupted
    stopped_all = stopper is None or stopper.stop_all()
    progress = Progress.current
    unfinished = progress.unfinished() if progress is not None else len(grid) - finished
    interrupted = unfinished > 0 or (len(grid) < n_total and not stopped_all)
    if stopper is not None and stopper.reason:
        print(f"search stopped: {stopper.reason}")
    params = list(sp.space)
    if plan.local_storage:
        summary = export_all(
            records_from_grid(grid, params, progress.statuses if progress else None),
            Path(plan.exp_path),
            metric=sp.objective.metric,
            mode=sp.objective.mode,
            params=params,
            max_epochs=plan.res.base_config.training.epochs,
            pbt_dir=Path(plan.exp_path),
            rank_metric=sp.objective.rank_metric,
        )
        print()
        print(
            format_ranked(
                summary.trials, sp.objective.metric, params, rank_metric=sp.objective.rank_metric
            )
        )
        _print_failed(summary.trials)
        if summary.best_dir is not None:
            print(
                f"\nbest trial {summary.best_trial}: {summary.best_dir} "
                f"(retrain: python -m latent_tune.train {summary.best_dir}/config.yaml)"
            )
        if not summary.pbt_history.empty:
            print(
                f"PBT exploit/explore steps: {len(summary.pbt_history)} "
                f"({plan.exp_path}/pbt_history.parquet)"
            )
        if sp.report.html:
            write_html(Path(plan.exp_path), sp.objective)
    else:
        print(
            f"results stored at {plan.exp_path}; run `python -m latent_tune.report` on a "
            "local copy to rank them"
        )
    if interrupted:
        print(f"\nsearch interrupted; resume with:\n  {_resume_command(plan, args)}", flush=True)
        return 130
    return 0
