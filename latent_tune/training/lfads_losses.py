"""Losses of the LFADS family: masked Gaussian likelihood, coordinated dropout, KL, L2, ramps.

The training window of one batch element with start t0 (rows of a chunk whose row 0 lies on
the observation grid, so neuron i is observed at row t iff (t - phi_i) % tu == 0):

- context rows t0-W+1..t0 (rows before the chunk count as unobserved): their observed entries
  are split by coordinated dropout into FED (encoder input) and HELD-OUT entries;
- the generator starts from z_0 at t0 and runs H steps with the true stimulus at t0..t0+H-1;
- scored: the held-out entries of row t0 (decode(z_0)) and every observed entry of rows
  t0+1..t0+H (decode(z_k)). With a controller, the controller encoder also reads rows
  t0+1..t0+H, so those are split by coordinated dropout too and only their held-out part is
  scored. An entry is never both fed and scored: the model cannot learn the identity.

Unobserved entries never reach the arithmetic (torch.where before any use), so a NaN there
changes neither the loss nor a gradient. Everything is gathered with index tensors over the
batch; the only Python loops are the model's loops over time steps.

Scales (as lfads-torch): ``nll`` is the mean per-entry negative log-likelihood over scored
entries; ``kl`` = kl_weight * kl_ic_scale * (batch mean of the IC KL summed over dims);
``kl_co`` likewise with the inferred inputs' KL summed over steps and dims; ``l2`` =
l2_weight * sum_m scale_m * 0.5 ||W_hh,m||^2 / sum_m numel(W_hh,m). ``total`` is their sum.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from latent_tune.model.lfads import LFADSModel, gaussian_kl

__all__ = [
    "LFADSLossConfig",
    "LossWeights",
    "coordinated_dropout_masks",
    "gather_window",
    "gaussian_kl",
    "gaussian_nll",
    "lfads_batch_loss",
    "loss_weights",
    "ramp_weight",
    "recurrent_l2",
]

_LOG_2PI = math.log(2.0 * math.pi)


class LFADSLossConfig(BaseModel):
    """Regularisation scales and their ramps (ramp units: optimizer steps, as the recipe counts)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    kl_ic_scale: float = Field(1e-4, ge=0.0)
    kl_co_scale: float = Field(1e-4, ge=0.0)
    l2_gen_scale: float = Field(1e-3, ge=0.0)
    l2_con_scale: float = Field(1e-3, ge=0.0)
    kl_start: int = Field(0, ge=0)
    kl_increase: int = Field(500, ge=0)
    l2_start: int = Field(0, ge=0)
    l2_increase: int = Field(500, ge=0)


@dataclass(frozen=True)
class LossWeights:
    """The ramp factors in [0, 1] applied to the KL and L2 terms at the current step."""

    kl: float = 1.0
    l2: float = 1.0


def ramp_weight(step: int, start: int, increase: int) -> float:
    """Linear ramp 0 -> 1: (step + 1 - start) / (increase + 1) clipped to [0, 1].

    The same schedule as lfads-torch's KL/L2 ramps; increase = 0 is a step at ``start``.
    Why ramp: a full KL from step 0 can collapse the posterior before the likelihood is learnt.
    """
    return min(max((int(step) + 1 - int(start)) / (int(increase) + 1), 0.0), 1.0)


def loss_weights(cfg: LFADSLossConfig, step: int) -> LossWeights:
    """Both ramps of ``cfg`` at ``step``."""
    return LossWeights(
        kl=ramp_weight(step, cfg.kl_start, cfg.kl_increase),
        l2=ramp_weight(step, cfg.l2_start, cfg.l2_increase),
    )


def coordinated_dropout_masks(
    obs_mask: Tensor, rate: float, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Split the observed entries: (feed_mask, score_mask), disjoint, union = obs_mask.

    Each observed entry is held out (scored, not fed) independently with probability ``rate``.
    The uniforms are drawn on the generator's device (CPU by default) and moved, so a seeded
    CPU generator gives the same split on every device.
    """
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"coordinated dropout rate must lie in [0, 1), got {rate}")
    obs = obs_mask.to(torch.bool)
    gen_device = generator.device if generator is not None else torch.device("cpu")
    u = torch.rand(obs.shape, generator=generator, device=gen_device).to(obs.device)
    held = u < rate
    return obs & ~held, obs & held


def gaussian_nll(pred: Tensor, target: Tensor, logvar: Tensor, mask: Tensor) -> Tensor:
    """Mean over the True entries of mask of 0.5 (logvar + (target - pred)^2 / var + log 2 pi).

    ``logvar`` broadcasts against pred (per neuron: (N,)). The target is read only where mask
    is True; an empty mask gives 0 (with a gradient path) rather than NaN.
    """
    mask = mask.to(torch.bool)
    zero = torch.zeros((), dtype=pred.dtype, device=pred.device)
    diff = pred - torch.where(mask, target.to(pred.dtype), zero)
    per = 0.5 * (logvar + diff.square() * torch.exp(-logvar) + _LOG_2PI)
    total = torch.where(mask, per, zero).sum()
    return total / mask.sum().clamp_min(1).to(pred.dtype)


def recurrent_l2(model: LFADSModel, cfg: LFADSLossConfig) -> Tensor:
    """sum_m scale_m * 0.5 ||W_hh,m||^2 / sum_m numel over the GRUs with a positive scale."""
    scales = {"gen": cfg.l2_gen_scale, "con": cfg.l2_con_scale}
    ref = model.generator.weight_hh
    penalty = torch.zeros((), dtype=ref.dtype, device=ref.device)
    size = 0
    for name, weight in model.recurrent_weights().items():
        if scales[name] > 0:
            penalty = penalty + scales[name] * 0.5 * weight.square().sum()
            size += weight.numel()
    return penalty / max(size, 1)


def gather_window(
    x: Tensor, t0: Tensor, first: int, length: int, *, phases: Tensor, tu: int
) -> tuple[Tensor, Tensor]:
    """Rows t0+first .. t0+first+length-1 of x (T, N) per start: (length, B, N) and their mask.

    mask[j, b, i] = row r = t0_b + first + j lies in [0, T) and (r - phi_i) % tu == 0. Rows
    outside x are clamped for the gather and unobserved, so a start near the beginning of a
    chunk gets a shorter effective context. Also the evaluation's context builder: the rows
    (W, B, N) with first = -(W-1), length = W end at the start.
    """
    t0 = t0.to(device=x.device, dtype=torch.int64).reshape(-1)
    rows = t0.unsqueeze(0) + torch.arange(first, first + length, device=x.device).unsqueeze(1)
    inside = (rows >= 0) & (rows < x.shape[0])
    obs = torch.remainder(rows.unsqueeze(-1) - phases.to(x.device), int(tu)) == 0
    values = x[rows.clamp(0, x.shape[0] - 1)]
    return values, obs & inside.unsqueeze(-1)


def lfads_batch_loss(  # noqa: PLR0917 (contract signature, positional)
    model: LFADSModel,
    x: Tensor,
    stim: Tensor,
    phases: Tensor,
    tu: int,
    t0: Tensor,
    horizon: int,
    cfg: LFADSLossConfig,
    weights: LossWeights | None = None,
    *,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """One batch of the training window (module docstring) -> total, nll, kl, l2 (+ kl_co).

    x (T, N) and stim (T, S) are a chunk on the model's device whose row 0 is on the
    observation grid; phases (N,) int64 and tu the acquisition's phases and effective tu;
    t0 (B,) window starts with t0 + horizon <= T - 1. ``generator`` seeds coordinated dropout.
    """
    horizon = int(horizon)
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    t0 = t0.to(device=x.device, dtype=torch.int64).reshape(-1)
    if t0.numel():
        lo, hi = torch.aminmax(t0)  # one host sync for both bounds
        lo_hi = torch.stack((lo, hi)).tolist()
        if lo_hi[0] < 0 or lo_hi[1] + horizon > x.shape[0] - 1:
            raise ValueError(f"window starts must lie in [0, {x.shape[0] - 1 - horizon}]")
    weights = weights if weights is not None else LossWeights()
    window = model.cfg.encoder_window
    rate = model.cfg.cd_rate
    has_controller = model.cfg.co_dim > 0

    x_ctx, obs_ctx = gather_window(x, t0, -(window - 1), window, phases=phases, tu=tu)
    x_fut, obs_fut = gather_window(x, t0, 1, horizon, phases=phases, tu=tu)
    feed_ctx, held_ctx = coordinated_dropout_masks(obs_ctx, rate, generator)
    if has_controller:
        feed_fut, score_fut = coordinated_dropout_masks(obs_fut, rate, generator)
    else:
        feed_fut, score_fut = torch.zeros_like(obs_fut), obs_fut
    stim_win = stim[t0.unsqueeze(0) + torch.arange(horizon, device=x.device).unsqueeze(1)]

    out = model.train_forward(
        x_ctx, feed_ctx, stim_win, x_fut=x_fut, mask_fut=feed_fut, sample=model.training
    )
    # Targets: row t0 (the context's last row, held-out entries only), then rows t0+1..t0+H.
    target = torch.cat((x_ctx[-1:], x_fut), dim=0)
    score = torch.cat((held_ctx[-1:], score_fut), dim=0)
    nll = gaussian_nll(out.pred, target, model.readout_logvar.to(out.pred.dtype), score)
    kl = weights.kl * cfg.kl_ic_scale * out.kl_ic
    l2 = weights.l2 * recurrent_l2(model, cfg)
    terms = {"nll": nll, "kl": kl, "l2": l2}
    if has_controller:
        terms["kl_co"] = weights.kl * cfg.kl_co_scale * out.kl_co
    total = nll + kl + l2 + (terms["kl_co"] if has_controller else 0.0)
    return {"total": total, **terms}
