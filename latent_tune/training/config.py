"""Training configuration: one nested pydantic model, addressed by dotted paths.

Why: a search space tunes any leaf (``training.time_units``, ``loss.tv_coeff``) by its dotted
path with no glue code, and a bad file or override must fail before any work starts with one
line naming the file and the key (``UserInputError``). Defaults are the lab's YAML values
(docs/method.md, section 7).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from latent_tune.errors import UserInputError
from latent_tune.model.config import ModelConfig
from latent_tune.sanity import (
    check_values,
    load_yaml_mapping,
    parse_assignment,
    parse_yaml_mapping,
)
from latent_tune.training.recipes.registry import resolve_recipe

__all__ = [
    "AcquisitionConfig",
    "AugConfig",
    "BaseTrainConfig",
    "BaseTrainingConfig",
    "CrossvalEntry",
    "DataConfig",
    "EvaluationConfig",
    "L1Config",
    "LRScheduleConfig",
    "LossConfig",
    "StimulusAEConfig",
    "StrictModel",
    "TrainConfig",
    "TrainingConfig",
    "apply_overrides",
    "config_class",
    "config_paths",
    "flatten",
    "load_config",
    "parse_overrides",
    "validate_config",
]


class KeyedValueError(ValueError):
    """A validation error that knows the dotted key (relative to its model) it is about.

    Why: cross-field validators run at model level, where pydantic reports no field location;
    carrying the key lets ``validate_config`` name the offending leaf anyway.
    """

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(problem)
        self.key = key
        self.problem = problem


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


class AugConfig(_Strict):
    coeff: NonNegFloat = 0.0
    num_neurons: NonNegInt = 0


class L1Config(_Strict):
    encoder: NonNegFloat = 0.0
    decoder: NonNegFloat = 0.0
    evolver: NonNegFloat = 0.0


class LossConfig(_Strict):
    tv_coeff: NonNegFloat = 0.0
    aug: AugConfig = Field(default_factory=AugConfig)
    l1: L1Config = Field(default_factory=L1Config)
    recon_weight: NonNegFloat = 1.0


class StimulusAEConfig(_Strict):
    enabled: bool = False
    epochs: PositiveInt = 10
    batch_size: PositiveInt = 256
    learning_rate: PositiveFloat = 1.0e-4


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


# ---------------------------------------------------------------------------------------------
# loading, overrides, validation


def _kind(value: Any) -> str:
    return type(value).__name__


def load_config(path: Path | str, overrides: Sequence[str] = ()) -> Any:
    """Read a YAML config, apply ``key.path=value`` overrides, validate.

    Every failure (unreadable, not UTF-8, not YAML, not a mapping, unknown key, bad value) is a
    ``UserInputError`` naming the file and, where there is one, the dotted key.
    """
    path = Path(path)
    data = load_yaml_mapping(path)
    data = apply_overrides(data, parse_overrides(overrides, file=path), file=path)
    check_values(data, path)
    return validate_config(data, file=path)


def parse_overrides(
    overrides: Sequence[str], *, file: str | os.PathLike[str] | None = None
) -> dict[str, Any]:
    """``["a.b=1", "c=[1, 2]"]`` -> ``{"a.b": 1, "c": [1, 2]}`` (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for item in overrides:
        key, value = parse_assignment(item, file)
        out[key] = value
    return out


def _model_class(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model class inside an annotation (``X``, ``X | None``), else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) is not None:
        for arg in get_args(annotation):
            found = _model_class(arg)
            if found is not None:
                return found
    return None


def config_class(recipe: Any, *, file: str | os.PathLike[str] | None = None) -> type[Any]:
    """The config class of a recipe name (bundled, registered or `package.module:Class`)."""
    name = "staggered" if recipe is None else recipe
    if not isinstance(name, str):
        raise UserInputError(file, "recipe", f"expected a recipe name, got {_kind(name)}")
    return resolve_recipe(name, file=file).config_class


def _check_path(parts: list[str], root: type[BaseModel]) -> bool:
    """Whether ``parts`` names a field of config class ``root`` (a leaf or a whole section)."""
    cls: type[BaseModel] | None = root
    for part in parts:
        if cls is None or part not in cls.model_fields:
            return False
        cls = _model_class(cls.model_fields[part].annotation)
    return True


def apply_overrides(
    cfg_dict: dict[str, Any],
    overrides: Mapping[str, Any],
    *,
    file: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Return a copy of ``cfg_dict`` with each dotted key set to its value.

    Keys are checked against the schema (not the dict, which may omit defaults): an unknown
    path is a ``UserInputError(file, path, "unknown key ...")``. Values are validated later.
    """
    out = copy.deepcopy(cfg_dict)
    root = config_class(overrides.get("recipe", out.get("recipe")), file=file)
    for key, value in overrides.items():
        parts = key.split(".")
        if not all(parts) or not _check_path(parts, root):
            raise UserInputError(file, key, "unknown key (not a field of the training config)")
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                where = ".".join(parts[: i + 1])
                raise UserInputError(file, where, f"expected a mapping, got {_kind(child)}")
            node = child
        node[parts[-1]] = copy.deepcopy(value)
    return out


def _first_error(exc: ValidationError) -> tuple[str, str]:
    err = exc.errors(include_url=False)[0]
    loc = [str(p) for p in err.get("loc", ())]
    problem = err.get("msg", "invalid value")
    cause = (err.get("ctx") or {}).get("error")
    if isinstance(cause, KeyedValueError):
        loc = [*loc, cause.key]
        problem = cause.problem
    elif err.get("type") == "extra_forbidden":
        problem = "unknown key (not a field of the training config)"
    elif problem.startswith("Value error, "):
        problem = problem[len("Value error, ") :]
    return ".".join(loc) or "-", problem


def validate_config(d: Mapping[str, Any], *, file: str | os.PathLike[str] | None = None) -> Any:
    """Validate a plain dict into its recipe's config class (``recipe:``, default staggered);
    the first pydantic error becomes UserInputError(file, key, msg)."""
    if not isinstance(d, Mapping):
        raise UserInputError(file, None, f"expected a mapping at top level, got {_kind(d)}")
    cls = config_class(d.get("recipe"), file=file)
    try:
        return cls.model_validate(dict(d))
    except ValidationError as exc:
        key, problem = _first_error(exc)
        raise UserInputError(file, key, problem) from None


def flatten(cfg: BaseModel) -> dict[str, Any]:
    """Dotted leaf path -> JSON-able value (lists, e.g. ranges, stay whole leaves)."""
    out: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            out[prefix] = node

    walk("", cfg.model_dump(mode="json"))
    return out


def config_paths(cfg: BaseModel | None = None) -> set[str]:
    """All dotted leaf paths of the config (of the defaults when ``cfg`` is None)."""
    return set(flatten(cfg if cfg is not None else TrainConfig()))
