"""LFADS-style sequential VAE for staggered recordings, as a forecaster with the EED interface.

Why this shape: the EED family encodes one (interpolated) frame; this family instead reads the
W steps of raw observations ENDING AT the start, the only data available when forecasting from
there, and never sees interpolated values. Unobserved entries are replaced by zero and the
observation mask is concatenated to the encoder input, so "not observed" and "observed zero"
stay distinguishable.

  context (W, B, N) -> bidirectional GRU -> IC posterior N(mu, var) -> g0 = z_0 (B, gen_dim)
  z_{k+1} = GRU(z_k, [StimEnc(s_{start+k}), inferred_k]);  x^_{t} = Readout(Factors(z))

Index convention (the same as EED's evaluation): z_0 is the state at the start frame, and
decode(z_{k+1}) predicts time start + k + 1 with z_{k+1} = step(z_k, StimEnc(stim[start + k])).

Controller (co_dim > 0): a second bidirectional GRU reads the context AND the training
window's fed entries; a controller GRU turns its outputs (plus the previous factors) into
per-step inferred inputs with a unit-Gaussian prior. They exist only in training: at
evaluation the inputs after the start are the prior mean, zero, so ``step`` and ``rollout``
are the open-loop generator.

A GRU state is a convex combination of the old state and a tanh candidate, so the generator
state stays bounded by max(|z_0|, 1) over any number of steps: 2000-step open-loop rollouts
cannot explode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from latent_tune.model.config import StimulusEncoderConfig
from latent_tune.model.mlp import MLPWithSkips

__all__ = ["LFADSForward", "LFADSModel", "LFADSModelConfig", "gaussian_kl"]


def _small_stimulus_encoder() -> StimulusEncoderConfig:
    return StimulusEncoderConfig(latent_dims=16, hidden_units=64, hidden_layers=1)


class LFADSModelConfig(BaseModel):
    """Sizes and regularisers of the LFADS family (small defaults; the search scales them)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    encoder_window: int = Field(50, ge=1)  # W context steps ending at the start (inclusive)
    ic_enc_dim: int = Field(64, ge=1)  # per direction
    ic_dim: int = Field(32, ge=1)  # IC posterior dimension (mapped linearly to g0)
    ci_enc_dim: int = Field(32, ge=1)  # controller encoder, per direction
    con_dim: int = Field(32, ge=1)  # controller GRU
    co_dim: int = Field(0, ge=0)  # inferred-input dimension; 0 = no controller
    gen_dim: int = Field(100, ge=1)
    factor_dim: int = Field(20, ge=1)
    stimulus_encoder: StimulusEncoderConfig = Field(default_factory=_small_stimulus_encoder)
    dropout_rate: float = Field(0.05, ge=0.0, lt=1.0)  # encoder inputs and generator output
    cd_rate: float = Field(0.3, ge=0.0, lt=1.0)  # coordinated dropout: fraction held out
    ic_prior_var: float = Field(0.1, gt=0.0)  # IC prior N(0, ic_prior_var I)
    ic_post_var_min: float = Field(1e-4, gt=0.0)  # floor of the posterior variances
    readout_variance: Literal["learned", "fixed"] = "learned"
    fixed_variance: float = Field(1.0, gt=0.0)  # used when readout_variance == "fixed"


def gaussian_kl(mean: Tensor, logvar: Tensor, prior_var: float = 1.0) -> Tensor:
    """KL(N(mean, e^logvar) || N(0, prior_var)) of diagonal Gaussians, summed over the last dim.

    Closed form 0.5 * sum(log p - logvar + (e^logvar + mean^2) / p - 1); (...,) out.
    """
    log_p = math.log(prior_var)
    kl = 0.5 * (log_p - logvar + (logvar.exp() + mean.square()) / prior_var - 1.0)
    return kl.sum(-1)


@dataclass
class LFADSForward:
    """One training-window forward pass.

    ``pred`` (K+1, B, N): index k predicts time t0 + k (index 0 decodes z_0 itself);
    ``states`` (K+1, B, gen_dim) z_0..z_K; ``kl_ic`` / ``kl_co`` are batch means (kl_co sums
    over steps and dims; zero without a controller); ``inferred`` (K, B, co_dim) or None.
    """

    pred: Tensor
    states: Tensor
    kl_ic: Tensor
    kl_co: Tensor
    inferred: Tensor | None


class LFADSModel(nn.Module):
    """Encoder GRU -> IC posterior -> stimulus-driven generator GRU -> factors -> readout."""

    def __init__(
        self, n_neurons: int, n_stimulus: int, cfg: LFADSModelConfig | None = None
    ) -> None:
        super().__init__()
        cfg = cfg if cfg is not None else LFADSModelConfig()
        self.cfg = cfg
        self.n_neurons, self.n_stimulus = int(n_neurons), int(n_stimulus)
        n, stim = self.n_neurons, cfg.stimulus_encoder
        self.input_dropout = nn.Dropout(cfg.dropout_rate)
        self.state_dropout = nn.Dropout(cfg.dropout_rate)
        self.ic_encoder = nn.GRU(2 * n, cfg.ic_enc_dim, bidirectional=True)
        self.ic_posterior = nn.Linear(2 * cfg.ic_enc_dim, 2 * cfg.ic_dim)
        self.ic_to_g0 = nn.Linear(cfg.ic_dim, cfg.gen_dim)
        self.stimulus_encoder = MLPWithSkips(
            n_stimulus, stim.latent_dims, stim.hidden_units, stim.hidden_layers, "relu"
        )
        self.generator = nn.GRUCell(stim.latent_dims + cfg.co_dim, cfg.gen_dim)
        self.factors = nn.Linear(cfg.gen_dim, cfg.factor_dim, bias=False)
        self.readout = nn.Linear(cfg.factor_dim, n)
        # Per-neuron observation log-variance (trained only with readout_variance="learned").
        fixed = math.log(cfg.fixed_variance)
        self.readout_logvar = nn.Parameter(
            torch.full((n,), fixed), requires_grad=cfg.readout_variance == "learned"
        )
        self.ci_encoder: nn.GRU | None = None
        self.controller: nn.GRUCell | None = None
        self.co_posterior: nn.Linear | None = None
        if cfg.co_dim > 0:
            self.ci_encoder = nn.GRU(2 * n, cfg.ci_enc_dim, bidirectional=True)
            self.controller = nn.GRUCell(2 * cfg.ci_enc_dim + cfg.factor_dim, cfg.con_dim)
            self.co_posterior = nn.Linear(cfg.con_dim, 2 * cfg.co_dim)

    # -----------------------------------------------------------------------------------------
    # the interface the recipe and the evaluation call

    def _encoder_input(self, x: Tensor, mask: Tensor) -> Tensor:
        """[x where observed else 0 (input dropout), mask] (..., 2N); x is read nowhere else."""
        mask = mask.to(torch.bool)
        ref = self.ic_posterior.weight
        xin = torch.where(mask, x.to(ref.dtype), torch.zeros((), dtype=ref.dtype, device=x.device))
        return torch.cat((self.input_dropout(xin), mask.to(ref.dtype)), dim=-1)

    def _posterior(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """Linear head -> (mean, log(var + var_min)) of the IC posterior."""
        mean, raw = self.ic_posterior(h).chunk(2, dim=-1)
        return mean, torch.log(raw.exp() + self.cfg.ic_post_var_min)

    def initial_state(
        self, x_ctx: Tensor, mask_ctx: Tensor, *, sample: bool
    ) -> tuple[Tensor, Tensor]:
        """z_0 (B, gen_dim) from the W context steps ending at the start, and the IC KL.

        x_ctx (W, B, N) is read only where mask_ctx (W, B, N) is True (torch.where: NaN
        elsewhere cannot propagate). ``sample`` draws g0 from the posterior (training); else
        its mean (evaluation). kl: scalar, batch mean of KL(q(ic) || N(0, ic_prior_var)).
        """
        z0, kl, _ = self._initial_state(self._encoder_input(x_ctx, mask_ctx), sample)
        return z0, kl

    def _initial_state(self, enc_in: Tensor, sample: bool) -> tuple[Tensor, Tensor, Tensor]:
        _, h_n = self.ic_encoder(enc_in)  # (2, B, ic_enc_dim): last forward, first backward
        h = self.input_dropout(torch.cat((h_n[0], h_n[1]), dim=-1))
        mean, logvar = self._posterior(h)
        ic = mean + (0.5 * logvar).exp() * torch.randn_like(mean) if sample else mean
        kl = gaussian_kl(mean, logvar, self.cfg.ic_prior_var)
        return self.ic_to_g0(ic), kl.mean(), kl

    def encode_stimulus(self, stim: Tensor) -> Tensor:
        """(..., S) raw stimulus -> (..., Ls) generator external input."""
        return self.stimulus_encoder(stim)

    def _gen_step(self, state: Tensor, u: Tensor, inferred: Tensor | None) -> Tensor:
        if self.cfg.co_dim > 0:
            if inferred is None:
                inferred = u.new_zeros((*u.shape[:-1], self.cfg.co_dim))
            u = torch.cat((u, inferred.to(u.dtype)), dim=-1)
        return self.generator(u.to(state.dtype), state)

    def step(self, state: Tensor, u_t: Tensor, inferred_input: Tensor | None = None) -> Tensor:
        """One generator step (B, gen_dim) with the encoded stimulus u_t (B, Ls) at that step.

        ``inferred_input`` (B, co_dim) defaults to zero, the prior mean used at evaluation.
        """
        return self._gen_step(state, u_t, inferred_input)

    def decode(self, state: Tensor) -> Tensor:
        """(..., gen_dim) -> (..., N) Gaussian mean: readout of the low-dimensional factors."""
        return self.readout(self.factors(self.state_dropout(state)))

    def rollout(self, state: Tensor, u: Tensor) -> Tensor:
        """Open-loop states z_1..z_K (K, B, gen_dim) from z_0 (B, gen_dim) and the ENCODED
        stimulus u = encode_stimulus(stim) (K, B, Ls), as EED's rollout, so the shared
        evaluation drives both families alike. Step k uses u[k]; inferred inputs are zero.
        """
        out = []
        for k in range(u.shape[0]):
            state = self._gen_step(state, u[k], None)
            out.append(state)
        if not out:
            return state.new_empty((0, *state.shape))
        return torch.stack(out)

    # -----------------------------------------------------------------------------------------
    # training

    def train_forward(
        self,
        x_ctx: Tensor,
        mask_ctx: Tensor,
        stim: Tensor,
        *,
        x_fut: Tensor | None = None,
        mask_fut: Tensor | None = None,
        sample: bool = True,
    ) -> LFADSForward:
        """Encode the context, then run K = stim.shape[0] generator steps from z_0.

        x_ctx / mask_ctx (W, B, N): context rows t0-W+1..t0 and the entries the encoders may
        read; stim (K, B, S): raw stimulus at t0..t0+K-1. With a controller, x_fut / mask_fut
        (K, B, N) are rows t0+1..t0+K and the entries of them the controller encoder may read
        (the loss must not score those); without one they are ignored.
        """
        enc_ctx = self._encoder_input(x_ctx, mask_ctx)
        z, kl_ic, _ = self._initial_state(enc_ctx, sample)
        u = self.encode_stimulus(stim)
        n_steps = u.shape[0]
        states: list[Tensor] = [z]
        facs: list[Tensor] = []
        kl_co = z.new_zeros(())
        inferred_all: Tensor | None = None
        if self.cfg.co_dim > 0 and n_steps > 0:
            assert self.ci_encoder is not None and self.controller is not None
            assert self.co_posterior is not None
            if x_fut is None or mask_fut is None:
                raise ValueError("a model with a controller needs x_fut and mask_fut")
            enc_all = torch.cat((enc_ctx, self._encoder_input(x_fut, mask_fut)), dim=0)
            ci = self.input_dropout(self.ci_encoder(enc_all)[0][enc_ctx.shape[0] :])  # (K, B, .)
            con = z.new_zeros((z.shape[0], self.cfg.con_dim))
            fac = self.factors(self.state_dropout(z))
            facs.append(fac)
            inferred, kls = [], []
            for k in range(n_steps):
                con = self.controller(torch.cat((ci[k], fac), dim=-1), con)
                mean, logvar = self.co_posterior(con).chunk(2, dim=-1)
                co = mean + (0.5 * logvar).exp() * torch.randn_like(mean) if sample else mean
                kls.append(gaussian_kl(mean, logvar, 1.0))
                z = self._gen_step(z, u[k], co)
                fac = self.factors(self.state_dropout(z))
                states.append(z)
                facs.append(fac)
                inferred.append(co)
            kl_co = torch.stack(kls).sum(0).mean()
            inferred_all = torch.stack(inferred)
        else:
            for k in range(n_steps):
                z = self._gen_step(z, u[k], None)
                states.append(z)
        all_states = torch.stack(states)
        if inferred_all is not None:
            fac_all = torch.stack(facs)
        else:  # the loop above was the recurrence alone: every state's factors in one call
            fac_all = self.factors(self.state_dropout(all_states))
        pred = self.readout(fac_all)
        return LFADSForward(pred, all_states, kl_ic, kl_co, inferred_all)

    def recurrent_weights(self) -> dict[str, Tensor]:
        """The GRU recurrent kernels the L2 penalty acts on ("gen", and "con" with a controller)."""
        out = {"gen": self.generator.weight_hh}
        if self.controller is not None:
            out["con"] = self.controller.weight_hh
        return out
