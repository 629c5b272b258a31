"""Acquisition modes: which neuron is observed at which step (docs/method.md, section 3).

Phases are drawn from a seeded CPU generator so that the same seed gives the same phases on
every device (the lab's CUDA-generator phases differed from CPU ones); the run saves them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MODES = ("all_time_points", "time_aligned", "staggered_random")


@dataclass(frozen=True)
class Acquisition:
    """A fixed observation pattern: neuron i is observed at row t iff (t - phi_i) % tu == 0."""

    mode: str
    tu: int
    phases: torch.Tensor  # int64 (N,), CPU

    @property
    def effective_tu(self) -> int:
        """The observation period: 1 for all_time_points (every step is observed), else tu."""
        return 1 if self.mode == "all_time_points" else self.tu

    @property
    def n_neurons(self) -> int:
        """Number of neurons the pattern covers."""
        return int(self.phases.shape[0])

    def observed(self, t: torch.Tensor) -> torch.Tensor:
        """Observation mask (..., N) for row indices t (...,), on t's device."""
        phases = self.phases.to(t.device)
        return torch.remainder(t.unsqueeze(-1) - phases, self.effective_tu) == 0


def make_acquisition(mode: str, tu: int, n_neurons: int, seed: int) -> Acquisition:
    """Build the acquisition pattern; phases come from a CPU generator seeded with `seed`."""
    if mode not in MODES:
        raise ValueError(f"unknown acquisition mode {mode!r}; expected one of {MODES}")
    if int(tu) < 1:
        raise ValueError(f"tu must be >= 1, got {tu}")
    if int(n_neurons) < 0:
        raise ValueError(f"n_neurons must be >= 0, got {n_neurons}")
    if mode == "staggered_random":
        gen = torch.Generator(device="cpu")
        gen.manual_seed(int(seed))
        phases = torch.randint(0, int(tu), (int(n_neurons),), generator=gen, dtype=torch.int64)
    else:
        phases = torch.zeros(int(n_neurons), dtype=torch.int64)
    return Acquisition(mode=mode, tu=int(tu), phases=phases)


def start_offsets(t0: torch.Tensor, phases: torch.Tensor, tu: int) -> torch.Tensor:
    """(B, N) steps since each neuron's last observation at each start: (t0 - phi) mod tu."""
    phases = phases.to(t0.device)
    return torch.remainder(t0.unsqueeze(-1) - phases, int(tu))
