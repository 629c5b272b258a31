"""The EED pre-training phases: stimulus auto-encoder and reconstruction warm-up.

Why separate from the epoch loop: they are extra epochs (as in the lab) that only the EED
recipes have; each runs inside the first `Trainer.train_epoch()` call and logs under its own
TensorBoard prefix (`StimulusAE/*`, `ReconWarmup/*`). `trainer` is the running Trainer.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor

from latent_tune.model.stimulus_ae import StimulusAutoEncoder
from latent_tune.training.data import TrainChunk
from latent_tune.training.eed_config import L1Config
from latent_tune.training.losses import staggered_loss
from latent_tune.training.regularisers import l1_term

__all__ = ["recon_step", "run_recon_warmup", "run_stimulus_ae"]


def run_stimulus_ae(trainer: Any) -> None:
    """Pretrain a stimulus auto-encoder on training frames; load and freeze its encoder."""
    cfg, t = trainer.config, trainer.config.training
    sae = t.stimulus_ae
    device = trainer.device
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(t.seed + 2)
        ae = StimulusAutoEncoder(trainer.data.n_stimulus, cfg.model.stimulus_encoder)
    ae = ae.to(device)
    opt = torch.optim.Adam(ae.parameters(), lr=sae.learning_rate)
    for e in range(sae.epochs):
        t_start = time.perf_counter()
        total = torch.zeros((), device=device)
        count = 0
        for start in trainer.chunk_plan():
            _, sv = trainer.data.train_views(start, t.chunk_steps)
            stim = torch.tensor(sv, dtype=torch.float32, device=device)
            for _ in range(t.batches_per_chunk):
                rows = torch.randint(
                    0, stim.shape[0], (sae.batch_size,), generator=trainer.generator
                ).to(device)
                frames = stim.index_select(0, rows)
                opt.zero_grad(set_to_none=True)
                loss = (ae(frames) - frames).square().mean()
                loss.backward()
                opt.step()
                total = total + loss.detach()
                count += 1
            del stim  # one chunk's stimulus on the device at a time
        trainer.tb.scalar("StimulusAE/recon", float(total) / max(count, 1), e)
        trainer.tb.scalar("StimulusAE/epoch_duration", time.perf_counter() - t_start, e)
    trainer.model.stimulus_encoder.load_state_dict(ae.encoder.state_dict())
    trainer.recipe.freeze_stimulus_encoder(trainer.model)


def recon_step(trainer: Any, chunk: TrainChunk, t0: Tensor) -> dict[str, Tensor]:
    """Encoder/decoder only: RECON (+ L1 of encoder and decoder), evolver frozen."""
    trainer.optimizer.zero_grad(set_to_none=True)
    cfg, recipe, model = trainer.config, trainer.recipe, trainer.model
    l1 = L1Config(encoder=cfg.loss.l1.encoder, decoder=cfg.loss.l1.decoder, evolver=0.0)
    if cfg.recipe == "staggered":
        # Horizon 1: the masked loss on the observed entries of the start frame only.
        no_aux = cfg.loss.model_copy(update={"tv_coeff": 0.0, "l1": l1})
        with trainer.autocast():
            terms = staggered_loss(
                model,
                chunk.x,
                None,
                chunk.stim,
                t0,
                recipe.acq,
                1,
                no_aux,
                None,
                **recipe.loss_kwargs,
                **recipe.start_frames(chunk.x, t0),
            )
        recon, reg = terms["evolve"], terms["reg"]
    else:
        acq = recipe.acq
        tu = acq.effective_tu
        if tu > 1:  # snap to the observation grid: a simultaneous observed frame
            t0 = t0 - torch.remainder(t0 - acq.phases[0].to(t0.device), tu)
        x0 = chunk.x.index_select(0, t0)
        with trainer.autocast():
            recon = (model.decode(model.encode(x0)) - x0).square().mean()
        reg = l1_term(model, l1)
    total = recon + reg
    trainer.optimize(total)
    return {"total": total, "recon": recon, "reg": reg}


def run_recon_warmup(trainer: Any) -> None:
    """`recon_warmup_epochs` extra epochs of RECON with the evolver frozen."""
    n = trainer.config.training.recon_warmup_epochs
    trainer.model.evolver.requires_grad_(False)
    try:
        for e in range(n):
            t_start = time.perf_counter()
            losses = trainer.run_batches(1, lambda c, t0: recon_step(trainer, c, t0))
            trainer.tb.scalars("ReconWarmup/", losses, e)
            trainer.tb.scalar("ReconWarmup/epoch_duration", time.perf_counter() - t_start, e)
    finally:
        trainer.model.evolver.requires_grad_(True)
