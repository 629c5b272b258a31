"""A trainer's complete state: what save -> restore -> next epoch needs to be exact.

Why its own module: the state is a contract (weights_only-loadable: tensors, numbers, strings,
lists, dicts), versioned by `STATE_FORMAT`; a checkpoint of another format is refused with one
line instead of restoring something half right.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "BEST_FORMAT",
    "STATE_FORMAT",
    "StateFormatError",
    "adopt_into",
    "best_checkpoint_of",
    "check_format",
    "cpu_state",
    "detached_copy",
    "load_into",
    "state_of",
]

STATE_FORMAT = "latent_tune.trainer/3"  # /3: the weights' EMA and the lr schedule's position
BEST_FORMAT = "latent_tune.best_model/1"  # the model-only checkpoint of the best epoch


class StateFormatError(ValueError):
    """A checkpoint written by another version of the trainer (cannot be resumed exactly)."""


def cpu_state(module: nn.Module) -> dict[str, Tensor]:
    """A detached CPU copy of a module's weights (kept as the best model)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def detached_copy(obj: Any) -> Any:
    """Deep copy of a nested state with every tensor detached, cloned and moved to the CPU.

    A state must not alias live parameters: training on after state_dict() would change it.
    """
    if isinstance(obj, Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, Mapping):
        return {k: detached_copy(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(detached_copy(v) for v in obj)
    return obj


def state_of(trainer: Any) -> dict[str, Any]:
    """The complete state of `trainer` (see the module docstring)."""
    return {
        "format": STATE_FORMAT,
        "config": trainer.config.to_yaml(),
        "epoch": int(trainer.epoch),
        "phase": trainer.phase,
        "phases_done": list(trainer.phases_done),
        "model": detached_copy(trainer.model.state_dict()),
        "optimizer": detached_copy(trainer.optimizer.state_dict()),
        "generator": trainer.generator.get_state(),
        "recipe": detached_copy(trainer.recipe.state_dict()),
        "phases": trainer.acq.phases.clone(),
        "best": {
            "value": float(trainer.best_value),
            "epoch": int(trainer.best_epoch),
            "penalised": bool(trainer.best_penalised),
            "model": trainer.best_model if trainer.best_model is not None else {},
        },
        "last_eval": {
            k: (bool(v) if isinstance(v, bool) else float(v)) for k, v in trainer.last_eval.items()
        },
        "last_dataset_metrics": {k: dict(v) for k, v in trainer.last_dataset_metrics.items()},
        "last_losses": dict(trainer.last_losses),
        "total_elapsed": float(trainer.total_elapsed),
        "optimizer_steps": int(trainer.optimizer_steps),
        "adopted_at": int(trainer.adopted_at),
        "ema": trainer.ema.state_dict() if trainer.ema is not None else {},
        # the schedule's position and its factor there; never an absolute lr (see load_into)
        "lr_schedule": {
            "step": int(trainer.schedule_step),
            "factor": float(trainer.lr_factor()),
        },
    }


def check_format(state: Mapping[str, Any]) -> None:
    """Refuse a state of another format (StateFormatError, one line)."""
    if state.get("format") != STATE_FORMAT:
        raise StateFormatError(
            f"checkpoint format {state.get('format')!r} is not {STATE_FORMAT!r} (written by "
            "another latent_tune version): start the run or search again"
        )


def load_into(trainer: Any, state: Mapping[str, Any]) -> None:
    """Restore `state_of()` into `trainer`; the learning rate comes from the trainer's config
    (times the lr schedule's factor at the restored position).

    Why the config wins for lr (and the phases, and the EMA's decay): under PBT a trial may
    continue from another trial's weights with its own, perturbed hyperparameters. A state
    without an EMA restored into a run with one starts the average at the restored weights.
    """
    check_format(state)
    trainer.model.load_state_dict(state["model"])
    # a copy: torch's optimizer keeps same-device tensors as they are, and would then update
    # the caller's state in place (two trainers restored from one dict would share moments)
    trainer.optimizer.load_state_dict(detached_copy(state["optimizer"]))
    trainer.schedule_step = int(state["lr_schedule"]["step"])
    trainer.set_lr(trainer.lr_factor())
    if trainer.ema is not None:
        if state["ema"]:
            trainer.ema.load_state_dict(state["ema"])
        else:
            trainer.ema.module.load_state_dict(state["model"])
            trainer.ema.updates = 0
    trainer.generator.set_state(state["generator"].to(torch.uint8).cpu())
    trainer.recipe.load_state_dict(state.get("recipe", {}), trainer.model)
    trainer.epoch = int(state["epoch"])
    trainer.phase = str(state["phase"])
    trainer.phases_done = list(state["phases_done"])
    best = state["best"]
    trainer.best_value = float(best["value"])
    trainer.best_epoch = int(best["epoch"])
    trainer.best_penalised = bool(best["penalised"])
    trainer.best_model = (
        {k: v.detach().cpu().clone() for k, v in best["model"].items()} if best["model"] else None
    )
    trainer.last_eval = dict(state["last_eval"])
    trainer.last_dataset_metrics = {
        k: {m: float(x) for m, x in v.items()}
        for k, v in state.get("last_dataset_metrics", {}).items()
    }
    trainer.last_losses = {k: float(v) for k, v in state["last_losses"].items()}
    trainer.total_elapsed = float(state["total_elapsed"])
    trainer.optimizer_steps = int(state.get("optimizer_steps", 0))
    trainer.adopted_at = int(state.get("adopted_at", 0))


def adopt_into(trainer: Any, state: Mapping[str, Any], key: str) -> None:
    """Restore another run's `state` into `trainer` with its own data order (generators
    reseeded from `key`) and no inherited best (see `Trainer.adopt` for why)."""
    trainer.load_state_dict(state)
    seed = int.from_bytes(hashlib.sha256(key.encode()).digest()[:7], "little")
    trainer.generator.manual_seed(seed)
    trainer.recipe.reseed(seed + 1)
    trainer.best_value, trainer.best_epoch, trainer.best_penalised = math.inf, trainer.epoch, True
    trainer.best_model = None
    trainer.adopted_at = trainer.epoch


def best_checkpoint_of(trainer: Any) -> dict[str, Any]:
    """A small model-only checkpoint of the best epoch (config as YAML text)."""
    return {
        "format": BEST_FORMAT,
        "config": trainer.config.to_yaml(),
        "epoch": int(trainer.best_epoch),
        "crossval_rollout_mse": float(trainer.best_value),
        "penalised": bool(trainer.best_penalised),
        "model": trainer.best_model_state(),
        "phases": trainer.acq.phases.clone(),
    }
