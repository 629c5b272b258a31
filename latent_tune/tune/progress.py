"""Live progress of a search on the driver's stdout.

Why our own callback: Tune's default reporter prints wide tables every few seconds; a lab member
wants one line per finished trial and a short status line with the best result so far.
"""

from __future__ import annotations

import math
import time
from typing import Any

from ray.tune import Callback

from latent_tune.tune.schedulers import TIME_ATTR

__all__ = ["Progress"]


class Progress(Callback):
    """Compact live progress: one line per finished trial and a status line every few seconds."""

    current: Progress | None = None  # the driver's live instance (also after Tuner.restore)

    def __init__(self, metric: str, mode: str, every_s: float = 15.0) -> None:
        self.metric, self.mode, self.every_s = metric, mode, every_s
        self.best: tuple[float, str, int] | None = None
        self.last_print = 0.0
        self.t0 = time.time()
        self.statuses: dict[str, str] = {}
        Progress.current = self

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.t0, self.last_print, self.statuses = time.time(), 0.0, {}
        Progress.current = self

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self.statuses = {t.trial_id: str(t.status) for t in trials}

    def unfinished(self) -> int:
        """Trials not TERMINATED/ERROR at the last step (after Ctrl+C: > 0)."""
        return sum(s not in ("TERMINATED", "ERROR") for s in self.statuses.values())

    def _better(self, v: float) -> bool:
        if self.best is None:
            return True
        return v < self.best[0] if self.mode == "min" else v > self.best[0]

    def _line(self, trials: list) -> str:
        counts: dict[str, int] = {}
        for t in trials:
            counts[t.status] = counts.get(t.status, 0) + 1
        state = ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items()))
        best = ""
        if self.best is not None:
            best = (
                f" | best {self.metric} {self.best[0]:.4g} ({self.best[1]}, epoch {self.best[2]})"
            )
        return f"[{time.time() - self.t0:6.0f}s] {state}{best}"

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        v = result.get(self.metric)
        if (
            isinstance(v, int | float)
            and math.isfinite(v)
            and not result.get("diverged")
            and self._better(float(v))
        ):
            self.best = (float(v), trial.trial_id, int(result.get(TIME_ATTR, 0)))
        if time.time() - self.last_print >= self.every_s:
            self.last_print = time.time()
            print(self._line(trials), flush=True)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        last = trial.last_result or {}
        v = last.get(self.metric)
        vs = f"{v:.4g}" if isinstance(v, float) else str(v)
        print(
            f"  trial {trial.trial_id} finished at epoch {last.get(TIME_ATTR, '?')}: "
            f"{self.metric} {vs}",
            flush=True,
        )

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        print(f"  trial {trial.trial_id} failed (see {trial.path}/error.txt)", flush=True)
