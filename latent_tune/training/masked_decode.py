"""Masked decoding of the staggered EVOLVE term: decode only the observed (b, i) pairs.

At step k batch element b observes exactly the neurons whose phase is (t0_b + k) mod tu, about
1/tu of them. Grouping the neurons by phase (``PhaseClasses``, built once per run) turns the
decoder's output layer, the largest matmul of the step, into one batched matmul of each class's
weight rows against the (b, k) pairs due for that class: the same loss and gradients as the
dense path of ``staggered_loss`` with ~1/tu of the work.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from latent_tune.data.acquisition import Acquisition
from latent_tune.model.eed import EEDModel

__all__ = ["PhaseClasses", "masked_evolve", "phase_classes"]


@dataclass(frozen=True)
class PhaseClasses:
    """Neurons grouped by observation phase: row c of ``index`` lists the neurons of phase
    ``phase[c]`` (empty phases dropped), padded to the largest class with ``valid`` False.

    Why padded: one (C, M) table lets the masked loss decode every class in a single batched
    matmul (no loop over classes, neurons or batch); with random phases the padding is small.
    """

    tu: int
    n_neurons: int
    phase: Tensor  # (C,) int64
    index: Tensor  # (C, M) int64 neuron ids (0 where padded)
    valid: Tensor  # (C, M) bool

    def to(self, device: torch.device | str) -> PhaseClasses:
        """A copy with the tables on ``device``."""
        return PhaseClasses(
            self.tu,
            self.n_neurons,
            self.phase.to(device),
            self.index.to(device),
            self.valid.to(device),
        )


def phase_classes(acq: Acquisition, device: torch.device | str | None = None) -> PhaseClasses:
    """Group ``acq``'s neurons by phase mod effective tu (once per run; one host sync)."""
    tu = acq.effective_tu
    ph = torch.remainder(acq.phases.detach().to(device="cpu", dtype=torch.int64), tu)
    n = int(ph.numel())
    counts = torch.bincount(ph, minlength=tu)
    present = torch.nonzero(counts).flatten()
    order = torch.argsort(ph, stable=True)
    sorted_ph = ph[order]
    slot = torch.arange(n) - (torch.cumsum(counts, 0) - counts)[sorted_ph]
    row = torch.full((tu,), -1, dtype=torch.int64)
    row[present] = torch.arange(present.numel())
    width = max(int(counts.max()) if n else 0, 1)
    index = torch.zeros((max(present.numel(), 1), width), dtype=torch.int64)
    valid = torch.zeros(index.shape, dtype=torch.bool)
    index[row[sorted_ph], slot] = order
    valid[row[sorted_ph], slot] = True
    phase = present if present.numel() else torch.zeros(1, dtype=torch.int64)
    out = PhaseClasses(tu, n, phase, index, valid)
    return out.to(device) if device is not None else out


def masked_evolve(
    model: EEDModel, feats: Tensor, x: Tensor, t0: Tensor, classes: PhaseClasses
) -> Tensor:
    """EVOLVE_STAG from the decoder features of all H steps, decoding observed pairs only.

    feats (H, B, F) are the output layer's inputs for z_0..z_{H-1}. Class c is due for b at
    steps k = ((phase_c - t0_b) mod tu) + j tu, j = 0..ceil(H/tu)-1 (steps >= H masked out);
    its predictions are one batched matmul (C, B*J, F) x (C, F, M) with the class's weight rows.
    The sum of squared errors over observed entries / (B*N) equals the sum of the dense
    per-step means.
    """
    horizon, batch, width = feats.shape
    tu, n_cls = classes.tu, classes.index.shape[0]
    n_j = -(-horizon // tu)
    device = feats.device
    first = torch.remainder(classes.phase.unsqueeze(1) - t0.unsqueeze(0), tu)  # (C, B)
    k = first.unsqueeze(-1) + tu * torch.arange(n_j, device=device)  # (C, B, J)
    in_window = k < horizon
    k = k.clamp_max(horizon - 1)
    # Gathers as index_select on flat rows: its backward is a row-wise index_add, several
    # times faster than advanced indexing's accumulating index_put (the weight's 2h x N rows).
    # Every repeated index (padding, clamped steps) carries an exactly zero gradient, so the
    # sums do not depend on the order of the adds (CUDA's index_add uses atomics).
    steps = k * batch + torch.arange(batch, device=device).view(1, batch, 1)
    f = feats.reshape(horizon * batch, width).index_select(0, steps.flatten())  # (C*B*J, F)
    layer = model.decoder.output_layer
    flat = classes.index.flatten()
    w = layer.weight.index_select(0, flat).view(n_cls, -1, width)  # (C, M, F)
    bias = (
        layer.bias.index_select(0, flat).view(n_cls, -1)
        if layer.bias is not None
        else torch.zeros(classes.index.shape, dtype=w.dtype, device=device)
    )
    pred = torch.baddbmm(
        bias.unsqueeze(1), f.view(n_cls, batch * n_j, width), w.transpose(1, 2)
    ).view(n_cls, batch, n_j, -1)  # (C, B, J, M)
    rows = (t0.view(1, batch, 1) + k).unsqueeze(-1)
    target = x[rows, classes.index.view(n_cls, 1, 1, -1)]  # (C, B, J, M)
    ok = in_window.unsqueeze(-1) & classes.valid.view(n_cls, 1, 1, -1)
    zero = torch.zeros((), dtype=x.dtype, device=device)
    diff = torch.where(ok, pred - torch.where(ok, target, zero), zero)
    return diff.square().sum() / (batch * classes.n_neurons)
