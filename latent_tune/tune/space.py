"""Search-space files: schema, loading, `--set` edits.

Why: a search runs for days on a shared cluster, so every mistake in the space file must be
found before Ray starts, reported as one line naming the file and the key path
(`UserInputError`). The schema is strict (`extra="forbid"`) so a typo is never silently ignored.
"""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from latent_tune.errors import UserInputError
from latent_tune.sanity import check_values, parse_assignment, parse_yaml, read_text
from latent_tune.tune.smoothing import rank_metric

__all__ = [
    "DIST_KEYS",
    "AshaScheduler",
    "CheckpointSpec",
    "DataSpec",
    "DistEntry",
    "FifoScheduler",
    "Objective",
    "Pb2Scheduler",
    "PbtScheduler",
    "ReportSpec",
    "Resources",
    "SearchSpace",
    "SearcherSpec",
    "Smoothing",
    "StoppingSpec",
    "TrialsSpec",
    "apply_sets",
    "find_space_file",
    "load_space",
    "parse_space",
]

DIST_KEYS = ("choice", "uniform", "loguniform", "randint", "grid")
_ENTRY_KEYS = (*DIST_KEYS, "bounds", "explore_weight")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


Number = float | int


class DistEntry(_Strict):
    """One tuned parameter: exactly one distribution, plus PBT explore settings.

    `randint: [lo, hi]` samples integers lo..hi-1 (Ray's convention, upper end exclusive).
    `bounds` are hard limits for PBT's explore (default: the distribution's own range);
    `explore_weight` w scales the multiplicative explore step (1 +- U(0.002 w, w)).
    """

    choice: list[Any] | None = Field(default=None, min_length=1)
    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None
    randint: tuple[int, int] | None = None
    grid: list[Any] | None = Field(default=None, min_length=1)
    bounds: tuple[Number, Number] | None = None
    explore_weight: float | None = Field(default=None, gt=0.0, lt=1.0)

    @model_validator(mode="after")
    def _one_distribution(self) -> DistEntry:
        given = [k for k in DIST_KEYS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of {', '.join(DIST_KEYS)} (got {', '.join(given) or 'none'})"
            )
        kind = given[0]
        if kind in ("uniform", "loguniform", "randint"):
            lo, hi = getattr(self, kind)
            if not (math.isfinite(lo) and math.isfinite(hi)) or not lo < hi:
                raise ValueError(f"{kind}: need finite [low, high] with low < high, got {[lo, hi]}")
            if kind == "loguniform" and lo <= 0:
                raise ValueError(f"loguniform: low must be > 0, got {lo}")
        if kind in ("choice", "grid"):
            values = getattr(self, kind)
            if len({repr(v) for v in values}) != len(values):
                raise ValueError(f"{kind}: values must be distinct, got {values}")
        if self.bounds is not None:
            lo, hi = self.bounds
            if not (math.isfinite(lo) and math.isfinite(hi)) or not lo < hi:
                raise ValueError(f"bounds: need finite [low, high] with low < high, got {[lo, hi]}")
            if kind in ("choice", "grid"):
                raise ValueError("bounds: only for uniform, loguniform or randint entries")
            if kind == "loguniform" and lo <= 0:
                raise ValueError(f"bounds: low must be > 0 for a loguniform entry, got {lo}")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in DIST_KEYS if getattr(self, k) is not None)

    @property
    def values(self) -> Any:
        return getattr(self, self.kind)

    @property
    def is_integer(self) -> bool:
        """Integer-valued: randint, or a choice/grid of ints only (tu, ems, num_neurons)."""
        if self.kind == "randint":
            return True
        if self.kind in ("choice", "grid"):
            return all(isinstance(v, int) and not isinstance(v, bool) for v in self.values)
        return False

    @property
    def is_continuous(self) -> bool:
        return self.kind in ("uniform", "loguniform")

    def hard_bounds(self) -> tuple[float, float] | None:
        """Explore limits: `bounds` if given, else the sampling range (randint: inclusive)."""
        if self.bounds is not None:
            return (self.bounds[0], self.bounds[1])
        if self.kind in ("uniform", "loguniform"):
            lo, hi = self.values
            return (lo, hi)
        if self.kind == "randint":
            lo, hi = self.values
            return (lo, hi - 1)
        return None

    def extremes(self) -> list[Any]:
        """Values that must all validate: range ends (and bounds), every option."""
        if self.kind in ("choice", "grid"):
            return list(self.values)
        lo, hi = self.values
        out: list[Any] = [lo, hi - 1] if self.kind == "randint" else [lo, hi]
        if self.bounds is not None:
            blo, bhi = self.bounds
            out += [int(blo), int(bhi)] if self.kind == "randint" else [blo, bhi]
        return out


class Smoothing(_Strict):
    """How the objective is smoothed over a trial's evaluations before trials are compared."""

    type: Literal["none", "ema", "mean_of_last", "median_of_last"] = "none"
    alpha: float = Field(default=0.5, gt=0.0, le=1.0)  # ema: s_t = alpha x_t + (1 - alpha) s_t-1
    k: int = Field(default=3, ge=1)  # mean_of_last / median_of_last: the last k evaluations


class Objective(_Strict):
    metric: str = Field(default="crossval_rollout_mse", min_length=1)
    mode: Literal["min", "max"] = "min"
    smoothing: Smoothing = Field(default_factory=Smoothing)

    @property
    def rank_metric(self) -> str:
        """The report key schedulers, searchers and the ranking use (`<metric>_smoothed`)."""
        return rank_metric(self.metric, self.smoothing.type)

    def record(self) -> dict[str, Any]:
        """What objective.json holds: which key ranked the trials, and how it was made."""
        return {
            "metric": self.metric,
            "mode": self.mode,
            "rank_metric": self.rank_metric,
            "smoothing": self.smoothing.model_dump(),
        }


class AshaScheduler(_Strict):
    """ASHA: stop weak trials at rungs grace_period * reduction_factor**k (epochs)."""

    type: Literal["asha"]
    max_t: int | None = Field(default=None, ge=1)  # None = training.epochs
    grace_period: int = Field(default=1, ge=1)
    reduction_factor: float = Field(default=3.0, gt=1.0)


class _PopulationBased(_Strict):
    perturbation_interval: int = Field(ge=1)  # epochs per generation
    quantile_fraction: float = Field(default=0.25, gt=0.0, le=0.5)
    patience: int | None = Field(default=None, ge=1)  # generations; None = no plateau stop
    min_improvement: float = Field(default=5.0e-4, ge=0.0)  # relative, over `patience`


class PbtScheduler(_PopulationBased):
    """PBT with a bounded multiplicative explore; Ray's quantile exploit (public API only)."""

    type: Literal["pbt"]
    burn_in: int = Field(default=0, ge=0)  # epochs before the first exploit
    exploit: Literal["quantile"] = "quantile"
    resample_probability: float = Field(default=0.0, ge=0.0, le=1.0)
    explore_weight: float = Field(default=0.3, gt=0.0, lt=1.0)  # default per-parameter w

    @model_validator(mode="after")
    def _burn_in_on_boundary(self) -> PbtScheduler:
        if self.burn_in % self.perturbation_interval:
            raise ValueError(
                f"burn_in ({self.burn_in}) must be a multiple of perturbation_interval "
                f"({self.perturbation_interval}), so checkpoints fall on perturbation boundaries"
            )
        return self


class Pb2Scheduler(_PopulationBased):
    """PB2: PBT whose explore is a GP bandit over the continuous parameters' bounds."""

    type: Literal["pb2"]


class FifoScheduler(_Strict):
    type: Literal["fifo"]


SchedulerSpec = Annotated[
    AshaScheduler | PbtScheduler | Pb2Scheduler | FifoScheduler, Field(discriminator="type")
]


class SearcherSpec(_Strict):
    type: Literal["optuna", "random", "grid"] | None = None  # None: optuna, or random for PBT
    seed: int | None = 0


class TrialsSpec(_Strict):
    num_samples: int = Field(default=8, ge=1)
    max_concurrent: int | None = Field(default=None, ge=1)
    max_failures: int = Field(default=1, ge=0)  # retries from the last checkpoint


class Resources(_Strict):
    cpu: float = Field(default=1.0, gt=0.0)
    gpu: float = Field(default=0.0, ge=0.0)

    @model_validator(mode="after")
    def _whole_or_fraction(self) -> Resources:
        if self.gpu > 1 and self.gpu != int(self.gpu):
            raise ValueError(f"gpu: above 1 it must be a whole number, got {self.gpu}")
        return self


class CheckpointSpec(_Strict):
    every: int = Field(default=1, ge=1)  # epochs; PBT/PB2: the perturbation interval
    keep: int = Field(default=3, ge=1)  # newest per trial (plus any a trial will restore)


class StoppingSpec(_Strict):
    # consecutive reports with a penalised (NaN / exploding) objective before a trial stops
    diverged_patience: int = Field(default=3, ge=0)  # 0 = never


class DataSpec(_Strict):
    """Shorthand for the data overrides: a suite dir, or the demo preset simulated on first use."""

    suite: str | None = None
    preset: Literal["tiny", "demo", "lab"] | None = None


class ReportSpec(_Strict):
    html: bool = True  # write <experiment>/report.html at the end of the search


class SearchSpace(_Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    trainable: str = Field(min_length=1)
    base: str | None = None  # default: <trainable>.yaml in trainables/
    overrides: dict[str, Any] = Field(default_factory=dict)
    data: DataSpec = Field(default_factory=DataSpec)
    objective: Objective = Field(default_factory=Objective)
    scheduler: SchedulerSpec = Field(default_factory=lambda: AshaScheduler(type="asha"))
    searcher: SearcherSpec = Field(default_factory=SearcherSpec)
    space: dict[str, DistEntry] = Field(min_length=1)
    trials: TrialsSpec = Field(default_factory=TrialsSpec)
    resources: Resources = Field(default_factory=Resources)
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec)
    stopping: StoppingSpec = Field(default_factory=StoppingSpec)
    report: ReportSpec = Field(default_factory=ReportSpec)
    storage: str | None = None

    @property
    def searcher_type(self) -> str:
        if self.searcher.type is not None:
            return self.searcher.type
        return "random" if self.scheduler.type in ("pbt", "pb2") else "optuna"

    @property
    def population_based(self) -> bool:
        return self.scheduler.type in ("pbt", "pb2")


def _flatten_overrides(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested or dotted override keys -> dotted leaf paths (lists stay whole)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.update(_flatten_overrides(v, key))
        else:
            out[key] = v
    return out


def _check_cross_rules(sp: SearchSpace) -> tuple[str, str] | None:
    """Rules that span sections; returns (key path, problem) for the first broken one."""
    st = sp.searcher_type
    if sp.population_based and st == "optuna":
        return (
            "searcher.type",
            f"{sp.scheduler.type} cannot use a searcher (Ray refuses it): use random or grid",
        )
    for key, entry in sp.space.items():
        if entry.kind == "grid" and st == "optuna":
            return (f"space.{key}.grid", "grid entries need searcher random or grid, not optuna")
        if entry.explore_weight is not None and not sp.population_based:
            return (f"space.{key}.explore_weight", "only used by the pbt scheduler")
        if not key or any(not part for part in key.split(".")):
            return (f"space.{key}", "not a dotted config path")
    if sp.scheduler.type == "pb2" and not any(e.is_continuous for e in sp.space.values()):
        return ("space", "pb2 needs at least one uniform or loguniform parameter")
    if sp.population_based and "every" in sp.checkpoint.model_fields_set:
        interval = sp.scheduler.perturbation_interval  # type: ignore[union-attr]
        if sp.checkpoint.every != interval:
            return (
                "checkpoint.every",
                f"{sp.scheduler.type} checkpoints on every perturbation boundary "
                f"(perturbation_interval: {interval}); leave this key out or set it to {interval}",
            )
    return None


def _first_error(exc: ValidationError) -> tuple[str, str]:
    err = exc.errors(include_url=False)[0]
    loc = [str(p) for p in err.get("loc", ()) if p not in ("asha", "pbt", "pb2", "fifo")]
    problem = err.get("msg", "invalid value")
    if err.get("type") == "extra_forbidden":
        problem = "unknown key"
    elif err.get("type") == "missing":
        problem = "required key is missing"
    elif problem.startswith("Value error, "):
        problem = problem[len("Value error, ") :]
    elif err.get("type") == "union_tag_invalid":
        problem = "type must be one of asha, pbt, pb2, fifo"
    return ".".join(loc) or "-", problem


def parse_space(raw: Any, file: str | os.PathLike) -> SearchSpace:
    """Validate a parsed YAML document; the first problem becomes a UserInputError."""
    if raw is None:
        raise UserInputError(file, None, "empty search-space file (expected a mapping)")
    if not isinstance(raw, dict):
        raise UserInputError(file, None, f"expected a mapping, got {type(raw).__name__}")
    raw = dict(raw)
    if isinstance(raw.get("overrides"), dict):
        raw["overrides"] = _flatten_overrides(raw["overrides"])
    try:
        sp = SearchSpace.model_validate(raw)
    except ValidationError as exc:
        key, problem = _first_error(exc)
        raise UserInputError(file, key, problem) from None
    broken = _check_cross_rules(sp)
    if broken is not None:
        raise UserInputError(file, broken[0], broken[1])
    return sp


def _set_path(node: dict, parts: list[str], value: Any, section: str | None) -> None:
    """Set a dotted path inside the raw space, matching dotted keys that already exist."""
    for n in range(len(parts), 0, -1):
        key = ".".join(parts[:n])
        if key in node:
            if n == len(parts):
                node[key] = value
                return
            child = node[key]
            if not isinstance(child, dict):
                raise ValueError(f"'{key}' is not a section")
            _set_path(child, parts[n:], value, section=key if section is None else "")
            return
    if section == "space":
        if parts[-1] in _ENTRY_KEYS and len(parts) > 1:
            node[".".join(parts[:-1])] = {parts[-1]: value}
        else:
            node[".".join(parts)] = value
    elif section == "overrides":
        node[".".join(parts)] = value
    else:
        child = node.setdefault(parts[0], {}) if len(parts) > 1 else None
        if child is None:
            node[parts[0]] = value
        elif not isinstance(child, dict):
            raise ValueError(f"'{parts[0]}' is not a section")
        else:
            _set_path(child, parts[1:], value, section=parts[0] if section is None else "")


def apply_sets(raw: Any, sets: list[str], file: str | os.PathLike) -> Any:
    """Apply `--set key.path=value` edits (values parsed as YAML) to the raw space document."""
    if not sets:
        return raw
    if not isinstance(raw, dict):
        raise UserInputError(file, None, f"expected a mapping, got {type(raw).__name__}")
    out = copy.deepcopy(raw)
    if isinstance(out.get("overrides"), dict):
        out["overrides"] = _flatten_overrides(out["overrides"])
    for item in sets:
        key, value = parse_assignment(item, "--set")
        try:
            _set_path(out, key.split("."), value, section=None)
        except ValueError as exc:
            raise UserInputError("--set", key, str(exc)) from None
    return out


def find_space_file(arg: str, bundled_dir: Path | None) -> Path:
    """An existing path, else `search_spaces/<file name>` (working dir's, then the installed)."""
    p = Path(arg)
    if p.is_file():
        return p
    candidates = [Path.cwd() / "search_spaces" / p.name]
    if bundled_dir is not None:
        candidates.append(bundled_dir / p.name)
    for c in candidates:
        if c.is_file():
            return c
    raise UserInputError(arg, None, "no such search-space file (nor in search_spaces/)")


def load_space(path: Path, sets: list[str] | None = None) -> SearchSpace:
    """Read, edit with --set, and validate a search-space file."""
    raw = parse_yaml(read_text(path), path)
    raw = apply_sets(raw, list(sets or []), path)
    check_values(raw, path)
    return parse_space(raw, path)
