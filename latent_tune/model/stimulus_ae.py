"""Stimulus auto-encoder, optional pretraining of the stimulus encoder (docs/method.md, section 5).

Its encoder has exactly the shape of EEDModel.stimulus_encoder so the pretrained weights load
straight into the EED model (which then freezes them).
"""

from __future__ import annotations

import torch
from torch import nn

from latent_tune.model.config import StimulusEncoderConfig
from latent_tune.model.mlp import MLPWithSkips


class StimulusAutoEncoder(nn.Module):
    """S -> Ls -> S with mirrored ReLU MLPWithSkips; trained with MSE on stimulus frames."""

    def __init__(self, n_stimulus: int, cfg: StimulusEncoderConfig | None = None) -> None:
        super().__init__()
        cfg = cfg if cfg is not None else StimulusEncoderConfig()
        self.cfg = cfg
        self.encoder = MLPWithSkips(
            n_stimulus, cfg.latent_dims, cfg.hidden_units, cfg.hidden_layers, "relu"
        )
        self.decoder = MLPWithSkips(
            cfg.latent_dims, n_stimulus, cfg.hidden_units, cfg.hidden_layers, "relu"
        )

    def encode(self, s: torch.Tensor) -> torch.Tensor:
        """(..., S) -> (..., Ls)."""
        return self.encoder(s)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        """Reconstruction (..., S) of the stimulus frames s (..., S)."""
        return self.decoder(self.encoder(s))
