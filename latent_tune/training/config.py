"""Training configuration shared by every recipe: one nested pydantic model, addressed by dotted
paths.

Why: a search space tunes any leaf (``training.time_units``, ``evaluation.starts``) by its dotted
path with no glue code, and a bad file or override must fail before any work starts with one
line naming the file and the key (``UserInputError``). Defaults are the lab's YAML values
(docs/method.md, section 7). The EED recipes' own sections are in ``training.eed_config``;
loading, overrides and validation in ``training.config_loading``.
"""

from __future__ import annotations

import os
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from latent_tune.sanity import parse_yaml_mapping
from latent_tune.training.config_loading import KeyedValueError, validate_config

__all__ = [
    "AcquisitionConfig",
    "BaseTrainConfig",
    "BaseTrainingConfig",
    "CrossvalEntry",
    "DataConfig",
    "EvaluationConfig",
    "LRScheduleConfig",
    "NonNegFloat",
    "NonNegInt",
    "PositiveFloat",
    "PositiveInt",
    "RowRange",
    "StrictModel",
]


def _check_range(value: tuple[int, int] | None) -> tuple[int, int] | None:
    """A half-open row range [t0, t1) with t1 > t0 >= 0."""
    if value is None:
        return value
    t0, t1 = value
    if t0 < 0:
        raise ValueError(f"range start must be >= 0, got {t0}")
    if t1 <= t0:
        raise ValueError(f"range end must exceed its start, got [{t0}, {t1})")
    return value


RowRange = Annotated[tuple[int, int], AfterValidator(_check_range)]
PositiveInt = Annotated[int, Field(ge=1)]
NonNegInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0.0)]
NonNegFloat = Annotated[float, Field(ge=0.0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


StrictModel = _Strict  # the base of every config section (unknown keys refused), for recipes


class CrossvalEntry(_Strict):
    """One cross-validation dataset: a suite dataset by name, or a dataset dir by path."""

    name: str = Field(min_length=1)
    path: str | None = None
    range: RowRange | None = None


class DataConfig(_Strict):
    suite: str | None = None
    preset: Literal["tiny", "demo", "lab"] = "demo"
    quantity: str = Field(default="voltage", min_length=1)
    train_range: RowRange | None = None
    val_range: RowRange | None = None
    crossval: list[CrossvalEntry] | None = None

    @model_validator(mode="after")
    def _unique_crossval_names(self) -> DataConfig:
        if self.crossval is not None:
            names = [c.name for c in self.crossval]
            if len(set(names)) != len(names):
                raise KeyedValueError("crossval", f"cross-val names must be unique, got {names}")
        return self


class AcquisitionConfig(_Strict):
    mode: Literal["all_time_points", "time_aligned", "staggered_random"] = "staggered_random"
    seed: int = 653
    interpolation: Literal["linear", "hold"] = "linear"


class LRScheduleConfig(_Strict):
    """A factor on `training.learning_rate`, per optimizer step of the main epochs.

    constant: 1; cosine: 1 -> min_factor; step: x gamma every step_epochs epochs; all after a
    linear warm-up over warmup_epochs (0: none). Only the position is state, so a PBT explore of
    the learning rate still applies after a restore (lr = configured lr x factor).
    """

    type: Literal["constant", "cosine", "step"] = "constant"
    warmup_epochs: NonNegInt = 0
    min_factor: Annotated[float, Field(ge=0.0, le=1.0)] = 0.1
    step_epochs: PositiveInt = 30
    gamma: Annotated[float, Field(gt=0.0, le=1.0)] = 0.5


class BaseTrainingConfig(_Strict):
    """The `training.*` leaves every recipe has, at the same dotted paths."""

    time_units: PositiveInt = 20  # the observation period tu of the acquisition
    epochs: PositiveInt = 100
    batch_size: PositiveInt = 256
    learning_rate: PositiveFloat = 1.0e-5
    chunk_steps: PositiveInt = 65536
    chunks_per_epoch: PositiveInt = 14
    batches_per_chunk: PositiveInt = 256
    grad_clip: NonNegFloat = 0.0
    seed: int = 234
    compile: bool = False
    tf32: bool = True
    # bf16 autocast of the train step's forward (CUDA and CPU; off by default).
    bf16: bool = False
    # EMA of the weights after every optimizer step, used for evaluation, the best model and
    # export (the raw weights keep training); 0 = off. Pick it by the run's optimizer steps:
    # 1 / (1 - decay) steps is the averaging window.
    ema_decay: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    lr_schedule: LRScheduleConfig = Field(default_factory=LRScheduleConfig)


class EvaluationConfig(_Strict):
    every: PositiveInt = 1
    # The evaluation windows: drawn from their own seed and at least `start_margin` rows into
    # each evaluation range, so every trial of a search (any tu, recipe or training seed) is
    # scored on the same windows. The margin must cover the context a recipe reads before a
    # start (tu rows for the interpolated EED start frame).
    seed: int = 0
    start_margin: PositiveInt = 100
    # The last part of every cross-validation range that nothing selects on (no best epoch, no
    # ranking, no scheduler): the final epoch is also scored there, `test_crossval_rollout_mse`.
    test_fraction: float = Field(default=1 / 3, ge=0.0, le=0.8)
    rollout_steps: PositiveInt = 2000
    starts: PositiveInt = 10
    divergence_threshold: PositiveFloat = 1.0
    penalty_factor: float = Field(default=10.0, gt=1.0)
    figures_every: NonNegInt = 5  # 0 = never
    # Rollout fast path on CUDA (4x blocks, torch.compile'd evolver step); CPU: the plain path.
    fast: bool = False
    # bf16 autocast of the rollout's model calls (latent state and metrics stay float32).
    bf16: bool = False


class BaseTrainConfig(_Strict):
    """What every recipe's config has: the recipe name, data, acquisition, base training leaves
    and evaluation, at the same dotted paths (so evaluation, search and results are shared).

    A recipe's own config subclasses it with its model/loss sections and a richer `training`.
    """

    recipe: str = "staggered"
    data: DataConfig = Field(default_factory=DataConfig)
    acquisition: AcquisitionConfig = Field(default_factory=AcquisitionConfig)
    training: BaseTrainingConfig = Field(default_factory=BaseTrainingConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)

    def context_steps(self) -> int:
        """Rows a recipe reads before a window start (training batches and evaluation)."""
        return self.training.time_units

    @model_validator(mode="after")
    def _margin_covers_context(self) -> BaseTrainConfig:
        need = self.context_steps()
        if self.evaluation.start_margin < need:
            raise KeyedValueError(
                "evaluation.start_margin",
                f"must be >= {need}, the rows this recipe reads before a start "
                "(training.time_units for an interpolated start frame); raise it for the "
                "whole search",
            )
        return self

    def to_yaml(self) -> str:
        """The resolved config as YAML text (round-trips through ``from_yaml_text``)."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    @classmethod
    def from_yaml_text(cls, text: str, *, file: str | os.PathLike[str] | None = None) -> Any:
        """Parse YAML text (e.g. a checkpoint's saved config) into its recipe's config."""
        return validate_config(parse_yaml_mapping(text, file), file=file)
