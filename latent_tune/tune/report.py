"""The `report` command: the ranked comparison of one or several experiments, again.

Why: after a search (or on a copy of its results) the lab wants the ranking without Ray; with
several experiment dirs the trials are ranked side by side with an `experiment` column.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from latent_tune.errors import CliParser, UserInputError, run_cli
from latent_tune.tune.files import TRIALS_FILE
from latent_tune.tune.html_report import write_report_html
from latent_tune.tune.results import format_ranked, rank_trials, records_from_dir, trials_table

__all__ = ["load_trials", "main"]

_FIXED = {
    "rank",
    "trial_id",
    "status",
    "epochs",
    "best_epoch",
    "diverged",
    "node_ip",
    "error",
    "path",
    "experiment",
}


def _metric_of(df: pd.DataFrame) -> str:
    cols = [c for c in df.columns if c.startswith("best_") and c != "best_epoch"]
    return cols[0][len("best_") :] if cols else "crossval_rollout_mse"


def load_trials(exp_dir: Path, metric: str | None, mode: str) -> tuple[pd.DataFrame, str]:
    """trials.parquet if exported, else rebuilt from the trial dirs' result.json."""
    exp_dir = Path(exp_dir)
    if not exp_dir.is_dir():
        raise UserInputError(exp_dir, None, "no such experiment directory")
    path = exp_dir / TRIALS_FILE
    if path.is_file():
        df = pd.read_parquet(path)
        return df.drop(columns=["rank"], errors="ignore"), metric or _metric_of(df)
    records = records_from_dir(exp_dir)
    if not records:
        raise UserInputError(exp_dir, None, "no trials.parquet and no trial results found")
    metric = metric or "crossval_rollout_mse"
    params = sorted({c for r in records for c in r.rows.columns if "." in c})
    df = trials_table(records, metric, mode, params, max_epochs=10**9)
    return df.drop(columns=["rank"], errors="ignore"), metric


def _report(args: argparse.Namespace) -> int:
    if args.html:
        mode = args.mode if args.metric else None  # else each experiment's recorded mode
        out = write_report_html(
            list(map(Path, args.experiments)), args.html, metric=args.metric, mode=mode
        )
        print(f"report: {out}")
        return 0
    frames = []
    metric = args.metric
    for d in args.experiments:
        df, m = load_trials(Path(d), metric, args.mode)
        metric = metric or m
        if len(args.experiments) > 1:
            df.insert(0, "experiment", Path(d).name)
        frames.append(df)
    df = rank_trials(pd.concat(frames, ignore_index=True), metric, args.mode)
    skip = ("best_", "final_", "baseline_")
    params = [c for c in df.columns if c not in _FIXED and not c.startswith(skip)]
    if args.json:
        print(json.dumps(json.loads(df.to_json(orient="records")), indent=1))
    else:
        print(format_ranked(df, metric, params, limit=args.limit))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m latent_tune.report`."""
    p = CliParser(
        prog="python -m latent_tune.report",
        description="Rank the trials of one or several experiments.",
    )
    p.add_argument("experiments", nargs="+", help="experiment dirs (storage/<name>)")
    p.add_argument("--metric", default=None, help="objective column (default: the exported one)")
    p.add_argument("--mode", choices=("min", "max"), default="min")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--json", action="store_true", help="print the ranked table as JSON")
    p.add_argument("--html", type=Path, metavar="FILE", help="write a self-contained HTML report")
    return run_cli(lambda: _report(p.parse_args(argv)))
