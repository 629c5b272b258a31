"""Seeded chunk, batch-start and evaluation-start sampling (docs/method.md, sections 3, 4, 7, 8).

Everything draws from a CPU torch.Generator so a run is reproducible from its seed on any
device (the lab's chunk order was unseeded). Returns CPU int64 tensors / Python ints.
"""

from __future__ import annotations

import torch


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if int(value) < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")


def chunk_starts(
    train_len: int, chunk_steps: int, tu: int, n_chunks: int, gen: torch.Generator
) -> list[int]:
    """Chunk starts, relative to the training range start, drawn uniformly with replacement.

    Starts are multiples of tu so the phase grid of every chunk agrees with absolute time. A
    range no longer than one chunk gives a single whole-range chunk: [0].
    """
    _check_positive(train_len=train_len, chunk_steps=chunk_steps, tu=tu, n_chunks=n_chunks)
    if train_len <= chunk_steps:
        return [0]
    n_offsets = (train_len - chunk_steps) // tu + 1
    k = torch.randint(0, n_offsets, (int(n_chunks),), generator=gen, dtype=torch.int64)
    return [int(v) * int(tu) for v in k.tolist()]


def batch_starts(
    chunk_len: int, horizon: int, batch_size: int, tu: int, gen: torch.Generator
) -> torch.Tensor:
    """Training window starts (B,), uniform in [tu, chunk_len - horizon], not tu-aligned.

    Starting at least tu rows in means the interpolated start frame never relies on the
    before-first-observation edge hold; the window t0 .. t0 + horizon - 1 stays in the chunk.
    """
    _check_positive(chunk_len=chunk_len, horizon=horizon, batch_size=batch_size, tu=tu)
    high = int(chunk_len) - int(horizon)
    if high < tu:
        raise ValueError(
            f"chunk of {chunk_len} steps is too short for horizon {horizon} "
            f"after {tu} warm-up steps"
        )
    return torch.randint(int(tu), high + 1, (int(batch_size),), generator=gen, dtype=torch.int64)


def eval_starts(
    length: int, rollout_steps: int, n_starts: int, margin: int, seed: int
) -> torch.Tensor:
    """Sorted distinct evaluation starts in [margin, length - rollout_steps - 1], seeded by `seed`.

    Why a margin and a seed of their own (not tu, not the training seed): every trial of a
    search, whatever its tu, recipe context or training seed, must be scored on the same
    windows, so the margin covers the largest context a search may need before a start.
    Each start leaves room for the rollout's targets start + 1 .. start + rollout_steps. Fewer
    than n_starts come back only when the range holds fewer distinct positions.
    """
    _check_positive(length=length, rollout_steps=rollout_steps, n_starts=n_starts, margin=margin)
    low, high = int(margin), int(length) - int(rollout_steps) - 1
    if high < low:
        raise ValueError(
            f"array of {length} steps is too short for a {rollout_steps}-step rollout "
            f"after a {margin}-step start margin"
        )
    gen = torch.Generator(device="cpu")
    gen.manual_seed(int(seed))
    n_positions = high - low + 1
    picks = torch.randperm(n_positions, generator=gen)[: int(n_starts)]
    return torch.sort(picks + low).values.to(torch.int64)
