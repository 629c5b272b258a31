"""The EED losses' regularisers: TV on latent steps, AUG (unconnected neurons to zero), L1.

Why a module of their own: both recipes (staggered and aligned) add the same terms, and the AUG
term needs its own state (the connectome's partner tables, a seeded target sampler) built once
per run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from latent_tune.model.eed import EEDModel
from latent_tune.training.eed_config import L1Config

__all__ = [
    "AugSampler",
    "Connectome",
    "aug_term",
    "l1_term",
    "tv_term",
]

# Above this many padded-table entries per edge, presyn_mask uses the CSR ragged gather.
_MAX_PAD_RATIO = 4


def _as_index(a: Any) -> Tensor:
    if isinstance(a, Tensor):
        return a.detach().to(device="cpu", dtype=torch.int64).reshape(-1)
    return torch.as_tensor(np.asarray(a), dtype=torch.int64).reshape(-1)


class Connectome:
    """Presynaptic partners of each neuron, for the AUG loss's "unconnected to zero" frames.

    Built once from edge arrays (pre -> post) as CSR grouped by the postsynaptic neuron. When the
    in-degrees are not too skewed a padded (N, max_in_degree) partner table is also kept, so
    ``presyn_mask`` is one static-shape gather + scatter (no host sync, compile friendly);
    otherwise it falls back to a ragged CSR gather.
    """

    def __init__(
        self,
        pre: Any,
        post: Any,
        n_neurons: int,
        device: torch.device | str | None = None,
    ) -> None:
        pre_t, post_t = _as_index(pre), _as_index(post)
        if pre_t.shape != post_t.shape:
            raise ValueError(f"pre and post differ in length: {pre_t.numel()} vs {post_t.numel()}")
        n = int(n_neurons)
        if pre_t.numel() and (
            int(pre_t.min()) < 0
            or int(post_t.min()) < 0
            or int(pre_t.max()) >= n
            or int(post_t.max()) >= n
        ):
            raise ValueError(f"edge endpoints must lie in [0, {n})")
        order = torch.argsort(post_t, stable=True)
        counts = torch.bincount(post_t, minlength=n)
        self.n_neurons = n
        self.indptr = torch.zeros(n + 1, dtype=torch.int64)
        torch.cumsum(counts, 0, out=self.indptr[1:])
        self.indices = pre_t[order]  # presynaptic ids grouped by postsynaptic neuron
        max_deg = int(counts.max()) if n else 0
        self.table: Tensor | None = None
        if n * max_deg <= _MAX_PAD_RATIO * max(self.indices.numel(), n):
            # Row j: the partners of neuron j, padded with the dummy id n.
            slot = torch.arange(self.indices.numel()) - self.indptr[:-1].repeat_interleave(counts)
            table = torch.full((n, max(max_deg, 1)), n, dtype=torch.int64)
            table[post_t[order], slot] = self.indices
            self.table = table
        if device is not None:
            self.to(device)

    @classmethod
    def from_dataset(cls, dataset: Any, device: torch.device | str | None = None) -> Connectome:
        """From a ``latent_tune.data.reader.Dataset`` (its ``connectome()`` edges)."""
        pre, post, _weight = dataset.connectome()
        return cls(pre, post, dataset.n_neurons, device=device)

    @property
    def device(self) -> torch.device:
        return self.indices.device

    def to(self, device: torch.device | str) -> Connectome:
        """Move the index tensors to ``device`` (in place; returns self)."""
        self.indptr = self.indptr.to(device)
        self.indices = self.indices.to(device)
        if self.table is not None:
            self.table = self.table.to(device)
        return self

    def presyn_mask(self, targets: Tensor) -> Tensor:
        """(N,) bool: the targets and every presynaptic partner of any target."""
        targets = targets.to(device=self.device, dtype=torch.int64).reshape(-1)
        mask = torch.zeros(self.n_neurons + 1, dtype=torch.bool, device=self.device)
        if self.table is not None:
            mask[self.table[targets].reshape(-1)] = True
        else:
            lo, hi = self.indptr[targets], self.indptr[targets + 1]
            counts = hi - lo
            first = torch.cumsum(counts, 0) - counts
            offs = torch.arange(int(counts.sum()), device=self.device)
            offs = offs - first.repeat_interleave(counts) + lo.repeat_interleave(counts)
            mask[self.indices[offs]] = True
        mask[targets] = True
        return mask[: self.n_neurons]


class AugSampler:
    """Draws the AUG target neurons (uniform, with replacement) from its own seeded generator.

    Why its own CPU generator: the draws are reproducible on every device and its state is saved
    with the run (``state_dict``), so a resumed run draws the same targets.
    """

    def __init__(self, connectome: Connectome, num_neurons: int, seed: int = 0) -> None:
        if num_neurons < 0:
            raise ValueError(f"num_neurons must be >= 0, got {num_neurons}")
        self.connectome = connectome
        self.num_neurons = int(num_neurons)
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(int(seed))

    def sample(self) -> tuple[Tensor, Tensor]:
        """(targets (K,), presynaptic mask (N,)) on the connectome's device."""
        targets = torch.randint(
            0, self.connectome.n_neurons, (self.num_neurons,), generator=self.generator
        ).to(self.connectome.device)
        return targets, self.connectome.presyn_mask(targets)

    def state_dict(self) -> dict[str, Tensor]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.generator.set_state(state["generator"])


def tv_term(dz: Tensor | Sequence[Tensor], coeff: float) -> Tensor:
    """coeff * sum over evolver calls of mean |dz| (dz: (calls, B, L) or a list of (B, L))."""
    if isinstance(dz, Tensor):
        return coeff * dz.abs().mean(dim=tuple(range(1, dz.ndim))).sum()
    return coeff * torch.stack([d.abs().mean() for d in dz]).sum()


def aug_term(
    model: EEDModel,
    x0: Tensor,
    u0: Tensor,
    y_full: Tensor,
    *,
    targets: Tensor,
    mask: Tensor,
    coeff: float,
) -> Tensor:
    """coeff * MSE of the targets' one-step predictions: masked start frame vs full frame.

    ``x0`` (B, N) is a simultaneous start frame (the interpolated one on the staggered path),
    ``mask`` (N,) keeps the targets and their presynaptic partners, every other column is set to
    zero; ``y_full`` = Dec(Evolve(Enc(x0), u0)) from the main rollout. Gradients flow through both
    branches, as in the lab.
    """
    x_aug = torch.where(mask, x0, torch.zeros((), dtype=x0.dtype, device=x0.device))
    z_aug, _ = model.step(model.encode(x_aug), u0)
    y_aug = model.decode(z_aug)
    diff = y_aug.index_select(-1, targets) - y_full.index_select(-1, targets)
    return coeff * diff.square().mean()


def l1_term(model: EEDModel, l1: L1Config) -> Tensor:
    """Sum over encoder, decoder, evolver of coeff * sum over tensors of mean |p|."""
    ref = next(iter(model.encoder.parameters()))
    total = torch.zeros((), dtype=ref.dtype, device=ref.device)
    for coeff, module in (
        (l1.encoder, model.encoder),
        (l1.decoder, model.decoder),
        (l1.evolver, model.evolver),
    ):
        if coeff > 0:
            total = total + coeff * torch.stack([p.abs().mean() for p in module.parameters()]).sum()
    return total
