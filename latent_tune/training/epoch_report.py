"""What one epoch reports: the flat metrics dict Tune receives and the epoch's TensorBoard scalars.

Why its own module: the report's keys are a contract with the tune layer (objective, schedulers,
stoppers, the results tables), and keeping them here lets the epoch loop (trainer.py) read in
one sitting. `trainer` is a `Trainer` (typed loosely: the trainer imports this module).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["log_epoch", "tune_report"]


def log_epoch(
    trainer: Any,
    index: int,
    losses: Mapping[str, float],
    extra: Mapping[str, int | float],
    *,
    duration: float,
    diag: float,
    evaluated: bool,
) -> None:
    """The epoch's train losses, times, recipe scalars and lr in TensorBoard (step `index`)."""
    tb = trainer.tb
    tb.train_losses(losses, index)
    times = {"epoch_duration": duration, "total_elapsed": trainer.total_elapsed}
    if evaluated:
        times["diagnostics_duration"] = diag
    tb.times(index, **times)
    for k, v in extra.items():
        tb.scalar(f"Train/{k}", v, index)
    tb.scalar("Train/lr", trainer.optimizer.param_groups[0]["lr"], index)
    tb.flush()


def tune_report(
    trainer: Any,
    *,
    losses: Mapping[str, float] | None = None,
    duration: float = 0.0,
    diag: float = 0.0,
    evaluated: bool = False,
    extra: Mapping[str, int | float] | None = None,
) -> dict[str, float | int | bool]:
    """The flat metrics dict reported to Tune (floats, ints and bools only)."""
    losses = trainer.last_losses if losses is None else losses
    last = trainer.last_eval
    out: dict[str, float | int | bool] = {
        "epoch": int(trainer.epoch),
        "crossval_rollout_mse": float(last.get("crossval_rollout_mse", math.nan)),
        "crossval_intervening_mse": float(last.get("crossval_intervening_mse", math.nan)),
        "diverged": bool(last.get("diverged", False)),
        "penalised": bool(last.get("penalised", False)),
        "best_crossval_rollout_mse": float(trainer.best_value),
        "best_epoch": int(trainer.best_epoch),
        "train_loss": float(losses.get("total", math.nan)),
        "constant_rollout_mse": float(last.get("constant_rollout_mse", math.nan)),
        "val_mse_overall": float(last.get("val_mse_overall", math.nan)),
        "epoch_duration": float(duration),
        "diagnostics_duration": float(diag),
        "total_elapsed": float(trainer.total_elapsed),
        "evaluated": bool(evaluated),
        "optimizer_steps": int(trainer.optimizer_steps),
        "linear_rollout_mse": float(last.get("linear_rollout_mse", math.nan)),
        "adopted_at_epoch": int(trainer.adopted_at),
        "lr_factor": float(trainer.lr_factor(max(0, trainer.schedule_step - 1))),
    }
    for k, v in (extra or {}).items():
        out[k] = v
    for k, v in losses.items():
        out[f"train_{k}"] = float(v)
    for k, v in last.items():
        if k.startswith("cv_"):
            out[k] = float(v)
        elif k.startswith("test_"):
            out[k] = bool(v) if isinstance(v, bool) else float(v)
    return out
