"""The `report` command: the ranked comparison of one or several experiments, again.

Why: after a search (or on a copy of its results) the lab wants the ranking without Ray; with
several experiment dirs the trials are ranked side by side with an `experiment` column. The key
that ranks is the one the search recorded in objective.json (the smoothed objective when the
space smoothed it); when a verification (verified.parquet) exists, its seed-averaged columns
are shown and configurations within noise of the verified winner are marked.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from latent_tune.errors import CliParser, UserInputError, run_cli
from latent_tune.tune.experiment import VERIFIED_COLUMNS, VERIFIED_FILE
from latent_tune.tune.files import OBJECTIVE_FILE, TRIALS_FILE
from latent_tune.tune.html_report import write_report_html
from latent_tune.tune.ranked_table import format_ranked
from latent_tune.tune.results import rank_trials, records_from_dir, trials_table

__all__ = ["load_trials", "load_verified", "main", "recorded_objective"]

NOISE_MARK = "~"  # within noise of the verified winner
_VERIFIED_LABELS = ("verified", "v_diff [95% CI]", "v_noise", "v_rank")

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
    """An old experiment without objective.json: the first best_ column names the metric."""
    cols = [c for c in df.columns if c.startswith("best_") and c != "best_epoch"]
    return cols[0][len("best_") :] if cols else "crossval_rollout_mse"


def recorded_objective(exp_dir: Path) -> dict[str, Any]:
    """objective.json of an experiment ({} for an experiment from before it was recorded)."""
    path = Path(exp_dir) / OBJECTIVE_FILE
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserInputError(path, None, f"not readable JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise UserInputError(path, None, f"expected a JSON object, got {type(raw).__name__}")
    return raw


def load_trials(exp_dir: Path, metric: str | None, mode: str) -> tuple[pd.DataFrame, str]:
    """trials.parquet if exported, else rebuilt from the trial dirs' result.json.

    Without `metric`, the ranking key is objective.json's rank_metric (else its metric, else
    the guess from the table's columns for experiments that predate objective.json)."""
    exp_dir = Path(exp_dir)
    if not exp_dir.is_dir():
        raise UserInputError(exp_dir, None, "no such experiment directory")
    recorded = recorded_objective(exp_dir)
    metric = metric or recorded.get("rank_metric") or recorded.get("metric")
    path = exp_dir / TRIALS_FILE
    if path.is_file():
        df = pd.read_parquet(path)
        metric = metric or _metric_of(df)
        if f"best_{metric}" not in df.columns:
            raise UserInputError(path, f"best_{metric}", "no such column to rank by")
        return df.drop(columns=["rank"], errors="ignore"), metric
    records = records_from_dir(exp_dir)
    if not records:
        raise UserInputError(exp_dir, None, "no trials.parquet and no trial results found")
    metric = metric or "crossval_rollout_mse"
    params = sorted({c for r in records for c in r.rows.columns if "." in c})
    df = trials_table(records, metric, mode, params, max_epochs=10**9)
    return df.drop(columns=["rank"], errors="ignore"), metric


def load_verified(exp_dir: Path) -> pd.DataFrame | None:
    """verified.parquet (one row per retrained configuration, "base" = the reference), if any."""
    path = Path(exp_dir) / VERIFIED_FILE
    if not path.is_file():
        return None
    try:
        df = pd.read_parquet(path)
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise UserInputError(path, None, f"not a readable Parquet file ({exc})") from None
    for col in VERIFIED_COLUMNS:
        if col not in df.columns:
            raise UserInputError(path, col, "missing column")
    df["trial_id"] = df["trial_id"].astype(str)
    return df


def _num(v: Any) -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return ""
    return "" if math.isnan(f) else f"{f:.4g}"


def _verified_cells(row: Mapping[str, Any]) -> dict[str, str]:
    n = _num(row.get("n"))
    mean = _num(row.get("best_mean"))
    diff = _num(row.get("diff_mean"))
    rank = _num(row.get("verified_rank"))
    return {
        "verified": f"{mean}+-{_num(row.get('best_sd'))}" + (f"(n={n})" if n else "")
        if mean
        else "",
        "v_diff [95% CI]": f"{diff}[{_num(row.get('diff_lo'))},{_num(row.get('diff_hi'))}]"
        if diff
        else "",
        "v_noise": NOISE_MARK if bool(row.get("within_noise", False)) else "",
        "v_rank": rank,
    }


def _with_verified(df: pd.DataFrame, verified: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The verified columns joined onto the trials; a footer line for the base reference."""
    cand = {str(r["trial_id"]): r for _, r in verified.iterrows() if str(r["role"]) != "base"}
    cells = [_verified_cells(cand[t]) if t in cand else {} for t in df["trial_id"].astype(str)]
    df = df.copy()
    for label in _VERIFIED_LABELS:
        df[label] = [c.get(label, "") for c in cells]
    base = verified[verified["role"].astype(str) == "base"]
    footer = ""
    if not base.empty:
        b = _verified_cells(base.iloc[0])
        footer = f"base (reference recipe): verified {b['verified']}"
    return df, footer


def _report(args: argparse.Namespace) -> int:
    dirs = list(map(Path, args.experiments))
    if args.html:
        metric, mode = args.metric, args.mode if args.metric else None
        recorded = [recorded_objective(d) for d in dirs]
        keys = {(r.get("rank_metric"), r.get("mode")) for r in recorded}
        if metric is None and len(keys) == 1 and None not in next(iter(keys)):
            metric, mode = next(iter(keys))  # the key the search ranked by
        out = write_report_html(dirs, args.html, metric=metric, mode=mode)
        print(f"report: {out}")
        return 0
    frames, footers = [], []
    metric, mode = args.metric, args.mode
    for d in dirs:
        df, m = load_trials(d, metric, mode or "min")
        if metric is None:
            mode = mode or recorded_objective(d).get("mode")
        metric = metric or m
        verified = load_verified(d)
        if verified is not None:
            df, footer = _with_verified(df, verified)
            footers.append(f"{d.name}: {footer}" if footer and len(dirs) > 1 else footer)
        if len(dirs) > 1:
            df.insert(0, "experiment", d.name)
        frames.append(df)
    mode = mode if mode in ("min", "max") else "min"
    df = rank_trials(pd.concat(frames, ignore_index=True), metric, mode)
    skip = ("best_", "final_", "baseline_")
    extra = [c for c in _VERIFIED_LABELS if c in df.columns]
    params = [
        c for c in df.columns if c not in _FIXED and not c.startswith(skip) and c not in extra
    ]
    raw = _raw_metric(dirs, metric)
    if args.json:
        print(json.dumps(json.loads(df.to_json(orient="records")), indent=1))
        return 0
    print(format_ranked(df, raw, params, rank_metric=metric, limit=args.limit, extra=extra))
    if extra:
        print(f"{NOISE_MARK} in v_noise: within noise of the verified winner (seeds retrained)")
    for line in filter(None, footers):
        print(line)
    return 0


def _raw_metric(dirs: Sequence[Path], metric: str) -> str:
    """The raw objective behind a ranking key (the key itself when it is not smoothed)."""
    for d in dirs:
        rec = recorded_objective(d)
        if rec.get("rank_metric") == metric and rec.get("metric"):
            return str(rec["metric"])
    return metric


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m latent_tune.report`."""
    p = CliParser(
        prog="python -m latent_tune.report",
        description="Rank the trials of one or several experiments.",
    )
    p.add_argument("experiments", nargs="+", help="experiment dirs (storage/<name>)")
    p.add_argument("--metric", default=None, help="objective column (default: the exported one)")
    p.add_argument(
        "--mode", choices=("min", "max"), default=None, help="default: the recorded mode, or min"
    )
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--json", action="store_true", help="print the ranked table as JSON")
    p.add_argument("--html", type=Path, metavar="FILE", help="write a self-contained HTML report")
    return run_cli(lambda: _report(p.parse_args(argv)))
