"""Encoder-evolver-decoder latent dynamics model (docs/method.md, section 5)."""

from __future__ import annotations

import torch
from torch import nn

from latent_tune.model.config import ModelConfig
from latent_tune.model.mlp import MLPWithSkips


class EEDModel(nn.Module):
    """x -(encoder)-> z; z_{t+1} = z_t + f([z_t, u_t]); z -(decoder)-> x.

    u_t is the encoded stimulus. With zero_init the evolver's output layer starts at zero, so
    the latent dynamics start as the identity (the lab's decisive stabiliser).
    """

    def __init__(self, n_neurons: int, n_stimulus: int, cfg: ModelConfig | None = None) -> None:
        super().__init__()
        cfg = cfg if cfg is not None else ModelConfig()
        self.cfg = cfg
        self.n_neurons, self.n_stimulus = int(n_neurons), int(n_stimulus)
        latent, enc, stim, evo = cfg.latent_dims, cfg.encoder, cfg.stimulus_encoder, cfg.evolver
        self.encoder = MLPWithSkips(n_neurons, latent, enc.hidden_units, enc.hidden_layers, "relu")
        self.decoder = MLPWithSkips(latent, n_neurons, enc.hidden_units, enc.hidden_layers, "relu")
        self.stimulus_encoder = MLPWithSkips(
            n_stimulus, stim.latent_dims, stim.hidden_units, stim.hidden_layers, "relu"
        )
        self.evolver = MLPWithSkips(
            latent + stim.latent_dims, latent, evo.hidden_units, evo.hidden_layers, evo.activation
        )
        if evo.zero_init:
            nn.init.zeros_(self.evolver.output_layer.weight)
            nn.init.zeros_(self.evolver.output_layer.bias)

    @staticmethod
    def param_count(n_neurons: int, n_stimulus: int, cfg: ModelConfig | None = None) -> int:
        """Total parameters from the MLPWithSkips formula (lab defaults: 19,090,861)."""
        cfg = cfg if cfg is not None else ModelConfig()
        latent, enc, stim, evo = cfg.latent_dims, cfg.encoder, cfg.stimulus_encoder, cfg.evolver
        count = MLPWithSkips.param_count
        return (
            count(n_neurons, latent, enc.hidden_units, enc.hidden_layers)
            + count(latent, n_neurons, enc.hidden_units, enc.hidden_layers)
            + count(n_stimulus, stim.latent_dims, stim.hidden_units, stim.hidden_layers)
            + count(latent + stim.latent_dims, latent, evo.hidden_units, evo.hidden_layers)
        )

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(..., N) activity -> (..., L) latent."""
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(..., L) latent -> (..., N) activity."""
        return self.decoder(z)

    def encode_stimulus(self, s: torch.Tensor) -> torch.Tensor:
        """(..., S) stimulus -> (..., Ls) stimulus latent."""
        return self.stimulus_encoder(s)

    def step(self, z: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One residual step: returns (z + dz, dz); dz is what the TV loss penalises."""
        dz = self.evolver(torch.cat((z, u), dim=-1))
        return z + dz, dz

    def rollout(self, z0: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Open-loop latent rollout z_1 .. z_K (K, B, L) from z0 (B, L), u (K, B, Ls); no decode.

        Step k uses the stimulus at k, so z_k depends on stimuli 0 .. k-1 only.
        """
        z = z0
        out = []
        for k in range(u.shape[0]):
            z, _ = self.step(z, u[k])
            out.append(z)
        if not out:
            return z0.new_empty((0, *z0.shape))
        return torch.stack(out)
