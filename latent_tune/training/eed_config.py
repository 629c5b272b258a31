"""The EED recipes' configuration: loss, training warm-ups and the model, on the shared base.

Why its own module: the staggered and aligned recipes add these sections to the config every
recipe shares (``latent_tune.training.config``); other recipes (LFADS) bring their own.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator

from latent_tune.model.config import ModelConfig
from latent_tune.training.config import (
    BaseTrainConfig,
    BaseTrainingConfig,
    NonNegFloat,
    NonNegInt,
    PositiveFloat,
    PositiveInt,
    StrictModel,
)
from latent_tune.training.config_loading import KeyedValueError, flatten

__all__ = [
    "AugConfig",
    "L1Config",
    "LossConfig",
    "StimulusAEConfig",
    "TrainConfig",
    "TrainingConfig",
    "config_paths",
]


class AugConfig(StrictModel):
    coeff: NonNegFloat = 0.0
    num_neurons: NonNegInt = 0


class L1Config(StrictModel):
    encoder: NonNegFloat = 0.0
    decoder: NonNegFloat = 0.0
    evolver: NonNegFloat = 0.0


class LossConfig(StrictModel):
    tv_coeff: NonNegFloat = 0.0
    aug: AugConfig = Field(default_factory=AugConfig)
    l1: L1Config = Field(default_factory=L1Config)
    recon_weight: NonNegFloat = 1.0


class StimulusAEConfig(StrictModel):
    enabled: bool = False
    epochs: PositiveInt = 10
    batch_size: PositiveInt = 256
    learning_rate: PositiveFloat = 1.0e-4


class TrainingConfig(BaseTrainingConfig):
    """EED training: the base leaves plus ems, the EED warm-ups and masked decoding."""

    evolve_multiple_steps: PositiveInt = 5
    ems_warmup_epochs: NonNegInt = 0
    recon_warmup_epochs: NonNegInt = 0
    stimulus_ae: StimulusAEConfig = Field(default_factory=StimulusAEConfig)
    # Staggered recipe: decode only the observed (b, i) pairs (~1/tu of the output layer's
    # work, same loss and gradients); False = the dense reference. The aligned recipe ignores it.
    masked_decode: bool = True

    @property
    def horizon(self) -> int:
        return self.time_units * self.evolve_multiple_steps

    @model_validator(mode="after")
    def _chunk_fits_window(self) -> TrainingConfig:
        # Batch starts lie in [tu, chunk_len - H]: a chunk needs room for at least one window.
        need = self.time_units + self.horizon + 1
        if self.chunk_steps < need:
            raise KeyedValueError(
                "chunk_steps",
                f"must be >= time_units + time_units * evolve_multiple_steps + 1 = {need}",
            )
        return self


class TrainConfig(BaseTrainConfig):
    """The EED config; ``recipe`` picks the staggered or the time-aligned loss."""

    recipe: Literal["staggered", "aligned"] = "staggered"
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)

    @property
    def horizon(self) -> int:
        """Training horizon H = tu * ems (steps unrolled per batch)."""
        return self.training.horizon

    @model_validator(mode="after")
    def _recipe_fits(self) -> TrainConfig:
        mode = self.acquisition.mode
        if self.recipe == "staggered" and mode == "all_time_points":
            raise KeyedValueError(
                "acquisition.mode",
                "the staggered recipe needs staggered_random or time_aligned acquisition, "
                "not all_time_points (use recipe 'aligned')",
            )
        if self.recipe == "aligned" and mode == "staggered_random":
            raise KeyedValueError(
                "acquisition.mode",
                "the aligned recipe needs simultaneous frames (time_aligned or "
                "all_time_points), not staggered_random (use recipe 'staggered')",
            )
        if self.recipe == "staggered" and self.horizon < 2:
            raise KeyedValueError(
                "training.evolve_multiple_steps",
                "the staggered recipe needs time_units * evolve_multiple_steps >= 2 "
                "(with a horizon of 1 the evolver is never trained)",
            )
        if self.evaluation.rollout_steps <= self.horizon:
            raise KeyedValueError(
                "evaluation.rollout_steps",
                f"must exceed the training horizon time_units * evolve_multiple_steps "
                f"= {self.horizon}",
            )
        return self


def config_paths(cfg: BaseModel | None = None) -> set[str]:
    """All dotted leaf paths of the config (of the defaults when ``cfg`` is None)."""
    return set(flatten(cfg if cfg is not None else TrainConfig()))
