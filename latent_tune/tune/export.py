"""Export of a search: results/trials Parquet, best/, the HParams view, the PBT history.

Why: the lab wants the tables as Parquet, the best model ready to retrain or evaluate, and all
trials comparable in one TensorBoard. Every file is written atomically, so a crash mid-export
leaves the previous version or nothing.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
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
from latent_tune.tune.results import TrialRecord, results_table, trials_table

__all__ = [
    "ExportSummary",
    "copy_export_files",
    "export_all",
    "write_hparams_view",
    "write_objective_record",
]


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
