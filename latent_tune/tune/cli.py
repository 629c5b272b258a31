"""The `search` command: validate a space, connect to Ray, run Tune, export and rank results.

Why: one command a lab member runs on a laptop or a cluster. Everything that can be wrong in the
input is found before Ray starts (one line, exit 2); a local Ray stays on loopback; joining a
cluster is bounded in time; Ctrl+C leaves a resumable experiment and prints how to resume.
The steps live in small modules: plan (input and dry run), ray_session (Ray start or join),
run (Tuner, export, ranking), progress (live output).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import ray

from latent_tune.data.suite import ensure_demo_suite
from latent_tune.errors import CliParser, UserInputError, run_cli
from latent_tune.tune.plan import make_plan, print_plan, storage_location
from latent_tune.tune.ray_session import (
    LOOPBACK_AT_IMPORT,
    LOOPBACK_SWITCH,
    QUIET_ENV,
    connect,
    ensure_loopback_switch,
    env,
    needs_loopback_restart,
    restart_with_loopback,
    start_local_ray,
)
from latent_tune.tune.run import check_plan_capacity, run_search
from latent_tune.tune.verify import check_search_verify, verify_after_search

# re-exported: programs and tests that start a local Ray import them from here
__all__ = [
    "LOOPBACK_AT_IMPORT",
    "LOOPBACK_SWITCH",
    "build_parser",
    "ensure_loopback_switch",
    "main",
    "start_local_ray",
]


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(
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
    p.add_argument(
        "--verify",
        type=int,
        default=None,
        metavar="K",
        help="after the search, re-train its top K configurations and the base with new "
        "seeds (python -m latent_tune.verify)",
    )
    return p


def _search(args: argparse.Namespace) -> int:
    plan = make_plan(args)
    sp = plan.res.space
    check_search_verify(args.verify, sp, plan.local_storage, plan.res.space_file)
    if args.dry_run:
        print_plan(plan)
        return 0
    if plan.res.base_config.data.suite is None:
        try:
            suite = ensure_demo_suite(plan.res.base_config.data.preset)
        except UserInputError as exc:  # name the space file: that is where data.suite goes
            raise UserInputError(plan.res.space_file, "overrides.data.suite", exc.problem) from None
        print(f"demo data: {suite}", flush=True)
    _, _, storage_given = storage_location(args.storage, sp.storage)
    with env(QUIET_ENV):
        ctx, local = connect(args.address, storage_given)
        try:
            check_plan_capacity(plan, fixed=local)
            rc = run_search(plan, args, ctx)
            if rc == 0 and args.verify:
                rc = verify_after_search(plan.exp_path, args.verify, args.address)
            return rc
        finally:
            if local:
                ray.shutdown()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m latent_tune.search` (argv None) or of an embedding program."""

    def body() -> int:
        args = build_parser().parse_args(argv)
        if argv is None and needs_loopback_restart(args.address, args.dry_run):
            restart_with_loopback()
        return _search(args)

    return run_cli(body)
