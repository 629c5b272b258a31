"""Two stabilisers of the per-epoch objective: a weight average and a learning-rate schedule.

Why: the rollout objective of one epoch is chaotic; the raw weights after the last optimizer
step can sit anywhere on a noisy trajectory. An exponential moving average (EMA) of the weights
is a cheap low-pass filter of that trajectory, and a decaying learning rate shrinks the steps
late in training. Both are config leaves of every recipe (`training.ema_decay`,
`training.lr_schedule`), so a search can tune them.

EMA: after every optimizer step (main epochs and pre-training phases that step the model),
``ema <- ema + (1 - d) * (w - ema)`` over all floating parameters and buffers, vectorised with
``torch._foreach_lerp_``. The average is bias-corrected: after n earlier updates the step uses
``d_n = decay * (1 - decay**n) / (1 - decay**(n + 1))``, which makes it exactly the
decay-weighted mean of the weights after each step so far (the first update copies), so the
initial weights never dominate it (the plain average with decay 0.999 and 200 steps an epoch
would still hold 82% of the init after one epoch). The averaging window is about
min(n, 1 / (1 - decay)) steps. Frozen parameters (requires_grad False, e.g. a pretrained
stimulus encoder) and non-float buffers are copied, not averaged: the average of something that
does not train is itself.

Schedule: a factor on the configured `training.learning_rate`, computed per optimizer step of
the main epochs from the position ``s = epoch * steps_per_epoch + step_in_epoch`` (pre-training
phases run at factor 1, as without a schedule). Only the position is state, so a restored or
adopted run gets ``lr = its own configured lr x factor(position)``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["ModelEMA", "ema_decay_at", "lr_factor"]


def ema_decay_at(decay: float, updates: int) -> float:
    """The decay of the update after `updates` earlier ones (bias correction; 0 = copy)."""
    d = float(decay)
    return d * (1.0 - d**updates) / (1.0 - d ** (updates + 1))


class ModelEMA:
    """An exponential moving average of a model's parameters and buffers (a module copy)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must lie in (0, 1), got {decay}")
        self.decay = float(decay)
        self.updates = 0
        self.module = copy.deepcopy(model).eval()
        self.module.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the model's current weights into the average (call after each optimizer step)."""
        d = ema_decay_at(self.decay, self.updates)
        avg: list[Tensor] = []
        cur: list[Tensor] = []
        copied: list[tuple[Tensor, Tensor]] = []
        ema_params = dict(self.module.named_parameters())
        for name, p in model.named_parameters():
            e = ema_params[name]
            if p.requires_grad and p.is_floating_point():
                avg.append(e)
                cur.append(p.detach())
            else:
                copied.append((e, p.detach()))
        ema_buffers = dict(self.module.named_buffers())
        for name, b in model.named_buffers():
            e = ema_buffers[name]
            if b.is_floating_point():
                avg.append(e)
                cur.append(b.detach())
            else:
                copied.append((e, b.detach()))
        if avg:
            torch._foreach_lerp_(avg, cur, 1.0 - d)
        for e, v in copied:
            e.copy_(v)
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        """The averaged weights and the update count (weights_only-loadable)."""
        return {
            "model": {
                k: v.detach().to("cpu", copy=True) for k, v in self.module.state_dict().items()
            },
            "updates": int(self.updates),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore `state_dict()`."""
        self.module.load_state_dict(state["model"])
        self.updates = int(state["updates"])


def lr_factor(schedule: Any, step: int, total_steps: int, steps_per_epoch: int) -> float:
    """The schedule's factor on the configured lr at main-training optimizer step `step`
    (0-based) of `total_steps`; `schedule` is a `training.lr_schedule` section.

    warmup: linear ramp (s + 1) / W over the first W = warmup_epochs * steps_per_epoch steps;
    then constant: 1; cosine: from 1 down to min_factor over the remaining steps; step:
    gamma ** floor(s / (step_epochs * steps_per_epoch)).
    """
    s = max(0, int(step))
    warm = int(schedule.warmup_epochs) * int(steps_per_epoch)
    if s < warm:
        return (s + 1) / warm
    if schedule.type == "cosine":
        span = max(1, int(total_steps) - warm)
        p = min(1.0, (s - warm) / span)
        lo = float(schedule.min_factor)
        return lo + (1.0 - lo) * 0.5 * (1.0 + math.cos(math.pi * p))
    if schedule.type == "step":
        return float(schedule.gamma) ** (s // (int(schedule.step_epochs) * int(steps_per_epoch)))
    return 1.0
