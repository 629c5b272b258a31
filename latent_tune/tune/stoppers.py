"""Stop rules: a whole-population plateau stop, and early stop of diverged trials.

Why: AutoLFADS stopped the whole PBT population once its best score stopped improving (relative
5e-4 over 4 generations); a trial whose rollout diverges for several evaluations in a row only
wastes slots. Both use Tune's public `Stopper` interface.
"""

from __future__ import annotations

import math
from typing import Any

from ray.tune import Stopper

__all__ = ["SearchStopper"]


class SearchStopper(Stopper):
    """Per-trial divergence stop + optional whole-experiment plateau stop.

    Divergence: `diverged_patience` evaluations in a row whose objective was penalised (NaN or
    an exploding rollout) or is not finite stop that trial. Reports of epochs without an
    evaluation (`evaluated: False`, evaluation.every > 1) carry the last flags forward and
    are not counted.

    Plateau: generation g covers epochs ((g-1) * interval, g * interval]; B(g) is the best
    objective seen up to generation g. Once generation G has started, generation G-1 counts as
    complete, and the search stops when B improved by less than `min_improvement` (relative)
    over the last `patience` complete generations.
    """

    def __init__(
        self,
        metric: str,
        mode: str,
        *,
        time_attr: str = "epoch",
        diverged_patience: int = 0,
        interval: int | None = None,
        patience: int | None = None,
        min_improvement: float = 5.0e-4,
        burn_in: int = 0,
    ) -> None:
        self.metric = metric
        self.sign = 1.0 if mode == "min" else -1.0
        self.time_attr = time_attr
        self.diverged_patience = diverged_patience
        self.interval = interval
        self.patience = patience
        self.min_improvement = min_improvement
        self.burn_in = burn_in
        self._diverged_run: dict[str, int] = {}
        self._best_in_gen: dict[int, float] = {}
        self._max_gen = 0
        self._stop_all = False
        self.reason: str | None = None

    def _generation(self, t: float) -> int:
        assert self.interval
        return max(1, math.ceil(t / self.interval))

    def _best_up_to(self, g: int) -> float:
        vals = [v for k, v in self._best_in_gen.items() if k <= g]
        return min(vals) if vals else math.inf

    def _update_plateau(self, result: dict[str, Any]) -> None:
        if not self.interval or not self.patience:
            return
        t, value = result.get(self.time_attr), result.get(self.metric)
        if t is None or value is None or t <= self.burn_in:
            return
        value = float(value) * self.sign
        if not math.isfinite(value):
            return
        g = self._generation(float(t) - self.burn_in)
        self._best_in_gen[g] = min(self._best_in_gen.get(g, math.inf), value)
        self._max_gen = max(self._max_gen, g)
        done = self._max_gen - 1  # last complete generation
        if done - self.patience < 1:
            return
        old, new = self._best_up_to(done - self.patience), self._best_up_to(done)
        if math.isfinite(old) and old - new <= self.min_improvement * abs(old):
            self._stop_all = True
            self.reason = (
                f"plateau: best {self.metric} improved by <= {self.min_improvement:g} "
                f"(relative) over {self.patience} generations"
            )

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        self._update_plateau(result)
        if self.diverged_patience > 0 and result.get("evaluated", True):
            value = result.get(self.metric)
            bad = bool(result.get("penalised")) or (
                isinstance(value, float) and not math.isfinite(value)
            )
            run = self._diverged_run.get(trial_id, 0) + 1 if bad else 0
            self._diverged_run[trial_id] = run
            if run >= self.diverged_patience:
                return True
        return False

    def stop_all(self) -> bool:
        return self._stop_all
