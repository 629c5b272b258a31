"""Diagnostic figures (docs/method.md, section 8.6) under the lab's names (matplotlib, Agg).

Every function takes small host arrays (curves already reduced on the device by the evaluation:
steps x starts, or one segment of a handful of neurons) and returns a Figure built without pyplot
(no global figure registry, no GUI backend, safe in Ray workers); the caller renders it with Agg,
logs it and closes it (`close_figure`), so long runs never accumulate figure memory.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib
import numpy as np
from matplotlib.figure import Figure

__all__ = [
    "FIGURE_NAMES",
    "SHORT_WINDOW",
    "close_figure",
    "mse_var_scatter",
    "rollout_mses_by_time",
    "rollout_traces",
    "short_rollout_mse",
]

SHORT_WINDOW = 250
FIGURE_NAMES = (
    "multi_start_2000step_latent_rollout_mses_by_time",
    "short_rollout_mse_latent",
    "best_2000step_rollout_latent_mse_var_scatter",
    "worst_2000step_rollout_latent_mse_var_scatter",
    "best_2000step_rollout_latent_traces",
    "worst_2000step_rollout_latent_traces",
)


def _positive(a: np.ndarray, floor: float = 1e-8) -> np.ndarray:
    """Log-scale plots cannot show zeros or NaN; clip to a tiny floor (NaN/inf stay gaps)."""
    a = np.asarray(a, dtype=np.float64)
    return np.where(np.isfinite(a), np.maximum(a, floor), np.nan)


def close_figure(fig: Figure) -> None:
    """Release a figure's artists (figures are not registered with pyplot, so this is all)."""
    fig.clear()


def _subplots(figsize: tuple[float, float], rows: int = 1, cols: int = 1):
    """A pyplot-free Figure with a grid of axes (2-D array when rows/cols > 1)."""
    fig = Figure(figsize=figsize)
    axes = fig.subplots(rows, cols, squeeze=False)
    return fig, axes


def rollout_mses_by_time(
    mse_by_step: np.ndarray,
    constant_by_step: np.ndarray | None,
    *,
    title: str = "",
) -> Figure:
    """Neuron-mean MSE per rollout step: mean over starts, min-max band, constant baseline dashed.

    mse_by_step: (n_starts, steps); constant_by_step: (steps,) or None.
    """
    m = np.asarray(mse_by_step, dtype=np.float64)
    steps = np.arange(1, m.shape[1] + 1)
    fig, axes = _subplots((7, 4))
    ax = axes[0, 0]
    with np.errstate(all="ignore"):
        lo, hi, mean = np.nanmin(m, axis=0), np.nanmax(m, axis=0), np.nanmean(m, axis=0)
    ax.fill_between(steps, _positive(lo), _positive(hi), alpha=0.3, label="min-max over starts")
    ax.plot(steps, _positive(mean), lw=1.2, label="mean over starts")
    if constant_by_step is not None:
        ax.plot(steps, _positive(constant_by_step), "k--", lw=1, label="constant baseline")
    ax.set_yscale("log")
    ax.set_ylim(1e-4, 10)
    ax.set_xlabel("rollout step")
    ax.set_ylabel("MSE (mean over neurons)")
    ax.set_title(title or "2000-step latent rollout MSE")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def short_rollout_mse(
    model: np.ndarray,
    *,
    tu: int,
    ems: int,
    constant: np.ndarray | None = None,
    linear: np.ndarray | None = None,
    staggered: np.ndarray | None = None,
    title: str = "",
    ymin: float = 1e-3,
) -> Figure:
    """First SHORT_WINDOW steps with training points (m*tu - 1) marked, and the baselines.

    All curves are (steps,) indexed so that index k is time start + k + 1 (aligned with the
    model curve; docs/method.md, section 10).
    """
    n = min(SHORT_WINDOW, len(model))
    k = np.arange(n)
    fig, axes = _subplots((7, 4))
    ax = axes[0, 0]
    ax.plot(k, _positive(model[:n]), lw=1.5, label="model")
    loss_points = np.arange(1, ems + 1) * tu - 1
    loss_points = loss_points[loss_points < n]
    ax.plot(loss_points, _positive(np.asarray(model)[loss_points]), "o", ms=7, label="loss points")
    for curve, style, label in (
        (constant, "k--", "constant"),
        (linear, "g:", "linear interp. (aligned anchors)"),
        (staggered, "m-.", "staggered interp."),
    ):
        if curve is not None:
            ax.plot(k[: len(curve)], _positive(curve[:n]), style, lw=1, label=label)
    horizon = tu * ems
    if horizon < n:
        ax.axvline(horizon - 1, color="grey", ls=":", lw=1)
    ax.set_yscale("log")
    ax.set_ylim(ymin, 1.0)
    ax.set_xlabel("rollout step")
    ax.set_ylabel("MSE (mean over starts and neurons)")
    ax.set_title(title or f"short rollout (tu={tu}, ems={ems})")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def _type_colors(n_types: int) -> list:
    """One colour per cell type, cycling tab20 / tab20b / tab20c / Set3 as the lab does."""
    cmaps = [matplotlib.colormaps[name] for name in ("tab20", "tab20b", "tab20c", "Set3")]
    palette = [c for cm in cmaps for c in cm.colors]
    return [palette[i % len(palette)] for i in range(n_types)]


def mse_var_scatter(
    var_truth: np.ndarray,
    var_error: np.ndarray,
    cell_types: np.ndarray,
    type_names: Sequence[str],
    *,
    title: str = "",
) -> Figure:
    """Per neuron: variance of the truth vs variance of the rollout error, coloured by cell type."""
    vt = _positive(var_truth)
    ve = _positive(var_error)
    types = np.asarray(cell_types, dtype=np.int64)
    n_types = max(len(type_names), int(types.max(initial=-1)) + 1)
    colors = np.asarray(_type_colors(n_types))
    fig, axes = _subplots((6, 6))
    ax = axes[0, 0]
    ax.scatter(vt, ve, s=6, c=colors[types], alpha=0.7, linewidths=0)
    for t in np.unique(types):
        sel = types == t
        cx, cy = np.nanmedian(vt[sel]), np.nanmedian(ve[sel])
        if np.isfinite(cx) and np.isfinite(cy):
            name = type_names[t] if t < len(type_names) else str(t)
            ax.annotate(name, (cx, cy), fontsize=6, bbox={"boxstyle": "round", "alpha": 0.3})
    lo = np.nanmin(np.concatenate([vt, ve]))
    hi = np.nanmax(np.concatenate([vt, ve]))
    if np.isfinite(lo) and np.isfinite(hi):
        ax.plot([lo, hi], [lo, hi], "k:", lw=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("variance of truth")
    ax.set_ylabel("variance of error (unexplained)")
    ax.set_title(title or "rollout error vs variance")
    fig.tight_layout()
    return fig


def rollout_traces(
    truth: np.ndarray,
    prediction: np.ndarray,
    names: Sequence[str],
    *,
    title: str = "",
    max_panels: int = 65,
    max_points: int = 500,
) -> Figure:
    """Truth (black) vs prediction (orange) for one neuron per cell type, difference shaded.

    truth, prediction: (steps, K) for K neurons (one per type); names: K panel labels.
    """
    truth = np.asarray(truth, dtype=np.float64)
    prediction = np.asarray(prediction, dtype=np.float64)
    k = min(truth.shape[1], max_panels)
    cols = min(5, max(k, 1))
    rows = max(1, -(-k // cols))
    fig, axes = _subplots((3 * cols, 1.4 * rows + 0.4), rows, cols)
    fig.set_dpi(72)
    steps = np.arange(1, truth.shape[0] + 1)
    stride = max(1, truth.shape[0] // max_points)  # statistics use every step, drawing a subset
    with np.errstate(all="ignore"):
        var_gt = np.nanvar(truth[:, :k], axis=0)
        var_err = np.nanvar(prediction[:, :k] - truth[:, :k], axis=0)
        r2 = np.where(var_gt > 0, 1.0 - var_err / var_gt, np.nan)
    for j, ax in enumerate(axes.flat):
        if j >= k:
            ax.axis("off")
            continue
        t, gt, pr = steps[::stride], truth[::stride, j], prediction[::stride, j]
        ax.plot(t, gt, "k", lw=0.6)
        ax.plot(t, pr, color="tab:orange", lw=0.6)
        ax.fill_between(t, gt, pr, color="tab:orange", alpha=0.2, linewidth=0)
        ax.set_title(f"{names[j]}  R2={r2[j]:.2f} var={var_gt[j]:.2g}", fontsize=6, pad=2)
        ax.tick_params(labelsize=5, length=2, pad=1)
    fig.suptitle(title or "rollout traces (one neuron per cell type)", fontsize=8)
    # tight_layout costs seconds on 65 panels; a fixed grid spacing is enough here.
    fig.subplots_adjust(
        left=0.04,
        right=0.99,
        bottom=0.03,
        top=1 - 0.5 / (1.4 * rows + 0.4),
        wspace=0.25,
        hspace=0.6,
    )
    return fig
