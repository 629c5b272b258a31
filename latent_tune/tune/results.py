"""Results of a search: tables, the best model, an experiment-level HParams view, PBT history.

Why: Tune's own `get_dataframe()` has one row per trial and its files are scattered over trial
dirs; the lab wants one table of every trial x epoch with every hyperparameter (Parquet), the
best model ready to retrain or evaluate, and all trials comparable in one TensorBoard. Every
file is written atomically, so a crash mid-export leaves the previous version or nothing.
"""

from __future__ import annotations

import json
import math
import shutil
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from tensorboardX import SummaryWriter
from tensorboardX.summary import hparams as hparams_summary

from latent_tune.atomic import atomic_dir, atomic_file, atomic_write_text
from latent_tune.training.tensorboard import HPARAM_METRIC_PREFIX
from latent_tune.tune.files import (
    BEST_DIR,
    BEST_MODEL_FILE,
    CONFIG_FILE,
    META_FILE,
    OBJECTIVE_FILE,
    PBT_HISTORY_FILE,
    RESULTS_FILE,
    TRAINER_FILE,
    TRIALS_FILE,
)
from latent_tune.tune.pbt_history import pbt_history
from latent_tune.tune.resolve import META_KEY

__all__ = [
    "BASELINES",
    "BEST_DIR",
    "OBJECTIVE_FILE",
    "PBT_HISTORY_FILE",
    "RESULTS_FILE",
    "TRIALS_FILE",
    "ExportSummary",
    "TrialRecord",
    "error_text",
    "export_all",
    "format_ranked",
    "param_labels",
    "pbt_history",
    "rank_trials",
    "records_from_dir",
    "records_from_grid",
    "results_table",
    "trials_table",
    "write_hparams_view",
    "write_objective_record",
]

# the baselines' scores at each trial's best epoch: report key -> trials table column
BASELINES = {
    "constant_rollout_mse": "baseline_constant",
    "linear_rollout_mse": "baseline_linear",
}
_BASELINE_LABELS = {"baseline_constant": "const", "baseline_linear": "linear"}

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


def _write_parquet(df: pd.DataFrame, path: Path) -> None:
    table = pa.Table.from_pandas(_parquet_safe(df), preserve_index=False)
    with atomic_file(path) as tmp:
        pq.write_table(table, tmp)


def _parquet_safe(df: pd.DataFrame) -> pd.DataFrame:
    """Mixed-type object columns (a choice of ints and strings) become strings."""
    df = df.copy()
    for col in df.columns:
        if df[col].dtype == object:
            kinds = {type(v) for v in df[col] if v is not None and not _isnan(v)}
            if len(kinds) > 1 or (kinds and not kinds <= {str, bool, int, float}):
                df[col] = df[col].map(lambda v: None if v is None else str(v))
    return df


def write_hparams_view(
    exp_dir: Path,
    trials: pd.DataFrame,
    params: Iterable[str],
    metric: str,
    rank_metric: str | None = None,
) -> None:
    """An experiment-level HParams summary at the experiment root, so TensorBoard's HParams tab
    lists every trial (each trial dir holds its own session record under `hparams/`)."""
    params = list(params)
    if trials.empty:
        return
    first = trials.iloc[0]
    hp: dict[str, Any] = {}
    for p in params:
        v = first.get(p)
        hp[p] = v if isinstance(v, bool | int | float | str) else str(v)
    metrics = {
        HPARAM_METRIC_PREFIX + m: 0.0
        for m in dict.fromkeys(
            (
                metric,
                f"best_{metric}",
                *((rank_metric, f"best_{rank_metric}") if rank_metric else ()),
                "crossval_rollout_mse",
                "best_crossval_rollout_mse",
                "crossval_intervening_mse",
            )
        )
    }
    exp, _, _ = hparams_summary(hp, metrics)
    for old in Path(exp_dir).glob("events.out.tfevents.*.hparams"):
        old.unlink(missing_ok=True)
    writer = SummaryWriter(logdir=str(exp_dir), filename_suffix=".hparams")
    writer._get_file_writer().add_summary(exp)
    writer.close()


def copy_export_files(src: Path, out: Path) -> None:
    """A trial checkpoint's files under their export names (best/: model, trainer, config)."""
    for name, dst in (
        (BEST_MODEL_FILE, "model.pt"),
        (TRAINER_FILE, "trainer.pt"),
        (CONFIG_FILE, "config.yaml"),
        (META_FILE, "checkpoint_meta.json"),
    ):
        if (src / name).is_file():
            shutil.copy2(src / name, out / dst)


def _export_best(
    record: TrialRecord,
    trial_row: Mapping[str, Any],
    out: Path,
    metric: str,
    rank_metric: str,
) -> bool:
    """best/: model weights of the best epoch, full trainer state, config.yaml, summary.json."""
    if record.checkpoint is None:
        return False
    with record.checkpoint.as_directory() as d, atomic_dir(out) as tmp:
        src = Path(d)
        copy_export_files(src, tmp)
        summary = {
            "trial_id": record.trial_id,
            "metric": metric,
            f"best_{metric}": trial_row.get(f"best_{metric}"),
            "rank_metric": rank_metric,
            f"best_{rank_metric}": trial_row.get(f"best_{rank_metric}"),
            "best_epoch": None
            if trial_row.get("best_epoch") is None
            or trial_row.get("best_epoch") != trial_row.get("best_epoch")
            else int(trial_row["best_epoch"]),
            "checkpoint": str(getattr(record.checkpoint, "path", record.checkpoint)),
            "retrain": "python -m latent_tune.train best/config.yaml",
        }
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return True


@dataclass
class ExportSummary:
    results: pd.DataFrame
    trials: pd.DataFrame
    best_trial: str | None
    best_dir: Path | None
    pbt_history: pd.DataFrame


def export_all(
    records: list[TrialRecord],
    out_dir: Path,
    *,
    metric: str,
    mode: str,
    params: Iterable[str],
    max_epochs: int,
    pbt_dir: Path | None = None,
    rank_metric: str | None = None,
) -> ExportSummary:
    """Write results.parquet, trials.parquet, best/, the HParams view and the PBT history.

    Trials are ranked (and best/ chosen) on `rank_metric` (default: `metric`)."""
    params = list(params)
    rank_metric = rank_metric or metric
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = results_table(records)
    trials = trials_table(records, metric, mode, params, max_epochs, rank_metric=rank_metric)
    _write_parquet(results, out_dir / RESULTS_FILE)
    _write_parquet(trials, out_dir / TRIALS_FILE)
    history = pbt_history(pbt_dir or out_dir, params, _start_values(records, params))
    if not history.empty:
        _write_parquet(history, out_dir / PBT_HISTORY_FILE)
    best_trial, best_dir = None, None
    if not trials.empty and math.isfinite(float(trials.iloc[0][f"best_{rank_metric}"])):
        best_trial = str(trials.iloc[0]["trial_id"])
        rec = next(r for r in records if r.trial_id == best_trial)
        row = trials.iloc[0].to_dict()
        if _export_best(rec, row, out_dir / BEST_DIR, metric, rank_metric):
            best_dir = out_dir / BEST_DIR
    write_hparams_view(out_dir, trials, params, metric, rank_metric)
    return ExportSummary(results, trials, best_trial, best_dir, history)


def write_objective_record(exp_dir: Path, record: Mapping[str, Any]) -> Path:
    """objective.json: which key ranked the trials (kept keys another step recorded stay)."""
    path = Path(exp_dir) / OBJECTIVE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    old: dict[str, Any] = {}
    if path.is_file():
        try:
            loaded = json.loads(path.read_text())
        except (OSError, ValueError):
            loaded = {}
        old = loaded if isinstance(loaded, dict) else {}
    atomic_write_text(path, json.dumps({**old, **record}, indent=2, default=str) + "\n")
    return path


def _start_values(records: list[TrialRecord], params: list[str]) -> dict[str, dict[str, Any]]:
    """Each trial's sampled values (its first result row; its config when it has no rows)."""
    out: dict[str, dict[str, Any]] = {}
    for r in records:
        first = r.rows.iloc[0] if not r.rows.empty else None
        out[r.trial_id] = {
            p: first[p] if first is not None and p in first else (r.config or {}).get(p)
            for p in params
        }
    return out


def _isnan(v: Any) -> bool:
    return isinstance(v, float) and math.isnan(v)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def param_labels(paths: Iterable[str]) -> dict[str, str]:
    """Column labels of dotted parameter paths: the path without its config section
    (`loss.aug.coeff` -> `aug.coeff`, `training.time_units` -> `time_units`), so nested leaves
    of the same name stay apart (`encoder.hidden_units`, `evolver.hidden_units`); a label two
    sections share (`training.seed`, `acquisition.seed`) keeps its full path."""
    paths = list(paths)
    label = {p: p.split(".", 1)[-1] for p in paths}
    counts = Counter(label.values())
    return {p: (v if counts[v] == 1 else p) for p, v in label.items()}


def format_ranked(
    trials: pd.DataFrame,
    metric: str,
    params: Iterable[str],
    *,
    rank_metric: str | None = None,
    limit: int = 20,
    extra: Iterable[str] = (),
) -> str:
    """A compact ranked table for the console: the best score next to the two baselines'
    scores on the same windows at that epoch (a column an old experiment lacks is left out).
    With a smoothed `rank_metric` its best value (the ranking key) comes first; `extra`
    columns (verification) come last."""
    params = list(params)
    if trials.empty:
        return "(no trials)"
    baselines = [c for c in _BASELINE_LABELS if c in trials.columns and trials[c].notna().any()]
    ranked = [f"best_{rank_metric}"] if rank_metric and rank_metric != metric else []
    cols = [
        "rank",
        "trial_id",
        "status",
        *ranked,
        f"best_{metric}",
        *baselines,
        "best_epoch",
        "epochs",
        *params,
        *extra,
    ]
    if "experiment" in trials.columns:
        cols.insert(1, "experiment")
    cols = [c for c in cols if c in trials.columns]
    short = {**param_labels(params), **_BASELINE_LABELS}
    header = [short.get(c, c) for c in cols]
    body = [[_fmt(row[c]) for c in cols] for _, row in trials.head(limit).iterrows()]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(x.ljust(w) for x, w in zip(b, widths)) for b in body]
    if len(trials) > limit:
        lines.append(f"... {len(trials) - limit} more in trials.parquet")
    return "\n".join(lines)
