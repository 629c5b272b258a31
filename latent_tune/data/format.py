"""The on-disk dataset and suite formats: file names, header and manifest schemas, Arrow layout.

A dataset is a directory (docs/method.md, section 1):

    dataset.yaml         header (DatasetHeader)
    <quantity>.arrow     (T, N) float32 activity, one per quantity
    stimulus.arrow       (T, S) float32 stimulus
    neurons.parquet      index, x, y, group, type_id, type_name (N rows)
    connectome.parquet   pre, post, weight (one row per edge)

Each `.arrow` file is ONE uncompressed Arrow IPC file holding a single record batch with one
FixedSizeList<float32>[width] column: the values of all rows are then one contiguous buffer, so
any time slice (t0:t1) is a zero-copy view of the memory map. A suite is a directory with
`suite.yaml` (SuiteManifest) and one dataset directory per stimulus family.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from latent_tune.atomic import atomic_write_text
from latent_tune.errors import UserInputError
from latent_tune.sanity import load_yaml_mapping

__all__ = [
    "CONNECTOME_FILE",
    "CONNECTOME_SCHEMA",
    "FORMAT_VERSION",
    "HEADER_FILE",
    "NEURONS_FILE",
    "NEURONS_SCHEMA",
    "QUANTITY_RE",
    "RESERVED_NAMES",
    "STIMULUS",
    "STIMULUS_FILE",
    "SUITE_FILE",
    "CrossvalEntry",
    "DatasetHeader",
    "SuiteManifest",
    "TrainEntry",
    "arrow_file",
    "arrow_schema",
    "parse_header",
    "parse_manifest",
    "pydantic_error",
    "write_header",
    "write_manifest",
]

FORMAT_VERSION = 1
HEADER_FILE = "dataset.yaml"
SUITE_FILE = "suite.yaml"
STIMULUS = "stimulus"
STIMULUS_FILE = "stimulus.arrow"
NEURONS_FILE = "neurons.parquet"
CONNECTOME_FILE = "connectome.parquet"

NEURONS_SCHEMA = pa.schema(
    [
        ("index", pa.int64()),
        ("x", pa.float32()),
        ("y", pa.float32()),
        ("group", pa.int32()),
        ("type_id", pa.int32()),
        ("type_name", pa.string()),
    ]
)
CONNECTOME_SCHEMA = pa.schema([("pre", pa.int64()), ("post", pa.int64()), ("weight", pa.float32())])

# A quantity name becomes a file name: keep it to a safe, portable subset.
QUANTITY_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
RESERVED_NAMES = frozenset({STIMULUS, "dataset", "neurons", "connectome", "suite"})


def arrow_file(quantity: str) -> str:
    """File name of a quantity's (or the stimulus') Arrow file."""
    return f"{quantity}.arrow"


def arrow_schema(name: str, width: int) -> pa.Schema:
    """Schema of an activity/stimulus file: one FixedSizeList<float32>[width] column, no nulls."""
    return pa.schema([pa.field(name, pa.list_(pa.float32(), width), nullable=False)])


class DatasetHeader(BaseModel):
    """`dataset.yaml`: what the Arrow/Parquet files must agree with."""

    model_config = ConfigDict(extra="forbid")

    format_version: int
    name: str = Field(min_length=1)
    dt: float = Field(gt=0, allow_inf_nan=False, description="seconds per step")
    n_steps: int = Field(ge=1)
    n_neurons: int = Field(ge=1)
    n_stimulus: int = Field(ge=0)
    quantities: list[str] = Field(min_length=1)
    provenance: dict[str, Any] = Field(default_factory=dict)

    @field_validator("format_version")
    @classmethod
    def _known_version(cls, v: int) -> int:
        if v != FORMAT_VERSION:
            raise ValueError(
                f"unknown format version {v}; this latent_tune reads version {FORMAT_VERSION}"
            )
        return v

    @field_validator("quantities")
    @classmethod
    def _valid_quantities(cls, v: list[str]) -> list[str]:
        for q in v:
            if not QUANTITY_RE.match(q):
                raise ValueError(f"quantity name {q!r} must match {QUANTITY_RE.pattern}")
            if q in RESERVED_NAMES:
                raise ValueError(f"quantity name {q!r} is reserved")
        if len(set(v)) != len(v):
            raise ValueError(f"quantities {v} contain duplicates")
        return v


class TrainEntry(BaseModel):
    """The training dataset of a suite and its default train/validation split (row ranges)."""

    model_config = ConfigDict(extra="forbid")

    dataset: str
    train_range: tuple[int, int]
    val_range: tuple[int, int]


class CrossvalEntry(BaseModel):
    """One cross-validation dataset (another stimulus family) and the rows evaluated on it."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    dataset: str
    range: tuple[int, int]


def _check_subdir(v: str) -> str:
    p = Path(v)
    if not v or p.is_absolute() or ".." in p.parts or len(p.parts) != 1:
        raise ValueError(f"dataset {v!r} must be the name of a sub-directory of the suite")
    return v


def _check_range(r: tuple[int, int], what: str) -> None:
    if not 0 <= r[0] < r[1]:
        raise ValueError(f"{what} {list(r)} must satisfy 0 <= t0 < t1")


class SuiteManifest(BaseModel):
    """`suite.yaml`: the training dataset with its split, and the cross-validation datasets."""

    model_config = ConfigDict(extra="forbid")

    format_version: int
    name: str = Field(min_length=1)
    preset: str | None = None
    seed: int | None = None
    train: TrainEntry
    crossval: list[CrossvalEntry] = Field(min_length=1)

    @field_validator("format_version")
    @classmethod
    def _known_version(cls, v: int) -> int:
        return DatasetHeader._known_version(v)

    @model_validator(mode="after")
    def _consistent(self) -> SuiteManifest:
        _check_subdir(self.train.dataset)
        _check_range(self.train.train_range, "train.train_range")
        _check_range(self.train.val_range, "train.val_range")
        (a0, a1), (b0, b1) = self.train.train_range, self.train.val_range
        if a0 < b1 and b0 < a1:
            raise ValueError(f"train.train_range {[a0, a1]} and train.val_range {[b0, b1]} overlap")
        names = [c.name for c in self.crossval]
        if len(set(names)) != len(names):
            raise ValueError(f"crossval names {names} are not unique")
        for c in self.crossval:
            _check_subdir(c.dataset)
            _check_range(c.range, f"crossval {c.name} range")
        return self


def pydantic_error(file: str | Path, err: ValidationError) -> UserInputError:
    """The first pydantic error as a UserInputError naming the dotted key."""
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or None
    msg = first["msg"].removeprefix("Value error, ")
    return UserInputError(file, key, msg)


def parse_header(path: Path) -> DatasetHeader:
    """Load and validate a `dataset.yaml`; the version is checked first, so old files say so."""
    data = load_yaml_mapping(path)
    if "format_version" not in data:
        raise UserInputError(path, "format_version", "missing")
    try:
        return DatasetHeader.model_validate(data)
    except ValidationError as e:
        raise pydantic_error(path, e) from e


def parse_manifest(path: Path) -> SuiteManifest:
    """Load and validate a `suite.yaml`."""
    data = load_yaml_mapping(path)
    if "format_version" not in data:
        raise UserInputError(path, "format_version", "missing")
    try:
        return SuiteManifest.model_validate(data)
    except ValidationError as e:
        raise pydantic_error(path, e) from e


def _dump(model: BaseModel) -> str:
    return yaml.safe_dump(model.model_dump(mode="json"), sort_keys=False)


def write_header(directory: Path, header: DatasetHeader) -> Path:
    """Write `dataset.yaml` into `directory` atomically."""
    path = Path(directory) / HEADER_FILE
    atomic_write_text(path, _dump(header))
    return path


def write_manifest(directory: Path, manifest: SuiteManifest) -> Path:
    """Write `suite.yaml` into `directory` atomically (tuples become YAML lists)."""
    path = Path(directory) / SUITE_FILE
    atomic_write_text(path, _dump(manifest))
    return path
