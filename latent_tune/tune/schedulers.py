"""Schedulers and searchers: ASHA (+ Optuna TPE), PBT with a bounded explore, PB2, FIFO.

Why: Ray's default PBT explore multiplies by 1.2 / 0.8 and never clips to the declared range;
AutoLFADS showed a bounded, weighted multiplicative explore works. Only public knobs are used
(`custom_explore_fn`, `quantile_fraction`); AutoLFADS's binary-tournament exploit would need
Ray's private `_quantiles`, so the exploit is Ray's quantile rule (0.5 exploits about half the
population per generation, as a tournament does).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

from ray.tune.schedulers import (
    ASHAScheduler,
    FIFOScheduler,
    PopulationBasedTraining,
    TrialScheduler,
)
from ray.tune.schedulers.pb2 import PB2
from ray.tune.search import BasicVariantGenerator, Searcher
from ray.tune.search.optuna import OptunaSearch

from latent_tune.tune.space import DistEntry, PbtScheduler, SearchSpace

__all__ = [
    "TIME_ATTR",
    "BoundedExplore",
    "ExploreSpec",
    "build_scheduler",
    "build_searcher",
]

TIME_ATTR = "epoch"  # the trainer's own epoch count: survives restores and exploits exactly
_MIN_FRACTION = 0.002  # AutoLFADS: step = U(0.002 w, w)
_MAX_TRIES = 1000


@dataclass(frozen=True)
class ExploreSpec:
    """How one parameter moves in PBT's explore."""

    kind: str  # numeric | choice
    weight: float
    low: float | None = None
    high: float | None = None
    integer: bool = False
    options: tuple[Any, ...] = ()
    log: bool = False

    @classmethod
    def from_entry(cls, entry: DistEntry, default_weight: float) -> ExploreSpec:
        w = entry.explore_weight if entry.explore_weight is not None else default_weight
        if entry.kind in ("choice", "grid"):
            return cls("choice", w, options=tuple(entry.values), integer=entry.is_integer)
        lo, hi = entry.hard_bounds()  # type: ignore[misc]
        return cls(
            "numeric",
            w,
            float(lo),
            float(hi),
            entry.kind == "randint",
            log=entry.kind == "loguniform",
        )


class BoundedExplore:
    """PBT `custom_explore_fn`: x -> x * (1 +- U(0.002 w, w)), redrawn until inside bounds.

    Choices move to a neighbouring option; integers stay integers; with probability
    `resample_probability` a value is redrawn from its whole range instead. Picklable (the
    Tuner stores its scheduler). `seed` makes a search's explore sequence reproducible.
    """

    def __init__(
        self, specs: dict[str, ExploreSpec], resample_probability: float = 0.0, seed: int | None = 0
    ) -> None:
        self.specs = dict(specs)
        self.resample_probability = resample_probability
        self.rng = random.Random(seed)

    def _resample(self, spec: ExploreSpec) -> Any:
        if spec.kind == "choice":
            return self.rng.choice(spec.options)
        assert spec.low is not None and spec.high is not None
        if spec.integer:
            return self.rng.randint(int(math.ceil(spec.low)), int(math.floor(spec.high)))
        if spec.log and spec.low > 0:
            return math.exp(self.rng.uniform(math.log(spec.low), math.log(spec.high)))
        return self.rng.uniform(spec.low, spec.high)

    def _neighbour(self, spec: ExploreSpec, value: Any) -> Any:
        options = list(spec.options)
        if value not in options:
            return self.rng.choice(options)
        i = options.index(value)
        moves = [j for j in (i - 1, i + 1) if 0 <= j < len(options)]
        return options[self.rng.choice(moves)] if moves else value

    def _multiply(self, spec: ExploreSpec, value: float) -> float | int:
        assert spec.low is not None and spec.high is not None
        for _ in range(_MAX_TRIES):
            step = self.rng.uniform(_MIN_FRACTION * spec.weight, spec.weight)
            new = value * (1.0 + step if self.rng.random() < 0.5 else 1.0 - step)
            if spec.integer:
                new = int(round(new))
            if spec.low <= new <= spec.high:
                return new
        # value itself outside the bounds (edited space on resume): come back inside
        clipped = min(max(value, spec.low), spec.high)
        return int(round(clipped)) if spec.integer else clipped

    def explore_value(self, key: str, value: Any) -> Any:
        spec = self.specs[key]
        if self.resample_probability and self.rng.random() < self.resample_probability:
            return self._resample(spec)
        if spec.kind == "choice":
            return self._neighbour(spec, value)
        return self._multiply(spec, value)

    def __call__(self, config: dict[str, Any]) -> dict[str, Any]:
        out = dict(config)
        for key in self.specs:
            if key in out:
                out[key] = self.explore_value(key, out[key])
        return out


def explore_specs(space: SearchSpace, default_weight: float) -> dict[str, ExploreSpec]:
    return {k: ExploreSpec.from_entry(e, default_weight) for k, e in space.space.items()}


def pb2_bounds(space: SearchSpace) -> dict[str, list[float]]:
    """PB2's GP bandit explores only the continuous parameters, inside their hard bounds."""
    return {
        k: list(e.hard_bounds())  # type: ignore[arg-type]
        for k, e in space.space.items()
        if e.is_continuous
    }


def build_scheduler(space: SearchSpace, max_epochs: int) -> TrialScheduler:
    """The scheduler named in the space; metric/mode come from TuneConfig."""
    sch = space.scheduler
    if sch.type == "asha":
        return ASHAScheduler(
            time_attr=TIME_ATTR,
            max_t=sch.max_t or max_epochs,
            grace_period=sch.grace_period,
            reduction_factor=sch.reduction_factor,
        )
    if sch.type == "pbt":
        assert isinstance(sch, PbtScheduler)
        explore = BoundedExplore(
            explore_specs(space, sch.explore_weight),
            resample_probability=sch.resample_probability,
            seed=space.searcher.seed,
        )
        kwargs: dict[str, Any] = {
            "time_attr": TIME_ATTR,
            "perturbation_interval": sch.perturbation_interval,
            "burn_in_period": sch.burn_in,
            "hyperparam_mutations": {},
            "custom_explore_fn": explore,
            "quantile_fraction": sch.quantile_fraction,
            "resample_probability": 0.0,
            "log_config": True,
        }
        return PopulationBasedTraining(**kwargs)
    if sch.type == "pb2":
        return PB2(
            time_attr=TIME_ATTR,
            perturbation_interval=sch.perturbation_interval,
            hyperparam_bounds=pb2_bounds(space),
            quantile_fraction=sch.quantile_fraction,
            log_config=True,
        )
    return FIFOScheduler()


def build_searcher(space: SearchSpace) -> Searcher | BasicVariantGenerator:
    """Optuna TPE for ASHA/FIFO, else Ray's random/grid generator (the only one PBT accepts)."""
    if space.searcher_type == "optuna":
        return OptunaSearch(seed=space.searcher.seed)
    return BasicVariantGenerator(
        random_state=space.searcher.seed, max_concurrent=space.trials.max_concurrent or 0
    )
