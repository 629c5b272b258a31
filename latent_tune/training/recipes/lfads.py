"""The LFADS recipe: a sequential VAE trained on raw staggered observations (docs/lfads.md).

Why a recipe of its own: LFADS starts a rollout from the W observed rows ENDING at the start
(encoder GRU -> initial-condition posterior), never from an interpolated frame, and trains with
a masked Gaussian likelihood, coordinated dropout, KL and L2 terms whose weights ramp up over
optimizer steps. Evaluation, the objective, checkpoints and search are the shared ones: the
model offers the same `encode_stimulus` / `rollout` / `decode` interface as EED, and
`start_state` hands the shared evaluation its own z0.

Exactness: the ramps count this recipe's optimizer steps, coordinated dropout draws from the
recipe's own seeded generator, and the model's dropout and posterior samples from a global RNG
reseeded per step; all of it is in `state_dict`, so save -> restore -> next epoch gives the loss
an uninterrupted run gives.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from latent_tune.data.acquisition import Acquisition
from latent_tune.model.lfads import LFADSModel, LFADSModelConfig
from latent_tune.training.config import BaseTrainConfig, BaseTrainingConfig
from latent_tune.training.config_loading import KeyedValueError
from latent_tune.training.data import EvalSet, RunData
from latent_tune.training.lfads_losses import (
    LFADSLossConfig,
    gather_window,
    lfads_batch_loss,
    loss_weights,
)
from latent_tune.training.precision import bf16_autocast
from latent_tune.training.recipes.base import Recipe

__all__ = ["LFADSConfig", "LFADSRecipe", "LFADSTrainingConfig"]


class LFADSTrainingConfig(BaseTrainingConfig):
    """The base training leaves plus the generator's training horizon."""

    # Steps the generator runs forward from each batch start (and is scored on).
    horizon: int = Field(default=40, ge=1)


class LFADSConfig(BaseTrainConfig):
    """The LFADS config: the shared sections plus `model` and `loss` of the LFADS family.

    `acquisition.interpolation` is accepted but never read by the model: LFADS sees only
    observed entries (the evaluation's interpolation baselines still use it).
    """

    recipe: Literal["lfads"] = "lfads"
    model: LFADSModelConfig = Field(default_factory=LFADSModelConfig)
    loss: LFADSLossConfig = Field(default_factory=LFADSLossConfig)
    training: LFADSTrainingConfig = Field(default_factory=LFADSTrainingConfig)

    def context_steps(self) -> int:
        """W: the encoder reads rows start-W+1 .. start (W >= 1 also keeps batch starts >= 1)."""
        return self.model.encoder_window

    @model_validator(mode="after")
    def _lfads_fits(self) -> LFADSConfig:
        t = self.training
        if t.horizon >= self.evaluation.rollout_steps:
            raise KeyedValueError(
                "training.horizon",
                f"must be below evaluation.rollout_steps = {self.evaluation.rollout_steps}",
            )
        need = self.model.encoder_window + t.horizon + 1
        if t.chunk_steps < need:
            raise KeyedValueError(
                "training.chunk_steps",
                f"must be >= model.encoder_window + training.horizon + 1 = {need}",
            )
        if t.compile:
            raise KeyedValueError(
                "training.compile",
                "not supported by the lfads recipe (its per-step ramp weights and dropout "
                "generator would recompile the step); set it false",
            )
        return self


def _cd_seed(seed: int, tag: str) -> int:
    """A 56-bit seed derived from `seed` and a tag (distinct from the trainer's own stream)."""
    digest = hashlib.sha256(f"{int(seed)}:{tag}".encode()).digest()
    return int.from_bytes(digest[:7], "little")


class LFADSRecipe(Recipe):
    """Model, batch loss, ramps and evaluation start state of the LFADS family."""

    name = "lfads"
    config_class = LFADSConfig
    config: LFADSConfig

    def __init__(
        self, config: LFADSConfig, data: RunData, acq: Acquisition, device: torch.device
    ) -> None:
        super().__init__(config, data, acq, device)
        self.steps = 0  # optimizer steps taken: the unit of the KL / L2 ramps
        # Coordinated dropout draws on the run's device: a CPU generator would draw W x B x N
        # uniforms on the host every batch (hundreds of MB at lab scale) and copy them over.
        self.cd_generator = torch.Generator(device=device)
        self.cd_generator.manual_seed(_cd_seed(config.training.seed, "coordinated_dropout"))
        # The model's own noise (dropout, posterior samples) draws from torch's global RNG,
        # which no checkpoint holds: each batch reseeds it from (noise_seed, step) inside a fork.
        self.noise_seed = _cd_seed(config.training.seed, "model_noise")

    def build_model(self) -> nn.Module:
        return LFADSModel(self.data.n_neurons, self.data.n_stimulus, self.config.model)

    def horizon(self, epoch: int) -> int:
        return int(self.config.training.horizon)

    def eval_horizon(self) -> int:
        return int(self.config.training.horizon)

    def epoch_scalars(self, epoch: int) -> dict[str, int | float]:
        """The KL and L2 ramp weights of the epoch's last batch (1 = fully on)."""
        w = loss_weights(self.config.loss, max(self.steps - 1, 0))
        return {"kl_weight": float(w.kl), "l2_weight": float(w.l2)}

    def batch_loss(
        self, model: nn.Module, x: Tensor, stim: Tensor, t0: Tensor, horizon: int
    ) -> dict[str, Tensor]:
        assert isinstance(model, LFADSModel)
        weights = loss_weights(self.config.loss, self.steps)
        noise = _cd_seed(self.noise_seed, f"step:{self.steps}")
        if model.training:
            self.steps += 1  # one batch_loss per optimizer step in the training loop
        cuda = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            torch.random.default_generator.manual_seed(noise)
            if cuda:
                torch.cuda.manual_seed(noise)
            return lfads_batch_loss(
                model,
                x,
                stim,
                self.acq.phases,
                self.acq.effective_tu,
                t0,
                horizon,
                self.config.loss,
                weights,
                generator=self.cd_generator,
            )

    @torch.no_grad()
    def start_state(self, model: nn.Module, es: EvalSet, bf16: bool) -> Tensor:
        """z0 at each start: the IC posterior mean of the observed entries of the W rows
        ending at the start (no interpolation, no row after the start; rows before the
        range count as unobserved). The inferred inputs after the start are their prior
        mean, zero, inside the model's open-loop rollout."""
        assert isinstance(model, LFADSModel)
        window = model.cfg.encoder_window
        x_ctx, mask = gather_window(
            es.x, es.starts, 1 - window, window, phases=self.acq.phases, tu=self.acq.effective_tu
        )
        was_training = model.training
        model.eval()
        try:
            ref = next(iter(model.parameters()))
            with bf16_autocast(bf16, ref.device):
                z0, _ = model.initial_state(x_ctx.to(ref.device), mask.to(ref.device), sample=False)
        finally:
            model.train(was_training)
        return z0.to(torch.float32)

    def reseed(self, seed: int) -> None:
        """A fresh dropout stream after adopting another run's state (PBT exploit)."""
        self.cd_generator.manual_seed(_cd_seed(seed, "coordinated_dropout"))
        self.noise_seed = _cd_seed(seed, "model_noise")

    def state_dict(self) -> dict[str, Any]:
        return {
            "steps": int(self.steps),
            "noise_seed": int(self.noise_seed),
            "cd_device": self.cd_generator.device.type,
            "cd_generator": self.cd_generator.get_state(),
        }

    def load_state_dict(self, state: Mapping[str, Any], model: nn.Module) -> None:
        """Restore the step count and the dropout stream; a stream saved on another device
        type cannot be set here, so it is reseeded from the step count (exact per device)."""
        if not state:
            return
        self.steps = int(state["steps"])
        self.noise_seed = int(state["noise_seed"])
        if state.get("cd_device") == self.cd_generator.device.type:
            self.cd_generator.set_state(state["cd_generator"].to(torch.uint8).cpu())
        else:
            tag = f"coordinated_dropout:{self.steps}"
            self.cd_generator.manual_seed(_cd_seed(self.config.training.seed, tag))
