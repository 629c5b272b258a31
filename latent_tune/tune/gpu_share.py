"""A trial's share of a GPU: enforce it, measure the peak, explain an OOM in terms of the space.

Why: Ray's fractional `gpu` is only a scheduling token. Without a cap, one trial that needs more
than its share takes memory from the others packed on the same GPU, and a *neighbour* dies of
the OOM. Capping each trial's CUDA caching allocator at its share makes the trial that does not
fit the one that fails, with an error that names `resources.gpu` and the measured peak, and
each epoch reports `gpu_peak_gb` so a search's results say how many trials a GPU can hold.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from latent_tune.errors import UserInputError

__all__ = ["GB", "GpuShare", "claim_gpu_share", "explain_gpu_oom", "peak_gb"]

GB = 1e9
KEY = "resources.gpu"


@dataclass(frozen=True)
class GpuShare:
    """The part of one GPU a trial may use."""

    fraction: float  # the space's resources.gpu (whole GPUs above 1)
    total_bytes: int  # the memory of the device the trial runs on
    device_name: str = "GPU"

    @property
    def share_bytes(self) -> int:
        return int(self.total_bytes * min(self.fraction, 1.0))

    def oom_error(self, peak_bytes: int | None, detail: str) -> UserInputError:
        """The one-line error for a trial that ran out of memory inside its share."""
        peak = "" if peak_bytes is None else f"; its peak was {peak_bytes / GB:.1f} GB"
        advice = (
            "raise resources.gpu"
            if self.fraction < 1.0
            else "use a bigger GPU or lower training.batch_size / training.chunk_steps"
        )
        return UserInputError(
            None,
            KEY,
            f"CUDA out of memory: {KEY} = {self.fraction:g} gives this trial "
            f"{self.share_bytes / GB:.1f} GB of the {self.total_bytes / GB:.1f} GB "
            f"{self.device_name}{peak}; {advice} ({detail[:160]})",
        )


def claim_gpu_share(fraction: float, device: torch.device) -> GpuShare | None:
    """Cap this process's CUDA allocator at `fraction` of the device; None off CUDA."""
    if device.type != "cuda" or fraction <= 0:
        return None
    index = device.index if device.index is not None else torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    share = GpuShare(fraction, int(props.total_memory), props.name)
    if fraction < 1.0:
        torch.cuda.set_per_process_memory_fraction(fraction, index)
    torch.cuda.reset_peak_memory_stats(index)
    return share


def peak_gb(device: torch.device) -> float | None:
    """Peak CUDA memory allocated by this process since the trial started, in GB."""
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / GB


@contextlib.contextmanager
def explain_gpu_oom(share: GpuShare | None, device: torch.device) -> Iterator[None]:
    """Turn a CUDA OOM inside the block into the share's one-line error (the cause kept)."""
    try:
        yield
    except torch.cuda.OutOfMemoryError as exc:
        if share is None:
            raise
        peak = peak_gb(device)
        raise share.oom_error(
            None if peak is None else int(peak * GB), " ".join(str(exc).split())
        ) from exc
