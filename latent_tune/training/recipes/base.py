"""The Recipe extension point: what a model family brings to the shared training loop.

Why: evaluation, the objective, TensorBoard, checkpoints, search, export and reports are the
same for every model family, so numbers are comparable across families. A recipe brings only
what differs: its config class, its model, the loss of one batch, how a rollout starts at an
evaluation start, how many rows it reads before a start, and optional pre-training phases.
The Trainer (training/trainer.py) drives it; a user's recipe lives in their own package and is
named in a config as `recipe: package.module:Class` (see registry.py).

A recipe's model must offer the open-loop rollout interface the shared evaluation calls:
`encode_stimulus(s) -> u`, `rollout(z0, u) -> (K, B, L)` states after each step, and
`decode(z) -> (..., N)`; `start_state` gives z0 at each evaluation start.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from latent_tune.data.acquisition import Acquisition
from latent_tune.training.config import BaseTrainConfig
from latent_tune.training.data import EvalSet, RunData

__all__ = ["Phase", "Recipe"]


@dataclass(frozen=True)
class Phase:
    """A pre-training phase run once before the first main epoch (e.g. a warm-up).

    `run(trainer)` does all of the phase's epochs, logging under its own TensorBoard prefix.
    """

    name: str
    run: Callable[[Any], None]


class Recipe:
    """Base class of a training recipe (see the module docstring for the contract)."""

    name: ClassVar[str] = ""
    config_class: ClassVar[type[BaseTrainConfig]] = BaseTrainConfig

    def __init__(self, config: Any, data: RunData, acq: Acquisition, device: torch.device) -> None:
        self.config = config
        self.data = data
        self.acq = acq
        self.device = device

    def build_model(self) -> nn.Module:
        """The model, on the CPU (the Trainer seeds the init and moves it to the device)."""
        raise NotImplementedError

    def context_steps(self) -> int:
        """Rows before a window start the recipe reads (training batches start this far in)."""
        return int(self.config.context_steps())

    def horizon(self, epoch: int) -> int:
        """Rows after a batch start that main epoch `epoch` (0-based) trains on."""
        raise NotImplementedError

    def loss_period(self) -> int:
        """Steps between the training loss points (training.time_units: also under
        all_time_points acquisition, where every step is observed but the loss still sits on
        the tu grid); the evaluation's loss-point / intervening metrics and its linear
        baseline use this grid."""
        return int(self.config.training.time_units)

    def eval_horizon(self) -> int:
        """The training horizon the evaluation's fit-window metrics refer to."""
        return self.horizon(self.config.training.epochs - 1)

    def epoch_scalars(self, epoch: int) -> dict[str, int | float]:
        """Per-epoch values reported to Tune and logged under `Train/` (e.g. a warm-up's
        current setting); none by default."""
        return {}

    def batch_loss(
        self, model: nn.Module, x: Tensor, stim: Tensor, t0: Tensor, horizon: int
    ) -> dict[str, Tensor]:
        """Loss terms of one batch (key `total` is optimised) from a chunk's rows x, stim."""
        raise NotImplementedError

    def start_state(self, model: nn.Module, es: EvalSet, bf16: bool) -> Tensor | None:
        """The rollout's initial state at each of es.starts, reading only rows <= each start
        (observed entries only); None: the model's encoding of the interpolated start frame."""
        return None

    def phases(self) -> list[Phase]:
        """Pre-training phases in order (only the enabled ones)."""
        return []

    def reseed(self, seed: int) -> None:
        """Reseed the recipe's own random generators (after adopting another run's state)."""

    def state_dict(self) -> dict[str, Any]:
        """The recipe's own state (its random generators; weights_only-loadable)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any], model: nn.Module) -> None:
        """Restore `state_dict()`; `model` is the already restored model."""
