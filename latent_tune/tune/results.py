"""Results of a search: per-trial records and the results/trials tables built from them.

Why: Tune's own `get_dataframe()` has one row per trial and its files are scattered over trial
dirs; the lab wants one table of every trial x epoch with every hyperparameter and one row per
trial ranked on its best objective. Writing them (and best/) is `latent_tune.tune.export`'s job.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from latent_tune.tune.resolve import META_KEY

__all__ = [
    "BASELINES",
    "TrialRecord",
    "error_text",
    "rank_trials",
    "records_from_dir",
    "records_from_grid",
    "results_table",
    "trials_table",
]

# the baselines' scores at each trial's best epoch: report key -> trials table column
BASELINES = {
    "constant_rollout_mse": "baseline_constant",
    "linear_rollout_mse": "baseline_linear",
}
_DROP = {
    "checkpoint_dir_name",
    "should_checkpoint",
    "done",
    "date",
    "pid",
    "hostname",
    "time_since_restore",
    "iterations_since_restore",
    "logdir",
    "config",
}


@dataclass
class TrialRecord:
    """One trial: its per-epoch rows, status, error and latest checkpoint (local path or URI)."""

    trial_id: str
    rows: pd.DataFrame
    status: str
    error: str | None
    path: str | None
    checkpoint: Any | None  # ray.tune.Checkpoint
    config: Mapping[str, Any] | None = None  # sampled values (a trial failing at once has no rows)
    max_epochs: int | None = None  # this trial's configured epochs, when it differs per trial


def _norm_rows(df: pd.DataFrame | None, trial_id: str, params: Iterable[str]) -> pd.DataFrame:
    """Tune's flattened history -> one row per epoch with metrics and `<dotted param>` columns."""
    if df is None or df.empty:
        return pd.DataFrame({"trial_id": pd.Series([], dtype="string")})
    df = df.copy()
    rename: dict[str, str] = {}
    drop: list[str] = []
    for col in df.columns:
        if col.startswith("config/"):
            key = col[len("config/") :]
            if key.startswith(META_KEY):
                drop.append(col)
            else:
                rename[col] = key
        elif col in _DROP:
            drop.append(col)
    df = df.drop(columns=drop).rename(columns=rename)
    df["trial_id"] = trial_id
    for p in params:
        if p not in df.columns:
            df[p] = None
    if "epoch" not in df.columns:
        df["epoch"] = df.get("training_iteration", pd.Series(range(1, len(df) + 1)))
    # a resumed trial repeats the epochs after its last checkpoint: keep the last report
    df = df.drop_duplicates(subset=["trial_id", "epoch"], keep="last").sort_values("epoch")
    return df.reset_index(drop=True)


def _statuses(grid: Any) -> dict[str, str]:
    """Trial id -> Tune status (PENDING/RUNNING/PAUSED/TERMINATED/ERROR)."""
    analysis = getattr(grid, "_experiment_analysis", None)
    trials = getattr(analysis, "trials", None) or []
    return {t.trial_id: str(t.status) for t in trials}


def records_from_grid(
    grid: Any, params: Iterable[str], statuses: Mapping[str, str] | None = None
) -> list[TrialRecord]:
    """Records from a Tune ResultGrid (works for local and remote storage).

    `statuses` (trial id -> status seen at the last controller step) wins over the grid's,
    which reports trials stopped by a Ctrl+C as TERMINATED.
    """
    params = list(params)
    statuses = {**_statuses(grid), **(statuses or {})}
    out: list[TrialRecord] = []
    for r in grid:
        tid = (r.metrics or {}).get("trial_id") or (Path(r.path).name if r.path else "?")
        rows = _norm_rows(r.metrics_dataframe, tid, params)
        status = statuses.get(tid, "ERROR" if r.error else "TERMINATED")
        error = None if r.error is None else error_text(r.error)
        config = {p: (r.config or {}).get(p) for p in params}
        epochs = _configured_epochs(r.config or {})
        out.append(TrialRecord(tid, rows, status, error, r.path, r.checkpoint, config, epochs))
    return out


def error_text(err: BaseException) -> str:
    """One line naming the trial's own exception (`RuntimeError: CUDA out of memory...`).

    Why: Tune wraps it (RayTaskError / TuneError) with a traceback first, so the first 500
    characters of str(err) were Ray frames and the actual cause was cut off.
    """
    cause = getattr(err, "cause", None) or err.__cause__
    if isinstance(cause, BaseException):
        text = f"{type(cause).__name__}: {cause}"
    else:
        lines = [line for line in str(err).splitlines() if line.strip()]
        text = lines[-1] if lines else type(err).__name__
    return " ".join(text.split())[:500]


def _configured_epochs(config: Mapping[str, Any]) -> int | None:
    """A trial's training.epochs from its Tune config: a sampled value, else its base config."""
    if isinstance(config.get("training.epochs"), int | float):
        return int(config["training.epochs"])
    meta = config.get(META_KEY)
    base = yaml.safe_load(meta["base"]) if isinstance(meta, dict) and "base" in meta else None
    training = base.get("training") if isinstance(base, dict) else None
    epochs = training.get("epochs") if isinstance(training, dict) else None
    return int(epochs) if isinstance(epochs, int | float) else None


def records_from_dir(exp_dir: Path, params: Iterable[str] | None = None) -> list[TrialRecord]:
    """Records rebuilt from the trial dirs' result.json (for `report` on an unexported run)."""
    out: list[TrialRecord] = []
    for result_file in sorted(Path(exp_dir).glob("*/result.json")):
        lines = [json.loads(x) for x in result_file.read_text().splitlines() if x.strip()]
        if not lines:
            continue
        flat = pd.json_normalize(lines, sep="/")
        flat.columns = [c for c in flat.columns]
        tid = str(lines[-1].get("trial_id", result_file.parent.name))
        keys = params or [c[len("config/") :] for c in flat.columns if c.startswith("config/")]
        rows = _norm_rows(flat, tid, [k for k in keys if not k.startswith(META_KEY)])
        error_file = result_file.parent / "error.txt"
        error = error_file.read_text()[:500] if error_file.is_file() else None
        status = "ERROR" if error else ("TERMINATED" if lines[-1].get("done") else "UNKNOWN")
        ckpts = sorted(result_file.parent.glob("checkpoint_*"))
        config = lines[-1].get("config")
        epochs = _configured_epochs(config) if isinstance(config, dict) else None
        out.append(
            TrialRecord(
                tid,
                rows,
                status,
                error,
                str(result_file.parent),
                ckpts[-1] if ckpts else None,
                max_epochs=epochs,
            )
        )
    return out


def results_table(records: list[TrialRecord]) -> pd.DataFrame:
    """results.parquet: one row per trial x epoch, every metric and sampled hyperparameter."""
    frames = [r.rows for r in records if not r.rows.empty]
    if not frames:
        return pd.DataFrame(columns=["trial_id", "epoch"])
    df = pd.concat(frames, ignore_index=True)
    df = df.drop_duplicates(subset=["trial_id", "epoch"], keep="last")
    return df.sort_values(["trial_id", "epoch"]).reset_index(drop=True)


def _valid(rows: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Rows that may be picked as best: finite objective, not penalised.

    Penalised rows carry the penalty objective; `diverged` (an early threshold crossing) is
    kept in the tables but does not exclude a row, since on small data every rollout crosses.
    """
    if metric not in rows.columns or rows.empty:
        return rows.iloc[0:0]
    vals = pd.to_numeric(rows[metric], errors="coerce")
    ok = vals.notna() & vals.map(lambda v: math.isfinite(v) if pd.notna(v) else False)
    if "penalised" in rows.columns:
        ok &= ~rows["penalised"].fillna(False).astype(bool)
    if "adopted_at_epoch" in rows.columns:
        # after a PBT exploit the trial's weights are its donor's: only its epochs since then
        # describe the model its checkpoint (and best/) holds
        adopted = pd.to_numeric(rows["adopted_at_epoch"], errors="coerce").fillna(0).iloc[-1]
        ok &= pd.to_numeric(rows["epoch"], errors="coerce") > adopted
    return rows[ok]


def _best_final(rows: pd.DataFrame, col: str, mode: str) -> dict[str, Any]:
    """best_<col> (over valid epochs) and final_<col> (the last epoch) of one trial."""
    valid = _valid(rows, col)
    best = math.nan
    if not valid.empty:
        vals = pd.to_numeric(valid[col])
        best = float(vals.min() if mode == "min" else vals.max())
    last = _float(rows.iloc[-1][col]) if not rows.empty and col in rows.columns else math.nan
    return {f"final_{col}": last, f"best_{col}": best}


def trials_table(
    records: list[TrialRecord],
    metric: str,
    mode: str,
    params: Iterable[str],
    max_epochs: int,
    *,
    rank_metric: str | None = None,
) -> pd.DataFrame:
    """trials.parquet: one row per trial with final and best objective, status, config.

    `max_epochs` is the search's epoch count; a record's own `max_epochs` wins (a searched
    training.epochs, or a report rebuilt from trial dirs of unknown searches). With a
    `rank_metric` (the smoothed objective) its best_/final_ columns are added and the trials
    are ranked on best_<rank_metric>; best_epoch stays the raw metric's best epoch (the epoch
    whose weights the trainer keeps and best/ exports)."""
    params = list(params)
    rank_metric = rank_metric or metric
    rows: list[dict[str, Any]] = []
    for r in records:
        last = r.rows.iloc[-1] if not r.rows.empty else None
        valid = _valid(r.rows, metric)
        best_val, best_epoch = math.nan, None
        baselines = dict.fromkeys(BASELINES.values(), math.nan)
        if not valid.empty:
            vals = pd.to_numeric(valid[metric])
            idx = vals.idxmin() if mode == "min" else vals.idxmax()
            best_val, best_epoch = float(vals[idx]), int(valid.loc[idx, "epoch"])
            for src, col in BASELINES.items():
                if src in valid.columns:
                    baselines[col] = _float(valid.loc[idx, src])
        epochs = int(last["epoch"]) if last is not None else 0
        status = r.status
        if status == "TERMINATED" and r.error is None:
            planned = r.max_epochs if r.max_epochs is not None else max_epochs
            status = "completed" if epochs >= planned else "stopped_early"
        row: dict[str, Any] = {
            "trial_id": r.trial_id,
            "status": status,
            "epochs": epochs,
            f"final_{metric}": float(last[metric])
            if last is not None and metric in last and last[metric] is not None
            else math.nan,
            f"best_{metric}": best_val,
            "best_epoch": best_epoch,
            **baselines,
            "diverged": bool(last["diverged"])
            if last is not None and "diverged" in last and last["diverged"] == last["diverged"]
            else False,
            "node_ip": str(last["node_ip"]) if last is not None and "node_ip" in last else None,
            "error": r.error,
            "path": r.path,
        }
        if rank_metric != metric:
            row.update(_best_final(r.rows, rank_metric, mode))
        for p in params:
            row[p] = last[p] if last is not None and p in last else (r.config or {}).get(p)
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    return rank_trials(df, rank_metric, mode)


def _float(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def rank_trials(df: pd.DataFrame, metric: str, mode: str) -> pd.DataFrame:
    """Sort by best objective (NaN last) and number the ranks from 1."""
    col = f"best_{metric}"
    df = df.sort_values(col, ascending=(mode == "min"), na_position="last").reset_index(drop=True)
    df.insert(0, "rank", range(1, len(df) + 1))
    return df
