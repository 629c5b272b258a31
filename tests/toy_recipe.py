"""A user's own model family, outside latent_tune: a linear latent model on staggered data.

Used by tests/test_recipes.py to show that a recipe needs no edit of latent_tune: this module
defines its config, model and batch loss; a config names it as `recipe: tests.toy_recipe:ToyRecipe`.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from latent_tune.data.interpolation import interpolate_rows
from latent_tune.training.config import BaseTrainConfig, BaseTrainingConfig, StrictModel
from latent_tune.training.recipes.base import Recipe

RECIPE_NAME = "tests.toy_recipe:ToyRecipe"


class ToyModelConfig(StrictModel):
    latent_dims: int = Field(default=8, ge=1)


class ToyTrainingConfig(BaseTrainingConfig):
    horizon: int = Field(default=20, ge=2)


class ToyConfig(BaseTrainConfig):
    recipe: Literal["tests.toy_recipe:ToyRecipe"] = RECIPE_NAME
    model: ToyModelConfig = Field(default_factory=ToyModelConfig)
    training: ToyTrainingConfig = Field(default_factory=ToyTrainingConfig)


class ToyModel(nn.Module):
    """z_{k+1} = z_k + A z_k + B u_k, x = C z + c: linear everything, starting as a leak."""

    def __init__(self, n: int, s: int, latent: int) -> None:
        super().__init__()
        self.encoder = nn.Linear(n, latent)
        self.dynamics = nn.Linear(latent, latent, bias=False)
        self.input = nn.Linear(s, latent, bias=False)
        with torch.no_grad():
            self.dynamics.weight.copy_(-0.1 * torch.eye(latent))
            self.input.weight.zero_()
        self.decoder = nn.Linear(latent, n)

    def encode(self, x: Tensor) -> Tensor:
        return self.encoder(x)

    def encode_stimulus(self, s: Tensor) -> Tensor:
        return self.input(s)

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(z)

    def rollout(self, z0: Tensor, u: Tensor) -> Tensor:
        z, out = z0, []
        for k in range(u.shape[0]):
            z = z + self.dynamics(z) + u[k]
            out.append(z)
        return torch.stack(out)


class ToyRecipe(Recipe):
    name = RECIPE_NAME
    config_class = ToyConfig

    def build_model(self) -> nn.Module:
        return ToyModel(self.data.n_neurons, self.data.n_stimulus, self.config.model.latent_dims)

    def horizon(self, epoch: int) -> int:
        return self.config.training.horizon

    def batch_loss(
        self, model: nn.Module, x: Tensor, stim: Tensor, t0: Tensor, horizon: int
    ) -> dict[str, Tensor]:
        tu = self.acq.effective_tu
        mode = self.config.acquisition.interpolation
        z = model.encode(interpolate_rows(x, t0, self.acq.phases, tu, mode))
        k = torch.arange(horizon, device=x.device)
        rows = t0.unsqueeze(0) + k.unsqueeze(1)  # (H, B)
        zs = model.rollout(z, model.encode_stimulus(stim[rows]))  # predictions for rows + 1
        truth = x[rows + 1]
        phases = self.acq.phases.to(x.device)
        seen = torch.remainder((rows + 1).unsqueeze(-1) - phases, tu) == 0  # (H, B, N)
        err = (model.decode(zs) - truth).square() * seen
        total = err.sum() / seen.sum().clamp_min(1)
        return {"total": total, "mse_observed": total}
