"""Evaluation of a trainer's model on every evaluation set, the objective, and their logging.

Why a module of its own: the evaluation, the objective's bookkeeping (penalty flags,
baselines per dataset) and the TensorBoard figures are the same for every recipe; the epoch
loop (trainer.py) only asks for them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from latent_tune.training import figures
from latent_tune.training.data import EvalSet
from latent_tune.training.evaluate import DatasetEval, crossval_objective, evaluate_dataset
from latent_tune.training.tensorboard import TBLogger

__all__ = [
    "evaluate_all",
    "is_penalised",
    "log_eval",
    "objective_metrics",
    "test_metrics",
    "trace_neurons",
]


def trace_neurons(cell_types: np.ndarray) -> Tensor:
    """One neuron per cell type, chosen with a fixed seed (the lab's rng seed 0)."""
    rng = np.random.default_rng(0)
    picks = [int(rng.choice(np.flatnonzero(cell_types == t))) for t in np.unique(cell_types)]
    return torch.tensor(picks, dtype=torch.int64)


def is_penalised(ev: DatasetEval, penalty_factor: float) -> bool:
    """Whether crossval_objective replaced this dataset's MSE with its penalty."""
    v = ev.metrics["mse_overall"]
    return (
        (not ev.finite)
        or (not math.isfinite(v))
        or v > penalty_factor * ev.metrics["constant_mse_overall"]
    )


def evaluate_set(
    trainer: Any, model: torch.nn.Module, es: EvalSet, need_figures: bool
) -> DatasetEval:
    """One dataset's open-loop evaluation of `model` with the trainer's recipe and config."""
    ev = trainer.config.evaluation
    return evaluate_dataset(
        model,
        es.x,
        es.x_interp,
        es.stim,
        es.starts,
        tu=trainer.recipe.loss_period(),
        horizon=trainer.recipe.eval_horizon(),
        rollout_steps=ev.rollout_steps,
        threshold=ev.divergence_threshold,
        need_figures=need_figures,
        trace_neurons=trainer.trace_neurons if need_figures else None,
        fast=ev.fast,
        bf16=ev.bf16,
        z0=trainer.recipe.start_state(model, es, ev.bf16),
    )


def evaluate_all(
    trainer: Any, model: torch.nn.Module, need_figures: bool
) -> dict[str, DatasetEval]:
    """`model` on "val" and every cross-val set (no logging, no state)."""
    sets = [trainer.val, *trainer.crossval]
    return {es.name: evaluate_set(trainer, model, es, need_figures) for es in sets}


def objective_metrics(
    evals: Mapping[str, DatasetEval], crossval: list[EvalSet], penalty_factor: float
) -> dict[str, float | bool]:
    """Objective metrics from an evaluation (cross-val sets only) plus both baselines."""
    cv = {es.name: evals[es.name] for es in crossval}
    obj = dict(crossval_objective(cv, penalty_factor))
    obj["penalised"] = any(is_penalised(e, penalty_factor) for e in cv.values())
    obj["constant_rollout_mse"] = float(
        np.mean([e.metrics["constant_mse_overall"] for e in cv.values()])
    )
    obj["linear_rollout_mse"] = float(
        np.mean([e.metrics["linear_interp_mse_overall"] for e in cv.values()])
    )
    obj["val_mse_overall"] = float(evals["val"].metrics["mse_overall"])
    for name, e in cv.items():
        obj[f"cv_{name}_mse_overall"] = float(e.metrics["mse_overall"])
        obj[f"cv_{name}_constant_mse_overall"] = float(e.metrics["constant_mse_overall"])
    return obj


def test_metrics(trainer: Any, model: torch.nn.Module, step: int) -> dict[str, float | bool]:
    """`model` on the held-out test windows (logged under `Test/<name>/`): the objective, the
    penalty flag and both baselines with a `test_` prefix; empty without test sets."""
    if not trainer.test:
        return {}
    evals = {es.name: evaluate_set(trainer, model, es, False) for es in trainer.test}
    pf = trainer.config.evaluation.penalty_factor
    obj = crossval_objective(evals, pf)
    for name, ev in evals.items():
        trainer.tb.scalars(f"Test/{name}/", ev.metrics, step)
    return {
        "test_crossval_rollout_mse": float(obj["crossval_rollout_mse"]),
        "test_penalised": any(is_penalised(e, pf) for e in evals.values()),
        "test_constant_rollout_mse": float(
            np.mean([e.metrics["constant_mse_overall"] for e in evals.values()])
        ),
        "test_linear_rollout_mse": float(
            np.mean([e.metrics["linear_interp_mse_overall"] for e in evals.values()])
        ),
    }


def log_eval(trainer: Any, evals: Mapping[str, DatasetEval], step: int, need_figures: bool) -> None:
    """Every dataset's metrics (and, when due, its figures) to the trainer's TensorBoard."""
    for name, ev in evals.items():
        prefix = TBLogger.eval_prefix(None if name == "val" else name)
        trainer.tb.scalars(prefix, ev.metrics, step)
        if need_figures and trainer.tb.enabled:
            _log_figures(trainer, prefix, ev, step)


def _log_figures(trainer: Any, prefix: str, ev: DatasetEval, step: int) -> None:
    """Render, log and close the evaluation figures of one dataset."""
    data = trainer.data
    tu = ev.tu
    ems = max(1, ev.horizon // max(tu, 1))
    ymin = 1e-4 if data.quantity == "calcium" else 1e-3
    short = {k: v.numpy() for k, v in ev.short.items()}
    made = {
        "multi_start_2000step_latent_rollout_mses_by_time": figures.rollout_mses_by_time(
            ev.curves.numpy(), ev.constant_curve.numpy()
        ),
        "short_rollout_mse_latent": figures.short_rollout_mse(
            short["model"],
            tu=tu,
            ems=ems,
            constant=short.get("constant"),
            linear=short.get("linear") if tu > 1 else None,
            staggered=short.get("staggered") if tu > 1 else None,
            ymin=ymin,
        ),
    }
    names = data.type_names
    for label in ("best", "worst"):
        sc = ev.scatter.get(label)
        if sc is not None:
            made[f"{label}_2000step_rollout_latent_mse_var_scatter"] = figures.mse_var_scatter(
                sc["var_truth"].numpy(),
                sc["var_error"].numpy(),
                data.cell_types,
                names,
                title=f"{label} start",
            )
        tr = ev.traces.get(label)
        if tr is not None and ev.trace_neurons is not None:
            types = data.cell_types[ev.trace_neurons.numpy()]
            labels = [names[t] if t < len(names) else str(t) for t in types]
            made[f"{label}_2000step_rollout_latent_traces"] = figures.rollout_traces(
                tr["truth"].numpy(), tr["prediction"].numpy(), labels, title=f"{label} start"
            )
    for name, fig in made.items():
        trainer.tb.figure(prefix + name, fig, step)
        figures.close_figure(fig)
