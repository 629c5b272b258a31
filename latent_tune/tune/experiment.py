"""An experiment dir read back for reports: tables, objective, search space, provenance.

Why one loader: the HTML report needs more than the ranked table (per-epoch results, the PBT
log, the verification of the top configurations, the space text and the best trial's full
config), and every piece may be missing on a copied or unexported run; this module
decides once what each missing piece falls back to.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import yaml

from latent_tune.errors import UserInputError
from latent_tune.tune.files import (
    BEST_DIR,
    CONFIG_FILE,
    PBT_HISTORY_FILE,
    RESULTS_FILE,
    TRIALS_FILE,
)
from latent_tune.tune.importance import valid_rows
from latent_tune.tune.results import rank_trials, records_from_dir, results_table, trials_table

__all__ = [
    "OBJECTIVE_FILE",
    "SPACE_COPY",
    "VERIFIED_COLUMNS",
    "VERIFIED_FILE",
    "Experiment",
    "load_experiment",
]

VERIFIED_FILE = "verified.parquet"  # written by the verify command
OBJECTIVE_FILE = "objective.json"  # {"metric": ..., "mode": ...} recorded by the search
SPACE_COPY = "space.yaml"  # the search-space text as the search ran it
VERIFIED_COLUMNS = ("trial_id", "role", "best_mean", "best_sd", "diff_mean", "diff_lo", "diff_hi")
DEFAULT_METRIC = "crossval_rollout_mse"


@dataclass
class Experiment:
    path: Path
    results: pd.DataFrame  # one row per trial x epoch
    trials: pd.DataFrame  # one row per trial, ranked
    metric: str
    mode: str
    params: list[str]
    pbt: pd.DataFrame = field(default_factory=pd.DataFrame)
    verified: pd.DataFrame | None = None
    space_text: str | None = None
    space_source: str | None = None
    best_config: str | None = None  # best/config.yaml: the best trial's full training config
    commit: str | None = None
    commit_source: str = ""

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def space(self) -> dict[str, Any]:
        """The parsed space file ({} when absent or unreadable)."""
        try:
            raw = yaml.safe_load(self.space_text or "")
        except yaml.YAMLError:
            return {}
        return raw if isinstance(raw, dict) else {}

    @property
    def statuses(self) -> dict[str, str]:
        if self.trials.empty or "status" not in self.trials.columns:
            return {}
        return dict(zip(self.trials["trial_id"].astype(str), self.trials["status"].astype(str)))


def _parquet(path: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise UserInputError(path, None, f"not a readable Parquet file ({exc})") from None


def _json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserInputError(path, None, f"not readable JSON ({exc})") from None
    return raw if isinstance(raw, dict) else {}


def _best_config(exp_dir: Path) -> tuple[str | None, dict[str, Any]]:
    """The retrainable config of the best trial and its summary (written by the export)."""
    cfg = exp_dir / BEST_DIR / CONFIG_FILE
    text = cfg.read_text() if cfg.is_file() else None
    return text, _json(exp_dir / BEST_DIR / "summary.json")


def _space_text(exp_dir: Path) -> tuple[str | None, str | None]:
    copy = exp_dir / SPACE_COPY
    if copy.is_file():
        return copy.read_text(), str(copy)
    return None, None


def _source_commit() -> str | None:
    """The commit of the latent_tune checkout writing the report (None outside a git tree)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _with_metric(
    trials: pd.DataFrame, results: pd.DataFrame, metric: str, mode: str
) -> pd.DataFrame:
    """Ranked trials; best/final columns of `metric` computed from results if not exported."""
    trials = trials.drop(columns=["rank"], errors="ignore")
    if f"best_{metric}" not in trials.columns and not trials.empty:
        valid = valid_rows(results, metric)
        order = valid.sort_values(metric, ascending=mode == "min")
        best = order.drop_duplicates("trial_id").set_index("trial_id")
        last = results.sort_values("epoch").drop_duplicates("trial_id", keep="last")
        last = last.set_index("trial_id")
        ids = trials["trial_id"]
        trials[f"best_{metric}"] = ids.map(best[metric]) if metric in best else float("nan")
        trials["best_epoch"] = ids.map(best["epoch"]) if "epoch" in best else None
        final = last[metric] if metric in last.columns else pd.Series(dtype=float)
        trials[f"final_{metric}"] = pd.to_numeric(ids.map(final), errors="coerce")
    return rank_trials(trials, metric, mode) if not trials.empty else trials


def _verified(exp_dir: Path) -> pd.DataFrame | None:
    path = exp_dir / VERIFIED_FILE
    if not path.is_file():
        return None
    df = _parquet(path)
    for col in VERIFIED_COLUMNS:
        if col not in df.columns:
            raise UserInputError(path, col, "missing column")
    df["trial_id"] = df["trial_id"].astype(str)
    return df


def load_experiment(
    exp_dir: Path, metric: str | None = None, mode: str | None = None
) -> Experiment:
    """Read an experiment dir; `metric` (with `mode`) overrides the recorded objective."""
    exp_dir = Path(exp_dir)
    if not exp_dir.is_dir():
        raise UserInputError(exp_dir, None, "no such experiment directory")
    best_config, best_summary = _best_config(exp_dir)
    space_text, space_source = _space_text(exp_dir)
    objective = _json(exp_dir / OBJECTIVE_FILE)
    try:
        space_obj = (yaml.safe_load(space_text or "") or {}).get("objective") or {}
    except (yaml.YAMLError, AttributeError):
        space_obj = {}
    results_file, trials_file = exp_dir / RESULTS_FILE, exp_dir / TRIALS_FILE
    if results_file.is_file():
        results = _parquet(results_file)
        trials = _parquet(trials_file) if trials_file.is_file() else None
    else:
        records = records_from_dir(exp_dir)
        if not records:
            raise UserInputError(exp_dir, None, "no results.parquet and no trial results found")
        results, trials = results_table(records), None
    if results.empty or "trial_id" not in results.columns or "epoch" not in results.columns:
        raise UserInputError(results_file, None, "no per-epoch results (trial_id, epoch) in it")
    results["trial_id"] = results["trial_id"].astype(str)
    if metric is None:
        metric = objective.get("metric") or space_obj.get("metric") or best_summary.get("metric")
        mode = objective.get("mode") or space_obj.get("mode") or mode
    metric = str(metric or DEFAULT_METRIC)
    mode = mode if mode in ("min", "max") else "min"
    if metric not in results.columns:
        raise UserInputError(results_file, metric, "no such metric column in the results")
    params = [c for c in results.columns if "." in c]
    if trials is None:
        records = records_from_dir(exp_dir)
        max_epochs = int(results["epoch"].max())
        trials = trials_table(records, metric, mode, params, max_epochs) if records else None
        if trials is None or trials.empty:
            trials = pd.DataFrame({"trial_id": sorted(results["trial_id"].unique())})
            trials["status"] = "unknown"
            trials["epochs"] = trials["trial_id"].map(results.groupby("trial_id")["epoch"].max())
    trials["trial_id"] = trials["trial_id"].astype(str)
    trials = _with_metric(trials, results, metric, mode)
    pbt_file = exp_dir / PBT_HISTORY_FILE
    commit = objective.get("git_commit")
    commit_source = "recorded by the search" if commit else "of the code writing this report"
    return Experiment(
        path=exp_dir,
        results=results,
        trials=trials,
        metric=metric,
        mode=mode,
        params=params,
        pbt=_parquet(pbt_file) if pbt_file.is_file() else pd.DataFrame(),
        verified=_verified(exp_dir),
        space_text=space_text,
        space_source=space_source,
        best_config=best_config,
        commit=commit or _source_commit(),
        commit_source=commit_source,
    )
