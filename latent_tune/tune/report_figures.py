"""Figures of the HTML report, rendered to PNG bytes (matplotlib Agg, no pyplot).

Why no pyplot: the report is written at the end of every search, in the driver process; a
Figure rendered by its own Agg canvas needs no display, registers nothing globally and is freed
with the object, so a long-lived driver never accumulates figures or picks a GUI backend.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

__all__ = [
    "asha_rungs",
    "importance_bars",
    "learning_curves",
    "objective_vs_params",
    "parallel_coordinates",
    "pbt_lineage",
    "png_bytes",
]

DPI = 90
_STATUS_COLORS = {"completed": "tab:blue", "stopped_early": "tab:orange", "ERROR": "tab:red"}


def png_bytes(fig: Figure) -> bytes:
    """Render with Agg and return PNG bytes."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    return buf.getvalue()


def _log_axis(axis: matplotlib.axis.Axis, values: np.ndarray) -> None:
    """Readable log ticks: decades over a wide range, 1-2-5 steps within a narrow one."""
    v = values[np.isfinite(values) & (values > 0)]
    wide = v.size > 0 and np.log10(v.max() / v.min()) >= 2
    axis.set_major_locator(LogLocator(subs=(1.0,) if wide else (1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:.2g}"))
    axis.set_minor_formatter(NullFormatter())


def _numeric(values: pd.Series) -> tuple[np.ndarray, list[str] | None]:
    """Numbers to plot and, for a categorical column, the tick labels of its codes."""
    nums = pd.to_numeric(values, errors="coerce")
    if nums.notna().all() and not values.map(lambda v: isinstance(v, bool | str)).any():
        return nums.to_numpy(dtype=float), None
    labels = sorted({str(v) for v in values})
    codes = values.map(lambda v: labels.index(str(v)))
    return codes.to_numpy(dtype=float), labels


def objective_vs_params(
    table: pd.DataFrame,
    metric: str,
    params: Sequence[str],
    *,
    scales: Mapping[str, str],
    labels: Mapping[str, str],
    ylabel: str,
) -> bytes:
    """One scatter per parameter: each trial's scored objective against its value."""
    n = max(len(params), 1)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(4.2 * cols, 3.2 * rows))
    y = pd.to_numeric(table[metric], errors="coerce").to_numpy(dtype=float)
    status = table.get("status", pd.Series(["completed"] * len(table), index=table.index))
    colors = [_STATUS_COLORS.get(str(s), "tab:gray") for s in status]
    for i, p in enumerate(params):
        ax = fig.add_subplot(rows, cols, i + 1)
        x, ticks = _numeric(table[p])
        ax.scatter(x, y, c=colors, s=28, edgecolors="black", linewidths=0.4)
        if ticks is not None:
            ax.set_xticks(range(len(ticks)), ticks, rotation=30, fontsize=7)
        elif scales.get(p) == "log" and (x > 0).all():
            ax.set_xscale("log")
            _log_axis(ax.xaxis, x)
            ax.tick_params(axis="x", labelrotation=30, labelsize=8)
        elif np.isfinite(x).all() and (x == np.round(x)).all():
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if np.isfinite(y).any() and (y[np.isfinite(y)] > 0).all():
            ax.set_yscale("log")
            _log_axis(ax.yaxis, y)
        ax.set_xlabel(labels.get(p, p))
        ax.set_ylabel(ylabel, fontsize=8)
        ax.grid(alpha=0.3)
    handles = [
        matplotlib.lines.Line2D([], [], marker="o", ls="", color=c, label=s)
        for s, c in _STATUS_COLORS.items()
        if s in set(map(str, status))
    ]
    if handles:
        fig.legend(
            handles=handles,
            loc="lower center",
            ncol=len(handles),
            fontsize=8,
            bbox_to_anchor=(0.5, 1.0),
        )
    fig.tight_layout()
    return png_bytes(fig)


def parallel_coordinates(
    table: pd.DataFrame,
    metric: str,
    params: Sequence[str],
    *,
    scales: Mapping[str, str],
    labels: Mapping[str, str],
    mode: str,
) -> bytes:
    """Every trial as a line across the parameter axes and the objective, coloured by it."""
    axes = [*params, metric]
    cols = []
    for p in axes:
        x, _ = _numeric(table[p])
        if scales.get(p) == "log" and (x > 0).all():
            x = np.log10(x)
        span = np.nanmax(x) - np.nanmin(x) if np.isfinite(x).any() else 0.0
        cols.append((x - np.nanmin(x)) / span if span > 0 else np.full_like(x, 0.5))
    data = np.stack(cols, axis=1)
    y = pd.to_numeric(table[metric], errors="coerce").to_numpy(dtype=float)
    fig = Figure(figsize=(max(6.0, 1.8 * len(axes)), 4.0))
    ax = fig.add_subplot(1, 1, 1)
    cmap = matplotlib.colormaps["viridis" if mode == "max" else "viridis_r"]
    finite = np.isfinite(y)
    lo, hi = (np.nanmin(y[finite]), np.nanmax(y[finite])) if finite.any() else (0.0, 1.0)
    norm = matplotlib.colors.Normalize(lo, hi if hi > lo else lo + 1)
    order = np.argsort(-y if mode == "min" else y)  # best drawn last, on top
    for i in order:
        color = cmap(norm(y[i])) if np.isfinite(y[i]) else "lightgray"
        ax.plot(range(len(axes)), data[i], color=color, alpha=0.8, lw=1.4)
    ax.set_xticks(range(len(axes)), [labels.get(p, p) for p in axes], rotation=20, fontsize=8)
    ax.set_yticks([0, 1], ["low", "high"])
    for k in range(len(axes)):
        ax.axvline(k, color="black", lw=0.6)
    fig.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=metric)
    fig.tight_layout()
    return png_bytes(fig)


def learning_curves(results: pd.DataFrame, trial_ids: Sequence[str], metric: str) -> bytes:
    """The objective per epoch of the given (top) trials."""
    fig = Figure(figsize=(7.0, 4.0))
    ax = fig.add_subplot(1, 1, 1)
    positive = True
    for rank, tid in enumerate(trial_ids, 1):
        rows = results[results["trial_id"] == tid].sort_values("epoch")
        y = pd.to_numeric(rows[metric], errors="coerce")
        positive &= bool((y.dropna() > 0).all())
        ax.plot(rows["epoch"], y, marker="o", ms=3, label=f"#{rank} {tid}")
    if positive:
        ax.set_yscale("log")
        _log_axis(ax.yaxis, pd.to_numeric(results[metric], errors="coerce").to_numpy(float))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return png_bytes(fig)


def importance_bars(importances: Mapping[str, float], labels: Mapping[str, str]) -> bytes:
    """Horizontal bars of normalised importances, the largest on top."""
    items = sorted(importances.items(), key=lambda kv: kv[1])
    fig = Figure(figsize=(6.0, 0.45 * len(items) + 1.2))
    ax = fig.add_subplot(1, 1, 1)
    ax.barh([labels.get(k, k) for k, _ in items], [v for _, v in items], color="tab:blue")
    for i, (_, v) in enumerate(items):
        ax.text(v, i, f" {v:.2f}", va="center", fontsize=8)
    ax.set_xlim(0, max(1.0, max((v for _, v in items), default=0) * 1.15))
    ax.set_xlabel("importance (fANOVA, normalised)")
    fig.tight_layout()
    return png_bytes(fig)


def asha_rungs(
    trials: pd.DataFrame, rungs: Sequence[int], max_epochs: int, *, budget: int | None
) -> bytes:
    """One bar per trial (best rank on top) up to the epoch it reached, rungs as lines."""
    df = trials.iloc[::-1]
    fig = Figure(figsize=(7.0, 0.28 * len(df) + 1.5))
    ax = fig.add_subplot(1, 1, 1)
    colors = [_STATUS_COLORS.get(str(s), "tab:gray") for s in df["status"]]
    ax.barh(range(len(df)), df["epochs"].astype(float), color=colors, height=0.6)
    ax.set_yticks(range(len(df)), [f"#{r} {t}" for r, t in zip(df["rank"], df["trial_id"])])
    ax.tick_params(axis="y", labelsize=7)
    for r in rungs:
        ax.axvline(r, color="black", ls="--", lw=0.8)
    if budget is not None:
        ax.axvline(budget, color="tab:green", lw=2, label=f"common budget (epoch {budget})")
        ax.legend(fontsize=7, loc="lower right")
    ax.set_xlim(0, max_epochs + 0.5)
    ax.set_xlabel("epochs reached (dashed: ASHA rungs)")
    fig.tight_layout()
    return png_bytes(fig)


def pbt_lineage(history: pd.DataFrame, n_trials: int, max_epochs: int) -> bytes:
    """Exploits as arrows from the donor (at its epoch) to the trial that copied it."""
    n = max(n_trials, int(history[["target_trial", "donor_trial"]].max().max()) + 1)
    fig = Figure(figsize=(7.0, 0.35 * n + 1.5))
    ax = fig.add_subplot(1, 1, 1)
    for k in range(n):
        ax.plot([0, max_epochs], [k, k], color="lightgray", lw=1)
    for _, row in history.iterrows():
        x0, y0 = float(row["donor_iteration"]), float(row["donor_trial"])
        x1, y1 = float(row["target_iteration"]), float(row["target_trial"])
        ax.annotate(
            "",
            xy=(x1, y1),
            xytext=(x0, y0),
            arrowprops={"arrowstyle": "->", "color": "tab:purple", "lw": 1.2},
        )
        ax.plot([x1], [y1], "o", color="tab:purple", ms=4)
    ax.set_yticks(range(n), [f"trial {k}" for k in range(n)], fontsize=7)
    ax.set_xlim(0, max_epochs + 0.5)
    ax.set_ylim(-0.5, n - 0.5)
    ax.set_xlabel("epoch (arrow: donor's weights and config copied, then explored)")
    fig.tight_layout()
    return png_bytes(fig)
