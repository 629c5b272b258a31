"""Checkpoint files: atomic writes, safe loads.

A reader (Ray syncing a trial dir, a user's notebook, a resumed trial) must never see a
half-written checkpoint, hence the atomic rename; and loading must never execute pickled code,
hence `weights_only=True` (states hold tensors, numbers, strings, lists and dicts only).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from latent_tune.atomic import atomic_file
from latent_tune.errors import UserInputError

__all__ = ["check_weights_only", "load_state", "save_state"]

_ALLOWED_LEAVES = (torch.Tensor, bool, int, float, str, type(None))


def check_weights_only(obj: Any, where: str = "state") -> None:
    """Raise TypeError naming the first leaf that weights_only loading would refuse.

    Catches a stray numpy array or config object at save time, where the fix is obvious,
    instead of at load time in another process.
    """
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            if not isinstance(k, str | int):
                raise TypeError(f"{where}: key {k!r} is {type(k).__name__}, not str/int")
            check_weights_only(v, f"{where}.{k}")
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            check_weights_only(v, f"{where}[{i}]")
    elif not isinstance(obj, _ALLOWED_LEAVES):
        raise TypeError(f"{where}: {type(obj).__name__} cannot be loaded with weights_only=True")


def save_state(state: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write `state` with torch.save into `path` atomically; returns the path."""
    check_weights_only(state)
    path = Path(path)
    with atomic_file(path) as tmp:
        torch.save(dict(state), tmp)
    return path


def load_state(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a state written by save_state (weights_only=True); a missing file is user input."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(path, None, "checkpoint file not found")
    return torch.load(path, map_location=map_location, weights_only=True)
