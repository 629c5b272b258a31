"""One bf16 autocast switch, shared by the train step and the rollout evaluation.

Why on every device and not only CUDA: the option's effect on the objective must be measured,
not assumed, and a CPU with AVX512-BF16 or AMX runs bf16 autocast natively (others emulate it,
more slowly), so the effect can be measured wherever the project runs. Autocast rounds the
inputs of matmul-like ops to bf16 and accumulates in float32 on both devices.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

__all__ = ["bf16_autocast"]


def bf16_autocast(enabled: bool, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on ``device`` when enabled; no context otherwise."""
    if enabled:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
