"""The `search` command: validate a space, connect to Ray, run Tune, export and rank results.

Why: one command a lab member runs on a laptop or a cluster. Everything that can be wrong in the
input is found before Ray starts (one line, exit 2); a local Ray stays on loopback; joining a
cluster is bounded in time; Ctrl+C leaves a resumable experiment and prints how to resume.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import logging
import math
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
import ray
from ray import tune
from ray.tune import Callback
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

from latent_tune.data.suite import ensure_demo_suite
from latent_tune.errors import UserInputError, run_cli
from latent_tune.tune.capacity import check_capacity, node_capacities
from latent_tune.tune.checkpoints import CheckpointPruner
from latent_tune.tune.distributions import param_space, preview_trials, total_trials
from latent_tune.tune.resolve import Resolved, bundled_dir, make_trial_fn, resolve
from latent_tune.tune.results import export_all, format_ranked, param_labels, records_from_grid
from latent_tune.tune.schedulers import TIME_ATTR, build_scheduler, build_searcher
from latent_tune.tune.space import find_space_file, load_space
from latent_tune.tune.stoppers import SearchStopper

__all__ = ["build_parser", "ensure_loopback_switch", "main", "start_local_ray"]

CONNECT_TIMEOUT_S = float(os.environ.get("LATENT_TUNE_CONNECT_TIMEOUT", "60"))
LOOPBACK_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": a one-node Ray on 127.0.0.1 only
# Ray reads the switch once, when `ray` is imported (above): whether this process has it on
LOOPBACK_AT_IMPORT = os.environ.get(LOOPBACK_SWITCH) == "0"
_LOCAL_ENV = {LOOPBACK_SWITCH: "0"}  # the processes a local start launches read it themselves
_QUIET_ENV = {
    "RAY_AIR_NEW_OUTPUT": "0",
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",  # we add CSV + JSON; no Tune TBX (own writers)
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    "RAY_DEDUP_LOGS": "1",
    # experiment-state snapshot period: after a SIGKILL of the driver, trials started in the
    # last few seconds are all that --resume cannot see (Tune's default is about 10 s or more)
    "TUNE_GLOBAL_CHECKPOINT_S": os.environ.get("TUNE_GLOBAL_CHECKPOINT_S", "3"),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m latent_tune.search",
        description="Run a Ray Tune hyperparameter search over an EED training recipe.",
    )
    p.add_argument("space", help="search-space YAML (a path, or a file name in search_spaces/)")
    p.add_argument(
        "--address",
        default=None,
        help="Ray cluster to join: auto or HOST:PORT (default: a local Ray, or "
        "$RAY_ADDRESS when set)",
    )
    p.add_argument(
        "--storage",
        default=None,
        help="experiment storage: a path or URI (default ./ray_results; "
        "a shared path or URI is required on a multi-node cluster)",
    )
    p.add_argument("--name", default=None, help="experiment name (default <space name>-<time>)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the experiment NAME (default: the newest one of this space)",
    )
    p.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a key of the space file (dotted, e.g. trials.num_samples=4)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="validate and print the resolved trial plan; start nothing",
    )
    return p


@dataclass
class Plan:
    res: Resolved
    storage: str
    name: str
    exp_path: str
    local_storage: bool


def _storage(arg: str | None, space_storage: str | None) -> tuple[str, bool, bool]:
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


def _plan(args: argparse.Namespace) -> Plan:
    space_file = find_space_file(args.space, bundled_dir("search_spaces"))
    space = load_space(space_file, args.sets)
    res = resolve(space, space_file)
    storage, local, _ = _storage(args.storage, space.storage)
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


def _print_plan(plan: Plan) -> None:
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
    print("first trials (seeded preview):")
    labels = param_labels(sp.space)
    for i, params in enumerate(preview_trials(sp)):
        vals = ", ".join(f"{labels[k]}={_short(v)}" for k, v in params.items())
        print(f"  {i:3d}  {vals}")


def _short(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


@contextlib.contextmanager
def _env(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for a block and restore them (never leak the loopback switch
    into a later multi-node connection in the same process)."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _has_dashboard() -> bool:
    if os.environ.get("LATENT_TUNE_DASHBOARD", "1") == "0":
        return False
    return all(importlib.util.find_spec(m) is not None for m in ("aiohttp", "aiohttp_cors"))


def _check_reachable(address: str) -> None:
    """Fail fast on HOST:PORT nobody listens on (ray.init would hang for minutes)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise UserInputError("--address", None, f"expected auto or HOST:PORT, got '{address}'")
    try:
        with socket.create_connection((host, int(port)), timeout=5):
            pass
    except OSError as exc:
        raise UserInputError(
            "--address", None, f"no Ray cluster reachable at {address}: {exc.strerror or exc}"
        ) from None


def _init_with_timeout(**kwargs: Any) -> Any:
    """ray.init in a thread, bounded by CONNECT_TIMEOUT_S."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["ctx"] = ray.init(**kwargs)
        except Exception as exc:  # reported below as one line
            box["err"] = exc

    th = threading.Thread(target=target, daemon=True)
    th.start()
    th.join(CONNECT_TIMEOUT_S)
    if th.is_alive():
        raise UserInputError(
            "--address",
            None,
            f"Ray at {kwargs.get('address')} did not answer within {CONNECT_TIMEOUT_S:.0f} s",
        )
    if "err" in box:
        msg = " ".join(str(box["err"]).split())[:300]
        raise UserInputError(
            "--address", None, f"cannot join Ray at {kwargs.get('address')}: {msg}"
        )
    return box["ctx"]


def start_local_ray(runtime_env: dict[str, Any] | None = None, **init_kwargs: Any) -> Any:
    """Start the one-node Ray of a local search: every listener (GCS, raylet, object manager,
    dashboard) on loopback only. One function so the security test starts Ray exactly so.

    Ray decides its node address from `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`, read into the
    driver when `ray` is imported; set later, only the started processes see it and the driver
    still binds all interfaces. So this process must have had it from the start: the command
    re-executes itself with it (see `main`), an embedding program or test sets it first.
    """
    if not LOOPBACK_AT_IMPORT:
        raise UserInputError(
            LOOPBACK_SWITCH,
            None,
            "a local Ray started in this process would listen on every interface: set "
            f"{LOOPBACK_SWITCH}=0 before importing ray, or join a cluster with --address",
        )
    kwargs: dict[str, Any] = {
        "include_dashboard": _has_dashboard(),
        "log_to_driver": False,
        "logging_level": logging.WARNING,
        "runtime_env": runtime_env,
        **init_kwargs,  # tests: num_cpus, include_dashboard=False
    }
    with _env(_LOCAL_ENV):
        ctx = ray.init(address="local", dashboard_host="127.0.0.1", **kwargs)
    _start_watchdog(ctx.address_info["session_dir"])
    return ctx


def _needs_loopback_restart(args: argparse.Namespace) -> bool:
    """This command will start a local Ray, but its `ray` was imported without the switch."""
    local = (args.address or os.environ.get("RAY_ADDRESS") or "local") == "local"
    return local and not args.dry_run and not LOOPBACK_AT_IMPORT and not ray.is_initialized()


def ensure_loopback_switch() -> None:
    """For a program that starts a local Ray itself (benchmarks): when its `ray` was imported
    without the loopback switch, re-execute it with the switch (same PID, about 2 s)."""
    if not LOOPBACK_AT_IMPORT and not ray.is_initialized():
        _restart_with_loopback()


def _restart_with_loopback() -> None:
    """Replace this process by the same command with the switch set (same PID, ~2 s)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, list(sys.orig_argv), {**os.environ, **_LOCAL_ENV})


def _start_watchdog(session_dir: str) -> None:
    """A small process that stops this session's Ray processes if the driver is killed."""
    subprocess.Popen(
        [sys.executable, "-m", "latent_tune.tune.watchdog", str(os.getpid()), session_dir],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # survives a SIGKILL of the driver's process group
    )


def _connect(address: str | None, plan: Plan, storage_given: bool) -> tuple[Any, bool]:
    """Start a local Ray (loopback) or join a cluster. Returns (context, started_locally)."""
    if ray.is_initialized():  # an embedding program (or a test) already connected: use it
        return ray.get_runtime_context(), False
    address = address or os.environ.get("RAY_ADDRESS") or None
    runtime_env = {"env_vars": {"PYTHONPATH": os.pathsep.join(_pythonpath())}}
    if address in (None, "local"):
        return start_local_ray(runtime_env), True
    if address != "auto":
        _check_reachable(address)
    ctx = _init_with_timeout(
        address=address, log_to_driver=False, logging_level=logging.WARNING, runtime_env=runtime_env
    )
    alive = [n for n in ray.nodes() if n.get("Alive")]
    if len(alive) > 1 and not storage_given:
        ray.shutdown()
        raise UserInputError(
            "--storage",
            None,
            f"the cluster has {len(alive)} nodes: give shared storage "
            "(a path every node mounts, or s3:// / gs://) with --storage or `storage:`",
        )
    return ctx, False


def _pythonpath() -> list[str]:
    """Workers must import `trainables` and `latent_tune` the way the driver does."""
    here = [str(Path.cwd())]
    for pkg in ("latent_tune", "trainables"):
        spec = importlib.util.find_spec(pkg)
        if spec is not None and spec.submodule_search_locations:
            here.append(str(Path(next(iter(spec.submodule_search_locations))).parent))
    old = os.environ.get("PYTHONPATH", "")
    return list(dict.fromkeys([*here, *[p for p in old.split(os.pathsep) if p]]))


class Progress(Callback):
    """Compact live progress: one line per finished trial and a status line every few seconds."""

    current: Progress | None = None  # the driver's live instance (also after Tuner.restore)

    def __init__(self, metric: str, mode: str, every_s: float = 15.0) -> None:
        self.metric, self.mode, self.every_s = metric, mode, every_s
        self.best: tuple[float, str, int] | None = None
        self.last_print = 0.0
        self.t0 = time.time()
        self.statuses: dict[str, str] = {}
        Progress.current = self

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.t0, self.last_print, self.statuses = time.time(), 0.0, {}
        Progress.current = self

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self.statuses = {t.trial_id: str(t.status) for t in trials}

    def unfinished(self) -> int:
        """Trials not TERMINATED/ERROR at the last step (after Ctrl+C: > 0)."""
        return sum(s not in ("TERMINATED", "ERROR") for s in self.statuses.values())

    def _better(self, v: float) -> bool:
        if self.best is None:
            return True
        return v < self.best[0] if self.mode == "min" else v > self.best[0]

    def _line(self, trials: list) -> str:
        counts: dict[str, int] = {}
        for t in trials:
            counts[t.status] = counts.get(t.status, 0) + 1
        state = ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items()))
        best = ""
        if self.best is not None:
            best = (
                f" | best {self.metric} {self.best[0]:.4g} ({self.best[1]}, epoch {self.best[2]})"
            )
        return f"[{time.time() - self.t0:6.0f}s] {state}{best}"

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        v = result.get(self.metric)
        if (
            isinstance(v, int | float)
            and math.isfinite(v)
            and not result.get("diverged")
            and self._better(float(v))
        ):
            self.best = (float(v), trial.trial_id, int(result.get(TIME_ATTR, 0)))
        if time.time() - self.last_print >= self.every_s:
            self.last_print = time.time()
            print(self._line(trials), flush=True)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        last = trial.last_result or {}
        v = last.get(self.metric)
        vs = f"{v:.4g}" if isinstance(v, float) else str(v)
        print(
            f"  trial {trial.trial_id} finished at epoch {last.get(TIME_ATTR, '?')}: "
            f"{self.metric} {vs}",
            flush=True,
        )

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        print(f"  trial {trial.trial_id} failed (see {trial.path}/error.txt)", flush=True)


def _trial_fn(plan: Plan) -> Any:
    return make_trial_fn(plan.res.space.trainable, plan.res.meta(), plan.res.space.name)


def _build_tuner(plan: Plan) -> tuple[tune.Tuner, SearchStopper]:
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
            metric=sp.objective.metric,
            mode=sp.objective.mode,
            scheduler=build_scheduler(sp, epochs),
            search_alg=build_searcher(sp),
            num_samples=sp.trials.num_samples,
            max_concurrent_trials=sp.trials.max_concurrent
            if sp.searcher_type == "optuna"
            else None,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=plan.name,
            storage_path=plan.storage,
            stop=stopper,
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
        ),
    )
    return tuner, stopper


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


def _search(args: argparse.Namespace) -> int:
    plan = _plan(args)
    sp = plan.res.space
    if args.dry_run:
        _print_plan(plan)
        return 0
    if plan.res.base_config.data.suite is None:
        try:
            suite = ensure_demo_suite(plan.res.base_config.data.preset)
        except UserInputError as exc:  # name the space file: that is where data.suite goes
            raise UserInputError(plan.res.space_file, "overrides.data.suite", exc.problem) from None
        print(f"demo data: {suite}", flush=True)
    _, _, storage_given = _storage(args.storage, sp.storage)
    with _env(_QUIET_ENV):
        ctx, local = _connect(args.address, plan, storage_given)
        try:
            _check_capacity(plan, fixed=local)
            return _run(plan, args, ctx)
        finally:
            if local:
                ray.shutdown()


def _check_capacity(plan: Plan, *, fixed: bool) -> None:
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


def _run(plan: Plan, args: argparse.Namespace, ctx: Any) -> int:
    sp = plan.res.space
    print(f"results:     {plan.exp_path}")
    url = getattr(ctx, "dashboard_url", None)
    if url:
        print(f"dashboard:   http://{url}")
    if plan.local_storage:
        print(f"tensorboard: tensorboard --logdir {plan.exp_path} --host 127.0.0.1")
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
        tuner, stopper = _build_tuner(plan)
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
        )
        print()
        print(format_ranked(summary.trials, sp.objective.metric, params))
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
    else:
        print(
            f"results stored at {plan.exp_path}; run `python -m latent_tune.report` on a "
            "local copy to rank them"
        )
    if interrupted:
        print(f"\nsearch interrupted; resume with:\n  {_resume_command(plan, args)}", flush=True)
        return 130
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m latent_tune.search` (argv None) or of an embedding program."""
    args = build_parser().parse_args(argv)
    if argv is None and _needs_loopback_restart(args):
        _restart_with_loopback()
    return run_cli(lambda: _search(args))
