"""Model configuration (the lab's defaults; docs/method.md, section 5)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class MLPConfig(BaseModel):
    """Encoder (and, mirrored, decoder) MLPWithSkips sizes."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    hidden_units: int = Field(256, ge=1)
    hidden_layers: int = Field(1, ge=0)


class StimulusEncoderConfig(BaseModel):
    """Stimulus encoder S -> latent_dims (ReLU MLPWithSkips)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    latent_dims: int = Field(64, ge=1)
    hidden_units: int = Field(64, ge=1)
    hidden_layers: int = Field(3, ge=0)


class EvolverConfig(BaseModel):
    """Residual evolver f: [z, u] -> dz; zero_init makes it the identity at start."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    hidden_units: int = Field(256, ge=1)
    hidden_layers: int = Field(1, ge=0)
    activation: Literal["tanh", "relu"] = "tanh"
    zero_init: bool = True


class ModelConfig(BaseModel):
    """Whole EED model; the decoder mirrors the encoder (the lab's symmetry rule)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    latent_dims: int = Field(256, ge=1)
    encoder: MLPConfig = Field(default_factory=MLPConfig)
    stimulus_encoder: StimulusEncoderConfig = Field(default_factory=StimulusEncoderConfig)
    evolver: EvolverConfig = Field(default_factory=EvolverConfig)
