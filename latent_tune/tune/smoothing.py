"""Smoothing of the per-epoch objective before schedulers and searchers compare trials.

Why: the 2000-step rollout objective is chaotic inside one run: it swings several-fold from one
evaluation to the next and can sit on the divergence penalty for a single epoch. ASHA and PBT
compare trials on the value of one epoch, so their cuts follow that chaos. A smoothed value
(an exponential moving average, or the mean / median of the last k evaluations) ranks a trial
on where its curve is, not on its latest swing.

Rules (pure, no Ray or torch, so the trainable can checkpoint the state as JSON):
- only evaluated epochs update the smoother; epochs between evaluations repeat the previous raw
  value and the previous smoothed value;
- the raw value already carries the divergence penalty, so a penalised evaluation enters the
  smoother as its (finite) penalty;
- a non-finite raw value is reported as is for its epoch and is not folded into the state
  (one NaN would otherwise stick in an EMA forever).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["RULES", "SMOOTHED_SUFFIX", "Smoother", "rank_metric", "smooth_series"]

RULES = ("none", "ema", "mean_of_last", "median_of_last")
SMOOTHED_SUFFIX = "_smoothed"


def rank_metric(metric: str, rule: str) -> str:
    """The report key schedulers and searchers compare: the raw metric, or its smoothed key."""
    return metric if rule == "none" else f"{metric}{SMOOTHED_SUFFIX}"


@dataclass
class Smoother:
    """One trial's smoother. `update` is called once per epoch with that epoch's report."""

    rule: str = "none"
    alpha: float = 0.5
    k: int = 3
    ema: float | None = None
    window: list[float] = field(default_factory=list)
    last: float | None = None  # the value reported at the last evaluated epoch

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ValueError(f"unknown smoothing rule {self.rule!r} (one of {', '.join(RULES)})")
        if not 0.0 < self.alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {self.alpha}")
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any] | None) -> Smoother:
        """From the space's `objective.smoothing` mapping (type, alpha, k); None = no smoothing."""
        spec = dict(spec or {})
        return cls(
            str(spec.get("type", "none")), float(spec.get("alpha", 0.5)), int(spec.get("k", 3))
        )

    def _fold(self, x: float) -> float:
        if self.rule == "ema":
            self.ema = x if self.ema is None else self.alpha * x + (1.0 - self.alpha) * self.ema
            return self.ema
        self.window = [*self.window, x][-self.k :]
        if self.rule == "median_of_last":
            return float(statistics.median(self.window))
        if self.rule == "mean_of_last":
            return math.fsum(self.window) / len(self.window)
        return x

    def update(self, raw: float, evaluated: bool = True) -> float:
        """Fold an evaluated raw value in and return the smoothed value to report."""
        raw = float(raw)
        if not evaluated:
            return self.last if self.last is not None else raw
        if not math.isfinite(raw):
            return raw
        self.last = self._fold(raw)
        return self.last

    def state_dict(self) -> dict[str, Any]:
        """JSON-ready state (kept in the checkpoint's meta next to the trainer state)."""
        return {
            "rule": self.rule,
            "alpha": self.alpha,
            "k": self.k,
            "ema": self.ema,
            "window": list(self.window),
            "last": self.last,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue a checkpointed smoother (a resume, or a PBT donor's after an exploit).

        The rule stays this trial's; the state is taken as recorded (a window longer than this
        rule's k keeps its newest values)."""
        ema, last = state.get("ema"), state.get("last")
        self.ema = None if ema is None else float(ema)
        self.window = [float(v) for v in state.get("window") or []][-self.k :]
        self.last = None if last is None else float(last)


def smooth_series(
    values: list[float], evaluated: list[bool] | None, spec: Mapping[str, Any] | None
) -> list[float]:
    """The smoothed values a trial reports for a whole curve (offline replays, tests)."""
    s = Smoother.from_spec(spec)
    flags = evaluated if evaluated is not None else [True] * len(values)
    return [s.update(v, bool(e)) for v, e in zip(values, flags)]
