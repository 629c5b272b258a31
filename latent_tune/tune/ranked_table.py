"""The console's ranked table of trials, and the short column labels of parameter paths."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from typing import Any

import pandas as pd

__all__ = ["format_ranked", "param_labels"]

# trials table baseline column -> its short console label
_BASELINE_LABELS = {"baseline_constant": "const", "baseline_linear": "linear"}


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
