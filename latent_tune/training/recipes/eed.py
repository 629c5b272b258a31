"""The EED recipes: staggered interpolation loss and time-aligned loss (docs/method.md, 5-7).

Both share the encoder-evolver-decoder model, the TV / AUG / L1 terms and the two optional
pre-training phases (stimulus auto-encoder, reconstruction warm-up: eed_phases.py); they differ
in the batch loss and in the acquisition they accept.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from latent_tune.data.acquisition import Acquisition
from latent_tune.data.interpolation import interpolate_rows
from latent_tune.errors import UserInputError
from latent_tune.model.eed import EEDModel
from latent_tune.training.data import RunData
from latent_tune.training.eed_config import TrainConfig
from latent_tune.training.losses import aligned_loss, staggered_loss
from latent_tune.training.masked_decode import phase_classes
from latent_tune.training.recipes.base import Phase, Recipe
from latent_tune.training.recipes.eed_phases import run_recon_warmup, run_stimulus_ae
from latent_tune.training.regularisers import AugSampler, Connectome

__all__ = ["AlignedRecipe", "EEDRecipe", "StaggeredRecipe", "ems_effective"]


def ems_effective(epoch: int, ems: int, warmup_epochs: int) -> int:
    """ems of main epoch `epoch` (0-based): ramps 1 -> ems over the warmup epochs."""
    if warmup_epochs <= 0:
        return int(ems)
    return int(min(ems, 1 + (int(epoch) * int(ems)) // int(warmup_epochs)))


class EEDRecipe(Recipe):
    """What both EED recipes share: model, AUG sampler, phases, ems warm-up."""

    config_class = TrainConfig
    config: TrainConfig

    def __init__(
        self, config: TrainConfig, data: RunData, acq: Acquisition, device: torch.device
    ) -> None:
        super().__init__(config, data, acq, device)
        cfg = config
        self.aug: AugSampler | None = None
        if cfg.loss.aug.coeff > 0 and cfg.loss.aug.num_neurons > 0:
            # Writable copies: torch.as_tensor of the read-only mapped edge arrays would warn.
            pre, post, _ = data.train.connectome()
            if np.asarray(pre).size == 0:
                raise UserInputError(
                    None,
                    "loss.aug.coeff",
                    f"{cfg.loss.aug.coeff} needs a connectome, but the training dataset "
                    f"{data.train.path} has no edges (set loss.aug.coeff: 0, or import the data "
                    "with its connectome)",
                )
            conn = Connectome(np.array(pre), np.array(post), data.n_neurons, device=device)
            self.aug = AugSampler(conn, cfg.loss.aug.num_neurons, seed=cfg.training.seed + 1)
        self.stimulus_frozen = False
        self.loss_fn: Callable[..., dict[str, Tensor]] = aligned_loss
        self.loss_kwargs: dict[str, Any] = {}

    def build_model(self) -> nn.Module:
        return EEDModel(self.data.n_neurons, self.data.n_stimulus, self.config.model)

    def horizon(self, epoch: int) -> int:
        t = self.config.training
        return t.time_units * ems_effective(epoch, t.evolve_multiple_steps, t.ems_warmup_epochs)

    def eval_horizon(self) -> int:
        return self.config.horizon

    def epoch_scalars(self, epoch: int) -> dict[str, int | float]:
        """The effective ems of this epoch (the ems warm-up)."""
        t = self.config.training
        return {"ems_effective": ems_effective(epoch, t.evolve_multiple_steps, t.ems_warmup_epochs)}

    def start_frames(self, x: Tensor, t0: Tensor) -> dict[str, Tensor]:
        """Extra loss inputs made from the chunk for this batch (none by default)."""
        return {}

    def batch_loss(
        self, model: nn.Module, x: Tensor, stim: Tensor, t0: Tensor, horizon: int
    ) -> dict[str, Tensor]:
        return self.loss_fn(
            model,
            x,
            None,
            stim,
            t0,
            self.acq,
            horizon,
            self.config.loss,
            self.aug,
            **self.loss_kwargs,
            **self.start_frames(x, t0),
        )

    def phases(self) -> list[Phase]:
        t = self.config.training
        out = []
        if t.stimulus_ae.enabled:
            out.append(Phase("stimulus_ae", run_stimulus_ae))
        if t.recon_warmup_epochs > 0:
            out.append(Phase("recon_warmup", run_recon_warmup))
        return out

    def freeze_stimulus_encoder(self, model: nn.Module) -> None:
        """Keep the pretrained stimulus encoder fixed for the rest of the run."""
        model.stimulus_encoder.requires_grad_(False)
        self.stimulus_frozen = True

    def reseed(self, seed: int) -> None:
        if self.aug is not None:
            self.aug.generator.manual_seed(seed)

    def state_dict(self) -> dict[str, Any]:
        return {
            "aug": self.aug.state_dict() if self.aug is not None else {},
            "stimulus_frozen": bool(self.stimulus_frozen),
        }

    def load_state_dict(self, state: Mapping[str, Any], model: nn.Module) -> None:
        if self.aug is not None and state.get("aug"):
            self.aug.load_state_dict(state["aug"])
        if state.get("stimulus_frozen"):
            self.freeze_stimulus_encoder(model)


class StaggeredRecipe(EEDRecipe):
    """The staggered interpolation loss: decode at every step, score observed entries only."""

    name = "staggered"

    def __init__(
        self, config: TrainConfig, data: RunData, acq: Acquisition, device: torch.device
    ) -> None:
        super().__init__(config, data, acq, device)
        self.loss_fn = staggered_loss
        if config.training.masked_decode:
            # Masked decoding: neurons grouped by phase once per run.
            self.loss_kwargs = {"masked_decode": True, "classes": phase_classes(acq, device)}

    def start_frames(self, x: Tensor, t0: Tensor) -> dict[str, Tensor]:
        """The interpolated start frames X~[t0], made for this batch only."""
        mode = self.config.acquisition.interpolation
        return {"x_start": interpolate_rows(x, t0, self.acq.phases, self.acq.effective_tu, mode)}


class AlignedRecipe(EEDRecipe):
    """The time-aligned loss (RECON + EVOLVE at the snapshot times)."""

    name = "aligned"
