"""The training loop of every recipe, driveable one epoch at a time with an exact state.

Why this shape: Ray Tune drives a trial epoch by epoch (one report each), checkpoints it, and
may restore it elsewhere (failure retry, PBT exploit, resume). So `train_epoch()` does one
epoch (running the recipe's pending pre-training phases first), evaluates per cadence, logs
TensorBoard and returns a flat report; `state_dict()` holds everything the next epoch depends
on (trainer_state.py), so save -> restore -> next epoch gives exactly the loss an uninterrupted
run gives. The recipe (training/recipes/) brings the model, the batch loss, the rollout's start
state and the phases; evaluation and the objective are shared (diagnostics.py).

Epoch numbering: `epoch` counts main-training epochs done; TensorBoard steps are the 0-based
epoch index; reports carry `epoch` = epochs done (= Tune's training_iteration). Pre-training
phases are extra epochs run inside the first `train_epoch()` call.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from latent_tune.data.acquisition import make_acquisition
from latent_tune.data.sampling import batch_starts, chunk_starts
from latent_tune.errors import UserInputError
from latent_tune.training.checkpoint import load_state, save_state
from latent_tune.training.config import BaseTrainConfig
from latent_tune.training.data import RunData, TrainChunk, load_run_data
from latent_tune.training.diagnostics import (
    evaluate_all,
    log_eval,
    objective_metrics,
    test_metrics,
    trace_neurons,
)
from latent_tune.training.epoch_report import log_epoch, tune_report
from latent_tune.training.evaluate import DatasetEval
from latent_tune.training.levers import ModelEMA, lr_factor
from latent_tune.training.precision import bf16_autocast
from latent_tune.training.recipes.registry import resolve_recipe
from latent_tune.training.tensorboard import TBLogger
from latent_tune.training.trainer_state import (
    STATE_FORMAT,
    StateFormatError,
    adopt_into,
    best_checkpoint_of,
    check_format,
    cpu_state,
    load_into,
    state_of,
)

__all__ = ["STATE_FORMAT", "Trainer", "resolve_device"]

BEST_FILE = Path("checkpoints") / "best.pt"


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The requested device, or CUDA when available, else CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class Trainer:
    """One training run of a recipe (see the module docstring for the protocol)."""

    def __init__(
        self,
        config: BaseTrainConfig,
        run_dir: Path | str | None = None,
        device: str | torch.device | None = None,
        *,
        source: str | os.PathLike | None = None,
    ) -> None:
        """Open the data, build recipe, model, optimizer, generators; `source` names the file."""
        self.config = cfg = config
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.device = resolve_device(device)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = cfg.training.tf32
            torch.backends.cudnn.allow_tf32 = cfg.training.tf32
        recipe_cls = resolve_recipe(cfg.recipe, file=source)
        try:
            self.data: RunData = load_run_data(cfg)
            n = self.data.n_neurons
            self.acq = make_acquisition(
                cfg.acquisition.mode, cfg.training.time_units, n, cfg.acquisition.seed
            )
            self.recipe = recipe_cls(cfg, self.data, self.acq, self.device)
            need = self.recipe.context_steps() + self.recipe.eval_horizon() + 2
            if self.data.train_len < need:
                raise UserInputError(
                    None,
                    "data.train_range",
                    f"{self.data.train_len} training rows are too few for one window "
                    f"(context + horizon + 2 = {need})",
                )
            self.val, self.crossval = self.data.eval_sets(self.acq, cfg, self.device)
            self.test = self.data.test_sets(self.acq, cfg, self.device)
        except UserInputError as e:
            if e.file is None and source is not None:
                raise UserInputError(source, e.key, e.problem) from None
            raise
        with torch.random.fork_rng(devices=[]):  # seeded init without touching global RNG
            torch.manual_seed(cfg.training.seed)
            self.model = self.recipe.build_model().to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.training.learning_rate)
        # The EMA of the weights (training.ema_decay > 0): what evaluation, best and export use.
        self.ema: ModelEMA | None = None
        if cfg.training.ema_decay > 0:
            self.ema = ModelEMA(self.model, cfg.training.ema_decay)
        self.schedule_step = 0  # main-training optimizer steps done (the lr schedule's position)
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(cfg.training.seed)
        self.trace_neurons = trace_neurons(self.data.cell_types)
        self._step_loss: Callable[..., dict[str, Tensor]] = self._loss
        if cfg.training.compile:
            torch.compiler.reset()  # a reused worker must not hit the previous trial's caches
            self._step_loss = torch.compile(self._loss, dynamic=False)
        self.tb = TBLogger(self.run_dir)
        self._chunk: TrainChunk | None = None

        self.epoch = 0
        self.phase = "main"
        self.phases_done: list[str] = []
        self.best_value = math.inf
        self.best_epoch = 0
        self.best_penalised = True
        self.best_model: dict[str, Tensor] | None = None
        self.last_eval: dict[str, float | bool] = {}
        self.last_dataset_metrics: dict[str, dict[str, float]] = {}
        self.last_losses: dict[str, float] = {}
        self.total_elapsed = 0.0
        self.optimizer_steps = 0
        self.adopted_at = 0  # the epoch this run took over another run's weights (0: never)

    # ------------------------------------------------------------------ properties

    @property
    def done(self) -> bool:
        """Whether all configured main epochs have run."""
        return self.epoch >= self.config.training.epochs

    @property
    def eval_model(self) -> torch.nn.Module:
        """The weights that are evaluated, kept as best and exported: the EMA when enabled."""
        return self.ema.module if self.ema is not None else self.model

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps of one main epoch."""
        t = self.config.training
        return t.chunks_per_epoch * t.batches_per_chunk

    def lr_factor(self, step: int | None = None) -> float:
        """The lr schedule's factor at main-training step `step` (default: the next step)."""
        t = self.config.training
        s = self.schedule_step if step is None else step
        spe = self.steps_per_epoch
        return lr_factor(t.lr_schedule, s, t.epochs * spe, spe)

    def set_lr(self, factor: float) -> None:
        """Set every param group's lr to the configured learning rate x `factor`."""
        lr = self.config.training.learning_rate * factor
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    @property
    def phases(self) -> Tensor:
        """The neuron phases of this run (int64, CPU)."""
        return self.acq.phases

    # ------------------------------------------------------------------ data & steps

    def _get_chunk(self, start: int) -> TrainChunk:
        """The chunk at `start` on the device (the last one is kept, so a repeat is free)."""
        if self._chunk is None or self._chunk.start != start:
            self._chunk = None  # free the device copy before making the next
            self._chunk = self.data.chunk(start, self.config.training.chunk_steps, self.device)
        return self._chunk

    def chunk_plan(self) -> list[int]:
        """This epoch's chunk starts (seeded); a short range repeats its single chunk."""
        t = self.config.training
        starts = chunk_starts(
            self.data.train_len, t.chunk_steps, t.time_units, t.chunks_per_epoch, self.generator
        )
        if len(starts) < t.chunks_per_epoch:
            starts = [starts[0]] * t.chunks_per_epoch
        return starts

    def run_batches(
        self, horizon: int, step: Callable[[TrainChunk, Tensor], dict[str, Tensor]]
    ) -> dict[str, float]:
        """One epoch of batches: seeded chunks x batches_per_chunk; returns mean loss terms."""
        t = self.config.training
        context = self.recipe.context_steps()
        sums: dict[str, Tensor] = {}
        count = 0
        for start in self.chunk_plan():
            chunk = self._get_chunk(start)
            for _ in range(t.batches_per_chunk):
                t0 = batch_starts(
                    chunk.x.shape[0], horizon + 1, t.batch_size, context, self.generator
                )
                terms = step(chunk, t0.to(self.device))
                for k, v in terms.items():
                    sums[k] = sums[k] + v.detach() if k in sums else v.detach()
                count += 1
            del chunk  # only self._chunk may hold it: freed before the next one is made
        return {k: float(v) / max(count, 1) for k, v in sums.items()}

    def _loss(self, x: Tensor, stim: Tensor, t0: Tensor, horizon: int) -> dict[str, Tensor]:
        """The recipe's loss terms for one batch (the function torch.compile wraps)."""
        return self.recipe.batch_loss(self.model, x, stim, t0, horizon)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """bf16 autocast for the train step's forward when configured, else none."""
        return bf16_autocast(self.config.training.bf16, self.device)

    def optimize(self, total: Tensor) -> None:
        """Backward, optional grad-norm clipping, Adam step."""
        total.backward()
        clip = self.config.training.grad_clip
        if clip > 0:
            params = [p for p in self.model.parameters() if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, clip)
        self.optimizer.step()
        self.optimizer_steps += 1
        if self.ema is not None:
            self.ema.update(self.model)

    def _main_step(self, horizon: int) -> Callable[[TrainChunk, Tensor], dict[str, Tensor]]:
        def step(chunk: TrainChunk, t0: Tensor) -> dict[str, Tensor]:
            self.optimizer.zero_grad(set_to_none=True)
            with self.autocast():
                terms = self._step_loss(chunk.x, chunk.stim, t0, horizon)
            self.set_lr(self.lr_factor())
            self.optimize(terms["total"])
            self.schedule_step += 1
            return terms

        return step

    def _run_pending_phases(self) -> None:
        """Run the recipe's pre-training phases not yet done, in order; then main training."""
        for phase in self.recipe.phases():
            if phase.name in self.phases_done:
                continue
            self.set_lr(1.0)  # pre-training runs at the configured lr (no schedule)
            self.phase = phase.name
            phase.run(self)
            self.phases_done.append(phase.name)
        self.phase = "main"

    # ------------------------------------------------------------------ evaluation

    def evaluate(self, need_figures: bool = False) -> dict[str, DatasetEval]:
        """Evaluate `eval_model` on "val" and every cross-val set (no logging, no state)."""
        return evaluate_all(self, self.eval_model, need_figures)

    def objective(self, evals: Mapping[str, DatasetEval]) -> dict[str, float | bool]:
        """Objective metrics from an evaluate() result (cross-val sets only)."""
        return objective_metrics(evals, self.crossval, self.config.evaluation.penalty_factor)

    def _update_best(self, obj: Mapping[str, float | bool]) -> bool:
        """Best epoch on crossval_rollout_mse; a penalised value never beats an unpenalised one."""
        value, penalised = float(obj["crossval_rollout_mse"]), bool(obj["penalised"])
        better = (penalised, value) < (self.best_penalised, self.best_value)
        if better or self.best_model is None:
            self.best_value, self.best_penalised, self.best_epoch = value, penalised, self.epoch
            self.best_model = cpu_state(self.eval_model)
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
        index = self.epoch
        horizon = self.recipe.horizon(index)
        losses = self.run_batches(horizon, self._main_step(horizon))
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
            log_eval(self, evals, index, need_figures)
            if self.done:  # the final model, once, on the windows nothing selects on
                self.last_eval.update(test_metrics(self, self.eval_model, index))
            diag = time.perf_counter() - t_eval
        duration = time.perf_counter() - t_start
        self.total_elapsed += duration

        extra = self.recipe.epoch_scalars(index)
        log_epoch(self, index, losses, extra, duration=duration, diag=diag, evaluated=evaluated)
        return self.report(
            losses=losses, duration=duration, diag=diag, evaluated=evaluated, extra=extra
        )

    def report(
        self,
        *,
        losses: Mapping[str, float] | None = None,
        duration: float = 0.0,
        diag: float = 0.0,
        evaluated: bool = False,
        extra: Mapping[str, int | float] | None = None,
    ) -> dict[str, float | int | bool]:
        """The flat metrics dict reported to Tune (floats, ints and bools only)."""
        return tune_report(
            self, losses=losses, duration=duration, diag=diag, evaluated=evaluated, extra=extra
        )

    # ------------------------------------------------------------------ state

    def best_model_state(self) -> dict[str, Tensor]:
        """Weights of the best evaluated epoch (the current evaluated ones before any)."""
        return self.best_model if self.best_model is not None else cpu_state(self.eval_model)

    def best_checkpoint(self) -> dict[str, Any]:
        """A small model-only checkpoint of the best epoch (config as YAML text)."""
        return best_checkpoint_of(self)

    def state_dict(self) -> dict[str, Any]:
        """The complete state (weights_only-loadable: tensors, numbers, strings, lists, dicts)."""
        return state_of(self)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a state_dict() (see trainer_state.load_into)."""
        load_into(self, state)
        self._chunk = None

    def adopt(self, state: Mapping[str, Any], key: str) -> None:
        """Continue from ANOTHER run's state (a PBT exploit): its weights, their EMA, optimizer
        and epoch (lr = this run's configured lr x the schedule's factor there), but this run's
        own data order and no inherited best.

        Why: with the donor's generator states, donor and clone would train on identical
        batches; with the donor's best-so-far, the clone's exported best model would be the
        donor's weights next to the clone's explored config. The new generator seeds derive
        from `key` (e.g. the trial id and epoch), so a retry of the same trial is still exact.
        """
        adopt_into(self, state, key)

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
        """A trainer rebuilt from a checkpoint's own config and state (another format: a
        one-line UserInputError naming the file)."""
        state = load_state(path)
        try:
            check_format(state)
        except StateFormatError as e:
            raise UserInputError(path, "format", str(e)) from None
        config = BaseTrainConfig.from_yaml_text(state["config"], file=path)
        trainer = cls(config, run_dir, device)
        trainer.load_state_dict(state)
        return trainer

    def close(self) -> None:
        """Flush and close the TensorBoard writer and drop device copies of the data."""
        self.tb.close()
        self._chunk = None
