"""The verification table: one row per configuration over its seeds, its print-out and export.

Why apart from the command: this part needs no Ray. It turns the re-trained runs (a
configuration x a seed each) into the table `verified.parquet` holds, prints it ranked, and
exports the verified winner's typical run as `best/`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from latent_tune.atomic import atomic_dir, atomic_file
from latent_tune.tune.export import copy_export_files
from latent_tune.tune.files import BEST_DIR
from latent_tune.tune.ranked_table import param_labels
from latent_tune.tune.verify_stats import paired_interval, spearman, spread

__all__ = [
    "BASE_ID",
    "BEST_SEARCH_DIR",
    "COLUMNS",
    "TEST_METRIC",
    "RunResult",
    "export_winner",
    "format_verified",
    "run_result",
    "typical_run",
    "verified_table",
    "write_verified",
]

BASE_ID = "base"  # the reference: the base recipe as the search started from it
BEST_SEARCH_DIR = "best_search"  # where the search's own best/ goes once verified
TEST_METRIC = "test_crossval_rollout_mse"  # final-epoch score on held-out test windows
COLUMNS = [
    "trial_id",
    "role",
    "search_rank",
    "n",
    "seeds",
    "best_mean",
    "best_sd",
    "best_min",
    "best_max",
    "final_mean",
    "final_sd",
    "final_min",
    "final_max",
    "test_final_mean",
    "test_final_sd",
    "search_value",
    "diff_mean",
    "diff_lo",
    "diff_hi",
    "within_noise",
    "verified_rank",
    "metric",
]


@dataclass
class RunResult:
    """One re-trained run: a configuration with one training seed."""

    config_id: str
    seed: int
    complete: bool  # ran all its epochs
    best: float  # best epoch's objective (unpenalised preferred, like the search)
    best_epoch: int | None
    final: float  # last epoch's objective
    test_final: float  # last epoch's held-out test score (NaN when not reported)
    trial_id: str
    checkpoint: Any | None  # ray.tune.Checkpoint of its last epoch (holds its best model)
    error: str | None = None


def _num(v: Any) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return math.nan
    return f if math.isfinite(f) else math.nan


def run_result(
    config_id: str,
    seed: int,
    rows: pd.DataFrame | None,
    *,
    metric: str,
    mode: str,
    epochs: int,
    trial_id: str,
    checkpoint: Any | None,
    error: str | None,
) -> RunResult:
    """A run's numbers from its per-epoch reports (a resumed run's repeats: the last one)."""
    if rows is None or rows.empty or metric not in rows.columns or "epoch" not in rows.columns:
        return RunResult(
            config_id, seed, False, math.nan, None, math.nan, math.nan, trial_id, checkpoint, error
        )
    rows = rows.drop_duplicates("epoch", keep="last").sort_values("epoch")
    vals = rows[metric].map(_num)
    finite = vals.notna()
    penalised = rows["penalised"] if "penalised" in rows.columns else False
    ok = finite & ~pd.Series(penalised, index=rows.index).fillna(False).astype(bool)
    pick = vals[ok] if ok.any() else vals[finite]
    best, best_epoch = math.nan, None
    if not pick.empty:
        idx = pick.idxmin() if mode == "min" else pick.idxmax()
        best, best_epoch = float(pick[idx]), int(rows.loc[idx, "epoch"])
    last = rows.iloc[-1]
    test = _num(last[TEST_METRIC]) if TEST_METRIC in rows.columns else math.nan
    complete = error is None and int(last["epoch"]) >= epochs
    return RunResult(
        config_id,
        seed,
        complete,
        best,
        best_epoch,
        _num(last[metric]),
        test,
        trial_id,
        checkpoint,
        error,
    )


def _rank(values: Sequence[float], mode: str) -> list[int]:
    """1 = best; NaN last; ties keep the given order."""
    key = [(not math.isfinite(v), v if mode == "min" else -v) for v in values]
    order = sorted(range(len(values)), key=lambda i: key[i])
    ranks = [0] * len(values)
    for r, i in enumerate(order, 1):
        ranks[i] = r
    return ranks


def verified_table(
    runs: Sequence[RunResult],
    *,
    configs: Mapping[str, Mapping[str, Any]],
    search_rank: Mapping[str, int],
    search_value: Mapping[str, float],
    params: Sequence[str],
    metric: str,
    mode: str,
) -> pd.DataFrame:
    """One row per configuration (base included), ranked by the mean best over seeds."""
    done = [r for r in runs if r.complete]
    best = {c: {r.seed: r.best for r in done if r.config_id == c} for c in configs}
    rows: list[dict[str, Any]] = []
    for cid in configs:
        mine = sorted((r for r in done if r.config_id == cid), key=lambda r: r.seed)
        b, f = spread([r.best for r in mine]), spread([r.final for r in mine])
        t = spread([r.test_final for r in mine])
        d_mean, d_lo, d_hi, _ = paired_interval(best[cid], best[BASE_ID])
        row: dict[str, Any] = {
            "trial_id": cid,
            "role": "base" if cid == BASE_ID else "candidate",
            "search_rank": search_rank.get(cid),
            "n": len(mine),
            "seeds": [int(r.seed) for r in mine],
            "best_mean": b[0],
            "best_sd": b[1],
            "best_min": b[2],
            "best_max": b[3],
            "final_mean": f[0],
            "final_sd": f[1],
            "final_min": f[2],
            "final_max": f[3],
            "test_final_mean": t[0],
            "test_final_sd": t[1],
            "search_value": float(search_value.get(cid, math.nan)),
            "diff_mean": d_mean,
            "diff_lo": d_lo,
            "diff_hi": d_hi,
        }
        rows.append(row)
    ranks = _rank([r["best_mean"] for r in rows], mode)
    winner = next(r["trial_id"] for r, k in zip(rows, ranks, strict=True) if k == 1)
    for row, k in zip(rows, ranks, strict=True):
        _, lo, hi, _ = paired_interval(best[row["trial_id"]], best[winner])
        row["within_noise"] = bool(k != 1 and lo <= 0.0 <= hi)  # NaN bounds: False
        row["verified_rank"] = k
        row["metric"] = metric
        for p in params:
            row[p] = configs[row["trial_id"]].get(p)
    df = pd.DataFrame(rows, columns=[*COLUMNS, *params])
    df["search_rank"] = df["search_rank"].astype("Int64")
    return df.sort_values("verified_rank").reset_index(drop=True)


def write_verified(df: pd.DataFrame, path: Path) -> None:
    """verified.parquet, atomically (seeds as a list<int64> column)."""
    table = pa.Table.from_pandas(df, preserve_index=False)
    with atomic_file(path) as tmp:
        pq.write_table(table, tmp)


def _fmt(v: Any, spec: str = ".4g") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return format(v, spec) if isinstance(v, float) else str(v)


def _pm(mean: float, sd: float) -> str:
    return f"{_fmt(mean)} +- {_fmt(sd, '.2g')}"


def format_verified(df: pd.DataFrame, params: Sequence[str], mode: str) -> str:
    """The ranked table, the rank agreement with the search, and who is within noise."""
    labels = param_labels(params)
    header = [
        "rank",
        "trial_id",
        "search",
        "n",
        "best mean +- sd",
        "final mean +- sd",
        "best - base [95% CI]",
        "search value",
        "search/verified",
        *(labels[p] for p in params),
    ]
    body = []
    for _, r in df.iterrows():
        ratio = r["search_value"] / r["best_mean"] if r["best_mean"] else math.nan
        diff = (
            "(reference)"
            if r["role"] == "base"
            else f"{_fmt(r['diff_mean'], '+.3g')} [{_fmt(r['diff_lo'], '+.3g')}, "
            f"{_fmt(r['diff_hi'], '+.3g')}]"
        )
        sr = r["search_rank"]
        body.append(
            [
                str(r["verified_rank"]),
                str(r["trial_id"]),
                "-" if pd.isna(sr) else str(int(sr)),
                str(r["n"]),
                _pm(r["best_mean"], r["best_sd"]),
                _pm(r["final_mean"], r["final_sd"]),
                diff,
                _fmt(r["search_value"]),
                _fmt(ratio, ".3g"),
                *(_fmt(r[p], ".3g") for p in params),
            ]
        )
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(x.ljust(w) for x, w in zip(b, widths, strict=True)) for b in body]
    cand = df[df["role"] == "candidate"]
    rho = spearman(cand["search_rank"].astype(float).tolist(), cand["best_mean"].tolist())
    if mode == "max":
        rho = -rho  # rank 1 is the largest value: agreement stays positive
    lines.append("")
    lines.append(
        f"search order vs verified order (Spearman rank correlation over {len(cand)} "
        f"candidates): {_fmt(rho, '.2f')}"
    )
    tied = df[df["within_noise"]]["trial_id"].tolist()
    if tied:
        lines.append(
            f"within noise of the winner (paired 95% interval covers 0): {', '.join(tied)}"
        )
    return "\n".join(lines)


def typical_run(runs: Sequence[RunResult], config_id: str, mean: float) -> RunResult | None:
    """The configuration's complete run whose best is closest to its mean (ties: lower seed)."""
    mine = [r for r in runs if r.config_id == config_id and r.complete and r.checkpoint]
    mine = [r for r in mine if math.isfinite(r.best)]
    if not mine or not math.isfinite(mean):
        return None
    return min(mine, key=lambda r: (abs(r.best - mean), r.seed))


def _move_search_best(exp_dir: Path) -> None:
    """The search's own best/ becomes best_search/ (once; a verified best/ is just replaced)."""
    best = exp_dir / BEST_DIR
    summary = best / "summary.json"
    if not best.is_dir():
        return
    try:
        verified = bool(json.loads(summary.read_text()).get("verified"))
    except (OSError, ValueError):
        verified = False
    if verified:
        return
    target = exp_dir / BEST_SEARCH_DIR
    if target.exists():
        shutil.rmtree(target)
    os.replace(best, target)


def export_winner(exp_dir: Path, run: RunResult, row: Mapping[str, Any], metric: str) -> Path:
    """best/: the winner's typical run (best-epoch model, trainer state, config, summary)."""
    out = exp_dir / BEST_DIR
    with run.checkpoint.as_directory() as d, atomic_dir(out) as tmp:
        src = Path(d)
        copy_export_files(src, tmp)
        summary = {
            "verified": True,
            "trial_id": run.config_id,
            "role": row["role"],
            "metric": metric,
            "seed": run.seed,
            "run_trial_id": run.trial_id,
            f"best_{metric}": run.best,
            "best_epoch": run.best_epoch,
            "verified_best_mean": row["best_mean"],
            "verified_best_sd": row["best_sd"],
            "verified_seeds": list(row["seeds"]),
            "exported_run": "the run whose best is closest to the configuration's mean best "
            "over the seeds: the typical run, not the luckiest",
            "checkpoint": str(getattr(run.checkpoint, "path", run.checkpoint)),
            "search_export": BEST_SEARCH_DIR,
            "retrain": "python -m latent_tune.train best/config.yaml",
        }
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        _move_search_best(exp_dir)  # last: a failed copy leaves the search's best/ in place
    return out
