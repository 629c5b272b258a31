"""The training loop, driveable one epoch at a time with an exactly restorable state.

Why this shape: Ray Tune drives a trial epoch by epoch (one report each), checkpoints it, and
may restore it elsewhere (failure retry, PBT exploit, resume). So `train_epoch()` does one
epoch (running the pending pre-training phases first), evaluates per cadence, logs TensorBoard
and returns a flat report; `state_dict()` holds everything the next epoch depends on (model,
optimizer, generator states, phase, best-so-far), loadable with `weights_only=True`, so
save -> restore -> next epoch gives exactly the loss an uninterrupted run gives.

Epoch numbering: `epoch` counts main-training epochs done; TensorBoard steps are the 0-based
epoch index; reports carry `epoch` = epochs done (= Tune's training_iteration). Stimulus-AE
pretraining and reconstruction warmup are extra epochs (as in the lab) run inside the first
`train_epoch()` call and logged under `StimulusAE/*` and `ReconWarmup/*`.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from latent_tune.data.acquisition import make_acquisition
from latent_tune.data.interpolation import interpolate_rows
from latent_tune.data.sampling import batch_starts, chunk_starts
from latent_tune.errors import UserInputError
from latent_tune.model.eed import EEDModel
from latent_tune.model.stimulus_ae import StimulusAutoEncoder
from latent_tune.training import figures
from latent_tune.training.checkpoint import load_state, save_state
from latent_tune.training.config import L1Config, TrainConfig
from latent_tune.training.data import EvalSet, RunData, TrainChunk, load_run_data
from latent_tune.training.evaluate import DatasetEval, crossval_objective, evaluate_dataset
from latent_tune.training.losses import (
    AugSampler,
    Connectome,
    aligned_loss,
    l1_term,
    phase_classes,
    staggered_loss,
)
from latent_tune.training.precision import bf16_autocast
from latent_tune.training.tensorboard import TBLogger

__all__ = ["PHASES", "STATE_FORMAT", "Trainer", "ems_effective", "resolve_device"]

PHASES = ("stimulus_ae", "recon_warmup", "main")
STATE_FORMAT = "latent_tune.trainer/1"
BEST_FILE = Path("checkpoints") / "best.pt"


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The requested device, or CUDA when available, else CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def ems_effective(epoch: int, ems: int, warmup_epochs: int) -> int:
    """ems of main epoch `epoch` (0-based): ramps 1 -> ems over the warmup epochs (METHOD sec 7)."""
    if warmup_epochs <= 0:
        return int(ems)
    return int(min(ems, 1 + (int(epoch) * int(ems)) // int(warmup_epochs)))


def _is_penalised(ev: DatasetEval, penalty_factor: float) -> bool:
    """Whether crossval_objective replaced this dataset's MSE with its penalty."""
    v = ev.metrics["mse_overall"]
    return (
        (not ev.finite)
        or (not math.isfinite(v))
        or v > penalty_factor * ev.metrics["constant_mse_overall"]
    )


def _cpu_state(module: nn.Module) -> dict[str, Tensor]:
    """A detached CPU copy of a module's weights (kept as the best model)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def _detached_copy(obj: Any) -> Any:
    """Deep copy of a nested state with every tensor detached, cloned and moved to the CPU.

    A state must not alias live parameters: training on after state_dict() would change it.
    """
    if isinstance(obj, Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, Mapping):
        return {k: _detached_copy(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_detached_copy(v) for v in obj)
    return obj


def _trace_neurons(cell_types: np.ndarray) -> Tensor:
    """One neuron per cell type, chosen with a fixed seed (the lab's rng seed 0)."""
    rng = np.random.default_rng(0)
    picks = [int(rng.choice(np.flatnonzero(cell_types == t))) for t in np.unique(cell_types)]
    return torch.tensor(picks, dtype=torch.int64)


class Trainer:
    """One training run of an EED model (see the module docstring for the protocol)."""

    def __init__(
        self,
        config: TrainConfig,
        run_dir: Path | str | None = None,
        device: str | torch.device | None = None,
        *,
        source: str | os.PathLike | None = None,
    ) -> None:
        """Open the data, build model, optimizer, generators; `source` names the config file."""
        self.config = config
        cfg = config
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.device = resolve_device(device)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = cfg.training.tf32
            torch.backends.cudnn.allow_tf32 = cfg.training.tf32
        try:
            self.data: RunData = load_run_data(cfg)
            n, s = self.data.n_neurons, self.data.n_stimulus
            self.acq = make_acquisition(
                cfg.acquisition.mode, cfg.training.time_units, n, cfg.acquisition.seed
            )
            need = cfg.training.time_units + cfg.horizon + 2
            if self.data.train_len < need:
                raise UserInputError(
                    None,
                    "data.train_range",
                    f"{self.data.train_len} training rows are too few for one window "
                    f"(time_units + horizon + 2 = {need})",
                )
            self.val, self.crossval = self.data.eval_sets(self.acq, cfg, self.device)
        except UserInputError as e:
            if e.file is None and source is not None:
                raise UserInputError(source, e.key, e.problem) from None
            raise
        with torch.random.fork_rng(devices=[]):  # seeded init without touching global RNG
            torch.manual_seed(cfg.training.seed)
            self.model = EEDModel(n, s, cfg.model).to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.training.learning_rate)
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(cfg.training.seed)
        self.aug: AugSampler | None = None
        if cfg.loss.aug.coeff > 0 and cfg.loss.aug.num_neurons > 0:
            # Writable copies: torch.as_tensor of the read-only mapped edge arrays would warn.
            pre, post, _ = self.data.train.connectome()
            conn = Connectome(np.array(pre), np.array(post), n, device=self.device)
            self.aug = AugSampler(conn, cfg.loss.aug.num_neurons, seed=cfg.training.seed + 1)
        self.trace_neurons = _trace_neurons(self.data.cell_types)
        # Masked decoding (staggered recipe only): neurons grouped by phase once per run.
        self._stag_kwargs: dict[str, Any] = {}
        if cfg.recipe == "staggered" and cfg.training.masked_decode:
            self._stag_kwargs = {
                "masked_decode": True,
                "classes": phase_classes(self.acq, self.device),
            }
        self.loss_fn: Callable[..., dict[str, Tensor]] = (
            staggered_loss if cfg.recipe == "staggered" else aligned_loss
        )
        self._step_loss: Callable[..., dict[str, Tensor]] = self._loss
        if cfg.training.compile:
            torch.compiler.reset()  # a reused worker must not hit the previous trial's caches
            self._step_loss = torch.compile(self._loss, dynamic=False)
        self.tb = TBLogger(self.run_dir)
        self._chunk: TrainChunk | None = None

        self.epoch = 0
        self.phase = self._first_phase()
        self.phases_done: list[str] = []
        self.recon_epochs_done = 0
        self.stimulus_frozen = False
        self.best_value = math.inf
        self.best_epoch = 0
        self.best_penalised = True
        self._best_model: dict[str, Tensor] | None = None
        self.last_eval: dict[str, float | bool] = {}
        self.last_dataset_metrics: dict[str, dict[str, float]] = {}
        self.last_losses: dict[str, float] = {}
        self.total_elapsed = 0.0
        self.optimizer_steps = 0

    # ------------------------------------------------------------------ properties

    @property
    def done(self) -> bool:
        """Whether all configured main epochs have run."""
        return self.epoch >= self.config.training.epochs

    @property
    def phases(self) -> Tensor:
        """The neuron phases of this run (int64, CPU)."""
        return self.acq.phases

    def _first_phase(self) -> str:
        t = self.config.training
        if t.stimulus_ae.enabled:
            return "stimulus_ae"
        return "recon_warmup" if t.recon_warmup_epochs > 0 else "main"

    # ------------------------------------------------------------------ data & steps

    def _get_chunk(self, start: int) -> TrainChunk:
        """The chunk at `start` on the device (the last one is kept, so a repeat is free)."""
        if self._chunk is None or self._chunk.start != start:
            self._chunk = None  # free the device copy before making the next
            self._chunk = self.data.chunk(start, self.config.training.chunk_steps, self.device)
        return self._chunk

    def _chunk_plan(self) -> list[int]:
        """This epoch's chunk starts (seeded); a short range repeats its single chunk."""
        t = self.config.training
        starts = chunk_starts(
            self.data.train_len, t.chunk_steps, t.time_units, t.chunks_per_epoch, self.generator
        )
        if len(starts) < t.chunks_per_epoch:
            starts = [starts[0]] * t.chunks_per_epoch
        return starts

    def _run_batches(
        self, horizon: int, step: Callable[[TrainChunk, Tensor], dict[str, Tensor]]
    ) -> dict[str, float]:
        """One epoch of batches: seeded chunks x batches_per_chunk; returns mean loss terms."""
        t = self.config.training
        sums: dict[str, Tensor] = {}
        count = 0
        for start in self._chunk_plan():
            chunk = self._get_chunk(start)
            for _ in range(t.batches_per_chunk):
                t0 = batch_starts(
                    chunk.x.shape[0], horizon + 1, t.batch_size, t.time_units, self.generator
                )
                terms = step(chunk, t0.to(self.device))
                for k, v in terms.items():
                    sums[k] = sums[k] + v.detach() if k in sums else v.detach()
                count += 1
            del chunk  # only self._chunk may hold it: freed before the next one is made
        return {k: float(v) / max(count, 1) for k, v in sums.items()}

    def _start_frames(self, x: Tensor, t0: Tensor) -> dict[str, Tensor]:
        """The staggered loss's interpolated start frames X~[t0], made for this batch only."""
        if self.config.recipe != "staggered":
            return {}
        mode = self.config.acquisition.interpolation
        return {"x_start": interpolate_rows(x, t0, self.acq.phases, self.acq.effective_tu, mode)}

    def _loss(self, x: Tensor, stim: Tensor, t0: Tensor, horizon: int) -> dict:
        """The recipe's loss terms for one batch (the function torch.compile wraps)."""
        return self.loss_fn(
            self.model,
            x,
            None,
            stim,
            t0,
            self.acq,
            horizon,
            self.config.loss,
            self.aug,
            **self._stag_kwargs,
            **self._start_frames(x, t0),
        )

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        """bf16 autocast for the train step's forward when configured, else none."""
        return bf16_autocast(self.config.training.bf16, self.device)

    def _optimize(self, total: Tensor) -> None:
        """Backward, optional grad-norm clipping, Adam step."""
        total.backward()
        clip = self.config.training.grad_clip
        if clip > 0:
            params = [p for p in self.model.parameters() if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, clip)
        self.optimizer.step()
        self.optimizer_steps += 1

    def _main_step(self, horizon: int) -> Callable[[TrainChunk, Tensor], dict[str, Tensor]]:
        def step(chunk: TrainChunk, t0: Tensor) -> dict[str, Tensor]:
            self.optimizer.zero_grad(set_to_none=True)
            with self._autocast():
                terms = self._step_loss(chunk.x, chunk.stim, t0, horizon)
            self._optimize(terms["total"])
            return terms

        return step

    def _recon_step(self, chunk: TrainChunk, t0: Tensor) -> dict[str, Tensor]:
        """Encoder/decoder only: RECON (+ L1 of encoder and decoder), evolver frozen."""
        self.optimizer.zero_grad(set_to_none=True)
        cfg = self.config
        l1 = L1Config(encoder=cfg.loss.l1.encoder, decoder=cfg.loss.l1.decoder, evolver=0.0)
        if cfg.recipe == "staggered":
            # Horizon 1: the masked loss on the observed entries of the start frame only.
            no_aux = cfg.loss.model_copy(update={"tv_coeff": 0.0, "l1": l1})
            with self._autocast():
                terms = staggered_loss(
                    self.model,
                    chunk.x,
                    None,
                    chunk.stim,
                    t0,
                    self.acq,
                    1,
                    no_aux,
                    None,
                    **self._stag_kwargs,
                    **self._start_frames(chunk.x, t0),
                )
            recon, reg = terms["evolve"], terms["reg"]
        else:
            tu = self.acq.effective_tu
            if tu > 1:  # snap to the observation grid: a simultaneous observed frame
                t0 = t0 - torch.remainder(t0 - self.acq.phases[0].to(t0.device), tu)
            x0 = chunk.x.index_select(0, t0)
            with self._autocast():
                recon = (self.model.decode(self.model.encode(x0)) - x0).square().mean()
            reg = l1_term(self.model, l1)
        total = recon + reg
        self._optimize(total)
        return {"total": total, "recon": recon, "reg": reg}

    # ------------------------------------------------------------------ phases

    def _run_stimulus_ae(self) -> None:
        """Pretrain a stimulus auto-encoder on training frames; load and freeze its encoder."""
        cfg, t = self.config, self.config.training
        sae = t.stimulus_ae
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(t.seed + 2)
            ae = StimulusAutoEncoder(self.data.n_stimulus, cfg.model.stimulus_encoder)
        ae = ae.to(self.device)
        opt = torch.optim.Adam(ae.parameters(), lr=sae.learning_rate)
        for e in range(sae.epochs):
            t_start = time.perf_counter()
            total = torch.zeros((), device=self.device)
            count = 0
            for start in self._chunk_plan():
                _, sv = self.data.train_views(start, t.chunk_steps)
                stim = torch.tensor(sv, dtype=torch.float32, device=self.device)
                for _ in range(t.batches_per_chunk):
                    rows = torch.randint(
                        0, stim.shape[0], (sae.batch_size,), generator=self.generator
                    ).to(self.device)
                    frames = stim.index_select(0, rows)
                    opt.zero_grad(set_to_none=True)
                    loss = (ae(frames) - frames).square().mean()
                    loss.backward()
                    opt.step()
                    total = total + loss.detach()
                    count += 1
                del stim  # one chunk's stimulus on the device at a time
            self.tb.scalar("StimulusAE/recon", float(total) / max(count, 1), e)
            self.tb.scalar("StimulusAE/epoch_duration", time.perf_counter() - t_start, e)
        self.model.stimulus_encoder.load_state_dict(ae.encoder.state_dict())
        self._freeze_stimulus_encoder()

    def _freeze_stimulus_encoder(self) -> None:
        self.model.stimulus_encoder.requires_grad_(False)
        self.stimulus_frozen = True

    def _run_recon_warmup(self) -> None:
        """`recon_warmup_epochs` extra epochs of RECON with the evolver frozen (lab sec 6.3)."""
        n = self.config.training.recon_warmup_epochs
        self.model.evolver.requires_grad_(False)
        try:
            while self.recon_epochs_done < n:
                t_start = time.perf_counter()
                losses = self._run_batches(1, self._recon_step)
                e = self.recon_epochs_done
                self.tb.scalars("ReconWarmup/", losses, e)
                self.tb.scalar("ReconWarmup/epoch_duration", time.perf_counter() - t_start, e)
                self.recon_epochs_done += 1
        finally:
            self.model.evolver.requires_grad_(True)

    def _run_pending_phases(self) -> None:
        """Run the pre-training phases not yet done, in order; then main training."""
        if self.phase == "stimulus_ae":
            self._run_stimulus_ae()
            self.phases_done.append("stimulus_ae")
            self.phase = "recon_warmup" if self.config.training.recon_warmup_epochs > 0 else "main"
        if self.phase == "recon_warmup":
            self._run_recon_warmup()
            self.phases_done.append("recon_warmup")
            self.phase = "main"

    # ------------------------------------------------------------------ evaluation

    def evaluate(self, need_figures: bool = False) -> dict[str, DatasetEval]:
        """Evaluate the current model on "val" and every cross-val set (no logging, no state)."""
        return {es.name: self._evaluate_set(es, need_figures) for es in [self.val, *self.crossval]}

    def _evaluate_set(self, es: EvalSet, need_figures: bool) -> DatasetEval:
        ev = self.config.evaluation
        return evaluate_dataset(
            self.model,
            es.x,
            es.x_interp,
            es.stim,
            es.starts,
            tu=self.acq.effective_tu,
            horizon=self.config.horizon,
            rollout_steps=ev.rollout_steps,
            threshold=ev.divergence_threshold,
            need_figures=need_figures,
            trace_neurons=self.trace_neurons if need_figures else None,
            fast=ev.fast,
            bf16=ev.bf16,
        )

    def objective(self, evals: Mapping[str, DatasetEval]) -> dict[str, float | bool]:
        """Objective metrics from an evaluate() result (cross-val sets only)."""
        pf = self.config.evaluation.penalty_factor
        cv = {es.name: evals[es.name] for es in self.crossval}
        obj = dict(crossval_objective(cv, pf))
        obj["penalised"] = any(_is_penalised(e, pf) for e in cv.values())
        obj["constant_rollout_mse"] = float(
            np.mean([e.metrics["constant_mse_overall"] for e in cv.values()])
        )
        obj["val_mse_overall"] = float(evals["val"].metrics["mse_overall"])
        for name, e in cv.items():
            obj[f"cv_{name}_mse_overall"] = float(e.metrics["mse_overall"])
            obj[f"cv_{name}_constant_mse_overall"] = float(e.metrics["constant_mse_overall"])
        return obj

    def _log_eval(self, evals: Mapping[str, DatasetEval], step: int, need_figures: bool) -> None:
        for name, ev in evals.items():
            prefix = TBLogger.eval_prefix(None if name == "val" else name)
            self.tb.scalars(prefix, ev.metrics, step)
            if need_figures and self.tb.enabled:
                self._log_figures(prefix, ev, step)

    def _log_figures(self, prefix: str, ev: DatasetEval, step: int) -> None:
        """Render, log and close the METHOD.md sec 8 figures of one dataset."""
        tu, ems = ev.tu, self.config.training.evolve_multiple_steps
        ymin = 1e-4 if self.data.quantity == "calcium" else 1e-3
        short = {k: v.numpy() for k, v in ev.short.items()}
        made = {
            "multi_start_2000step_latent_rollout_mses_by_time": figures.rollout_mses_by_time(
                ev.curves.numpy(), ev.constant_curve.numpy()
            ),
            "short_rollout_mse_latent": figures.short_rollout_mse(
                short["model"],
                tu=tu,
                ems=ems,
                constant=short.get("constant"),
                linear=short.get("linear") if tu > 1 else None,
                staggered=short.get("staggered") if tu > 1 else None,
                ymin=ymin,
            ),
        }
        names = self.data.type_names
        for label in ("best", "worst"):
            sc = ev.scatter.get(label)
            if sc is not None:
                made[f"{label}_2000step_rollout_latent_mse_var_scatter"] = figures.mse_var_scatter(
                    sc["var_truth"].numpy(),
                    sc["var_error"].numpy(),
                    self.data.cell_types,
                    names,
                    title=f"{label} start",
                )
            tr = ev.traces.get(label)
            if tr is not None and ev.trace_neurons is not None:
                types = self.data.cell_types[ev.trace_neurons.numpy()]
                labels = [names[t] if t < len(names) else str(t) for t in types]
                made[f"{label}_2000step_rollout_latent_traces"] = figures.rollout_traces(
                    tr["truth"].numpy(), tr["prediction"].numpy(), labels, title=f"{label} start"
                )
        for name, fig in made.items():
            self.tb.figure(prefix + name, fig, step)
            figures.close_figure(fig)

    def _update_best(self, obj: Mapping[str, float | bool]) -> bool:
        """Best epoch on crossval_rollout_mse; a penalised value never beats an unpenalised one."""
        value, penalised = float(obj["crossval_rollout_mse"]), bool(obj["penalised"])
        better = (penalised, value) < (self.best_penalised, self.best_value)
        if better or self._best_model is None:
            self.best_value, self.best_penalised, self.best_epoch = value, penalised, self.epoch
            self._best_model = _cpu_state(self.model)
            if self.run_dir is not None:
                save_state(self.best_checkpoint(), self.run_dir / BEST_FILE)
            return True
        return False

    # ------------------------------------------------------------------ the epoch

    def _due(self, every: int, index: int) -> bool:
        last = index == self.config.training.epochs - 1
        return every > 0 and ((index + 1) % every == 0 or last)

    def train_epoch(self) -> dict[str, float | int | bool]:
        """One main epoch (pending phases first), evaluation per cadence, TensorBoard, report."""
        if self.done:
            raise RuntimeError(f"all {self.config.training.epochs} epochs are done")
        t_start = time.perf_counter()
        self.model.train()
        self._run_pending_phases()
        t = self.config.training
        index = self.epoch
        ems = ems_effective(index, t.evolve_multiple_steps, t.ems_warmup_epochs)
        horizon = t.time_units * ems
        losses = self._run_batches(horizon, self._main_step(horizon))
        self.last_losses = losses
        self.epoch += 1

        ev_cfg = self.config.evaluation
        evaluated = not self.last_eval or self._due(ev_cfg.every, index)
        diag = 0.0
        if evaluated:
            t_eval = time.perf_counter()
            need_figures = self.tb.enabled and self._due(ev_cfg.figures_every, index)
            evals = self.evaluate(need_figures)
            obj = self.objective(evals)
            self.last_eval = obj
            self.last_dataset_metrics = {k: dict(e.metrics) for k, e in evals.items()}
            self._update_best(obj)
            self._log_eval(evals, index, need_figures)
            diag = time.perf_counter() - t_eval
        duration = time.perf_counter() - t_start
        self.total_elapsed += duration

        self.tb.train_losses(losses, index)
        times = {"epoch_duration": duration, "total_elapsed": self.total_elapsed}
        if evaluated:
            times["diagnostics_duration"] = diag
        self.tb.times(index, **times)
        self.tb.scalar("Train/ems_effective", ems, index)
        self.tb.flush()
        return self.report(
            losses=losses, duration=duration, diag=diag, evaluated=evaluated, ems=ems
        )

    def report(
        self,
        *,
        losses: Mapping[str, float] | None = None,
        duration: float = 0.0,
        diag: float = 0.0,
        evaluated: bool = False,
        ems: int | None = None,
    ) -> dict[str, float | int | bool]:
        """The flat metrics dict reported to Tune (floats, ints and bools only)."""
        losses = self.last_losses if losses is None else losses
        last = self.last_eval
        out: dict[str, float | int | bool] = {
            "epoch": int(self.epoch),
            "crossval_rollout_mse": float(last.get("crossval_rollout_mse", math.nan)),
            "crossval_intervening_mse": float(last.get("crossval_intervening_mse", math.nan)),
            "diverged": bool(last.get("diverged", False)),
            "penalised": bool(last.get("penalised", False)),
            "best_crossval_rollout_mse": float(self.best_value),
            "best_epoch": int(self.best_epoch),
            "train_loss": float(losses.get("total", math.nan)),
            "constant_rollout_mse": float(last.get("constant_rollout_mse", math.nan)),
            "val_mse_overall": float(last.get("val_mse_overall", math.nan)),
            "epoch_duration": float(duration),
            "diagnostics_duration": float(diag),
            "total_elapsed": float(self.total_elapsed),
            "evaluated": bool(evaluated),
            "optimizer_steps": int(self.optimizer_steps),
        }
        if ems is not None:
            out["ems_effective"] = int(ems)
        for k, v in losses.items():
            out[f"train_{k}"] = float(v)
        for k, v in last.items():
            if k.startswith("cv_"):
                out[k] = float(v)
        return out

    # ------------------------------------------------------------------ state

    def best_model_state(self) -> dict[str, Tensor]:
        """Weights of the best evaluated epoch (the current ones before any evaluation)."""
        return self._best_model if self._best_model is not None else _cpu_state(self.model)

    def best_checkpoint(self) -> dict[str, Any]:
        """A small model-only checkpoint of the best epoch (config as YAML text)."""
        return {
            "format": "latent_tune.best_model/1",
            "config": self.config.to_yaml(),
            "epoch": int(self.best_epoch),
            "crossval_rollout_mse": float(self.best_value),
            "penalised": bool(self.best_penalised),
            "model": self.best_model_state(),
            "phases": self.acq.phases.clone(),
        }

    def state_dict(self) -> dict[str, Any]:
        """The complete state (weights_only-loadable: tensors, numbers, strings, lists, dicts)."""
        return {
            "format": STATE_FORMAT,
            "config": self.config.to_yaml(),
            "epoch": int(self.epoch),
            "phase": self.phase,
            "phases_done": list(self.phases_done),
            "recon_epochs_done": int(self.recon_epochs_done),
            "stimulus_frozen": bool(self.stimulus_frozen),
            "model": _detached_copy(self.model.state_dict()),
            "optimizer": _detached_copy(self.optimizer.state_dict()),
            "generator": self.generator.get_state(),
            "aug": self.aug.state_dict() if self.aug is not None else {},
            "phases": self.acq.phases.clone(),
            "best": {
                "value": float(self.best_value),
                "epoch": int(self.best_epoch),
                "penalised": bool(self.best_penalised),
                "model": self._best_model if self._best_model is not None else {},
            },
            "last_eval": {
                k: (bool(v) if isinstance(v, bool) else float(v)) for k, v in self.last_eval.items()
            },
            "last_dataset_metrics": {k: dict(v) for k, v in self.last_dataset_metrics.items()},
            "last_losses": dict(self.last_losses),
            "total_elapsed": float(self.total_elapsed),
            "optimizer_steps": int(self.optimizer_steps),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a state_dict(); the learning rate comes from this trainer's config.

        Why the config wins for lr (and the phases): under PBT a trial may continue from another
        trial's weights with its own, perturbed hyperparameters.
        """
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"not a trainer state (format {state.get('format')!r})")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        for group in self.optimizer.param_groups:
            group["lr"] = self.config.training.learning_rate
        self.generator.set_state(state["generator"].to(torch.uint8).cpu())
        if self.aug is not None and state.get("aug"):
            self.aug.load_state_dict(state["aug"])
        self.epoch = int(state["epoch"])
        self.phase = str(state["phase"])
        self.phases_done = list(state["phases_done"])
        self.recon_epochs_done = int(state["recon_epochs_done"])
        if state["stimulus_frozen"]:
            self._freeze_stimulus_encoder()
        best = state["best"]
        self.best_value = float(best["value"])
        self.best_epoch = int(best["epoch"])
        self.best_penalised = bool(best["penalised"])
        self._best_model = (
            {k: v.detach().cpu().clone() for k, v in best["model"].items()}
            if best["model"]
            else None
        )
        self.last_eval = dict(state["last_eval"])
        self.last_dataset_metrics = {
            k: {m: float(x) for m, x in v.items()}
            for k, v in state.get("last_dataset_metrics", {}).items()
        }
        self.last_losses = {k: float(v) for k, v in state["last_losses"].items()}
        self.total_elapsed = float(state["total_elapsed"])
        self.optimizer_steps = int(state.get("optimizer_steps", 0))
        self._chunk = None

    def save_checkpoint(self, path: str | os.PathLike) -> Path:
        """Write state_dict() atomically to `path`."""
        self.tb.flush()
        return save_state(self.state_dict(), path)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        run_dir: Path | str | None = None,
        device: str | torch.device | None = None,
    ) -> Trainer:
        """A trainer rebuilt from a checkpoint's own config and state."""
        state = load_state(path)
        config = TrainConfig.from_yaml_text(state["config"], file=path)
        trainer = cls(config, run_dir, device)
        trainer.load_state_dict(state)
        return trainer

    def close(self) -> None:
        """Flush and close the TensorBoard writer and drop device copies of the data."""
        self.tb.close()
        self._chunk = None
