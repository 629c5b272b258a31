"""Training losses (docs/method.md, section 6): staggered EVOLVE, aligned RECON/EVOLVE, TV/AUG/REG.

Every term comes back separately in a dict (so each is logged as ``Loss/train_<term>``) with
``total`` their sum. Work is vectorised over batch and neurons: targets and stimuli of the
window are gathered with index tensors, all H stimulus frames are encoded at once, and the only
Python loop is over the H time steps of the rollout.

Masked decoding (``staggered_loss(..., masked_decode=True)``): at step k batch element b
observes exactly the neurons whose phase is (t0_b + k) mod tu, about 1/tu of them. Grouping the
neurons by phase (``PhaseClasses``, built once per run) turns the decoder's output layer, the
largest matmul of the step, into one batched matmul of each class's weight rows against the
(b, k) pairs due for that class: the same loss and gradients with ~1/tu of the work.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from latent_tune.data.acquisition import Acquisition, start_offsets
from latent_tune.model.eed import EEDModel
from latent_tune.training.config import L1Config, LossConfig

__all__ = [
    "AugSampler",
    "Connectome",
    "PhaseClasses",
    "aligned_loss",
    "aug_term",
    "l1_term",
    "observation_due",
    "phase_classes",
    "staggered_loss",
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


# ---------------------------------------------------------------------------------------------
# individual terms


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


def _params(modules: Iterable[nn.Module]) -> list[Tensor]:
    return [p for m in modules for p in m.parameters()]


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


# ---------------------------------------------------------------------------------------------
# the two recipes


def observation_due(t0: Tensor, acq: Acquisition) -> Tensor:
    """(B, N) residue r: neuron i is observed at t0_b + k iff k % tu == r[b, i].

    Equivalent to M_k[b, i] = ((t0_b - phi_i) mod tu + k) mod tu == 0 with p = (t0 - phi) mod
    tu, since that holds iff k = -p (mod tu); one (B, N) tensor serves all H steps.
    """
    tu = acq.effective_tu
    return torch.remainder(-start_offsets(t0, acq.phases, tu), tu)


def _window_stimulus(model: EEDModel, stim: Tensor, t0: Tensor, steps: int) -> Tensor:
    """Encoded stimuli u_{t0+k}, k = 0..steps-1: (steps, B, Ls), one encoder call."""
    idx = t0.unsqueeze(0) + torch.arange(steps, device=t0.device).unsqueeze(1)  # (steps, B)
    return model.encode_stimulus(stim[idx])


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


def _masked_evolve(
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


def _aug_active(loss_cfg: LossConfig, aug: AugSampler | None) -> bool:
    return aug is not None and aug.num_neurons > 0 and loss_cfg.aug.coeff > 0


def staggered_loss(  # noqa: PLR0917 (contract signature, positional)
    model: EEDModel,
    x: Tensor,
    x_interp: Tensor | None,
    stim: Tensor,
    t0: Tensor,
    acq: Acquisition,
    horizon: int,
    loss_cfg: LossConfig,
    aug: AugSampler | None = None,
    *,
    masked_decode: bool = False,
    classes: PhaseClasses | None = None,
    x_start: Tensor | None = None,
) -> dict[str, Tensor]:
    """Staggered masked loss: only entries really observed at t0+k enter, for k = 0..H-1.

    z_0 = Enc(X~[t0]); prediction Dec(z_k) for t0+k (decode before evolve, so it depends on
    stimuli t0..t0+k-1 only); mask M_k[b, i] = ((t0_b - phi_i) mod tu + k) mod tu == 0; each
    step's term is the mean over all B*N entries of M_k (Dec(z_k) - X[t0+k])^2, summed over k.
    Unobserved targets are replaced with torch.where before any arithmetic, so a NaN there
    cannot reach the loss or the gradients. H-1 evolver calls (the lab's last call is unused).

    ``masked_decode`` applies the decoder's output layer to the observed (b, i) pairs only
    (see the module docstring; ``classes`` from ``phase_classes(acq, device)``, built here when
    None); the dense path is the reference. Same value and gradients up to float rounding.

    ``x_start`` (B, N) are the interpolated start frames X~[t0] when the caller computed them
    (the trainer does, with ``interpolate_rows``); then ``x_interp`` may be None.

    Returns ``total, evolve, tv, aug, reg``.
    """
    horizon = int(horizon)
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    device = x.device
    t0 = t0.to(device=device, dtype=torch.int64)
    tu = acq.effective_tu
    due = None if masked_decode else observation_due(t0, acq)  # (B, N)
    n_calls = horizon - 1
    use_aug = _aug_active(loss_cfg, aug)
    n_stim = max(n_calls, 1 if use_aug else 0)
    u = _window_stimulus(model, stim, t0, n_stim) if n_stim else None
    if x_start is None:
        if x_interp is None:
            raise ValueError("staggered_loss needs x_interp or x_start")
        x_start = x_interp.index_select(0, t0)
    # The latent state stays in the data dtype (bf16 autocast must not round it every step).
    z = model.encode(x_start).to(x.dtype)
    zero = torch.zeros((), dtype=x.dtype, device=device)

    evolve = zero
    tv = zero
    y_one_step: Tensor | None = None
    zs: list[Tensor] = []
    for k in range(horizon):
        if masked_decode:
            zs.append(z)
        else:
            pred = model.decode(z)
            if k == 1:
                y_one_step = pred
            assert due is not None
            mask = due == (k % tu)
            target = x.index_select(0, t0 + k)
            diff = torch.where(mask, pred - torch.where(mask, target, zero), zero)
            evolve = evolve + diff.square().mean()
        if k < n_calls:
            assert u is not None
            z, dz = model.step(z, u[k])
            if loss_cfg.tv_coeff > 0:
                tv = tv + dz.abs().mean()
    tv = loss_cfg.tv_coeff * tv
    if masked_decode:
        if classes is None:
            classes = phase_classes(acq, device)
        feats = model.decoder.features(torch.stack(zs))  # (H, B, F)
        evolve = _masked_evolve(model, feats, x, t0, classes)
        if use_aug and horizon > 1:
            y_one_step = model.decoder.output_layer(feats[1])

    aug_val = zero
    if use_aug:
        assert aug is not None and u is not None
        if y_one_step is None:  # horizon 1: one extra step for the reference branch
            y_one_step = model.decode(model.step(model.encode(x_start), u[0])[0])
        targets, pmask = aug.sample()
        aug_val = aug_term(
            model, x_start, u[0], y_one_step, targets=targets, mask=pmask, coeff=loss_cfg.aug.coeff
        )
    reg = l1_term(model, loss_cfg.l1)
    total = evolve + tv + aug_val + reg
    return {"total": total, "evolve": evolve, "tv": tv, "aug": aug_val, "reg": reg}


def aligned_loss(  # noqa: PLR0917 (same signature as staggered_loss)
    model: EEDModel,
    x: Tensor,
    x_interp: Tensor | None,
    stim: Tensor,
    t0: Tensor,
    acq: Acquisition,
    horizon: int,
    loss_cfg: LossConfig,
    aug: AugSampler | None = None,
) -> dict[str, Tensor]:
    """Time-aligned loss (time_aligned / all_time_points): RECON + EVOLVE + TV + AUG + REG.

    Starts are snapped down to the observation grid (multiples of tu for time_aligned), so x0 =
    X[t0] is an observed simultaneous frame. RECON = recon_weight * MSE(Dec(Enc(x0)), x0);
    EVOLVE = sum over m = 1..ems of MSE(Dec(z_{m tu}), X[t0 + m tu]) with ems = H // tu. Same
    signature as ``staggered_loss`` (``x_interp`` is unused) so the trainer can swap them.

    Returns ``total, recon, evolve, tv, aug, reg``.
    """
    del x_interp
    horizon = int(horizon)
    tu = acq.tu
    if horizon < tu or horizon % tu:
        raise ValueError(f"horizon {horizon} must be a positive multiple of tu = {tu}")
    device = x.device
    t0 = t0.to(device=device, dtype=torch.int64)
    if acq.effective_tu > 1:
        phase = int(acq.phases[0]) if acq.phases.numel() else 0
        t0 = t0 - torch.remainder(t0 - phase, acq.effective_tu)
    u = _window_stimulus(model, stim, t0, horizon)
    x0 = x.index_select(0, t0)
    z = model.encode(x0)
    zero = torch.zeros((), dtype=x.dtype, device=device)
    recon = loss_cfg.recon_weight * (model.decode(z) - x0).square().mean()

    evolve = zero
    tv = zero
    y_one_step: Tensor | None = None
    use_aug = _aug_active(loss_cfg, aug)
    for k in range(horizon):
        z, dz = model.step(z, u[k])
        if loss_cfg.tv_coeff > 0:
            tv = tv + dz.abs().mean()
        at_loss_point = (k + 1) % tu == 0
        pred = model.decode(z) if at_loss_point or (k == 0 and use_aug) else None
        if k == 0:
            y_one_step = pred
        if at_loss_point:
            assert pred is not None
            target = x.index_select(0, t0 + k + 1)
            evolve = evolve + (pred - target).square().mean()
    tv = loss_cfg.tv_coeff * tv

    aug_val = zero
    if use_aug:
        assert aug is not None and y_one_step is not None
        targets, pmask = aug.sample()
        aug_val = aug_term(
            model, x0, u[0], y_one_step, targets=targets, mask=pmask, coeff=loss_cfg.aug.coeff
        )
    reg = l1_term(model, loss_cfg.l1)
    total = recon + evolve + tv + aug_val + reg
    return {"total": total, "recon": recon, "evolve": evolve, "tv": tv, "aug": aug_val, "reg": reg}
