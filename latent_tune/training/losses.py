"""Training losses (docs/method.md, section 6): staggered EVOLVE, aligned RECON/EVOLVE, TV/AUG/REG.

Every term comes back separately in a dict (so each is logged as ``Loss/train_<term>``) with
``total`` their sum. Work is vectorised over batch and neurons: targets and stimuli of the
window are gathered with index tensors, all H stimulus frames are encoded at once, and the only
Python loop is over the H time steps of the rollout. The TV/AUG/L1 terms are in
``latent_tune.training.regularisers``, the masked decoding of the staggered EVOLVE term in
``latent_tune.training.masked_decode``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from latent_tune.data.acquisition import Acquisition, start_offsets
from latent_tune.model.eed import EEDModel
from latent_tune.training.eed_config import LossConfig
from latent_tune.training.masked_decode import PhaseClasses, masked_evolve, phase_classes
from latent_tune.training.regularisers import AugSampler, aug_term, l1_term

__all__ = [
    "aligned_loss",
    "observation_due",
    "staggered_loss",
]


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
    (see ``latent_tune.training.masked_decode``; ``classes`` from ``phase_classes(acq, device)``,
    built here when None); the dense path is the reference. Same value and gradients up to
    float rounding.

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
        evolve = masked_evolve(model, feats, x, t0, classes)
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
