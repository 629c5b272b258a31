"""The body of every bundled Ray trainable: one Trainer, one Tune report per epoch.

Why here and not in `trainables/`: the trainables stay one-line modules (a recipe name and a
`train(config)`), while the Tune protocol lives in one tested place: checkpoints at the configured
cadence (PBT/PB2: exactly on perturbation boundaries), exact restore (after a PBT exploit the
weights are the donor's, the config is this trial's explored one), scalars only to Tune,
TensorBoard and an HParams record written by the trial's own writer into its trial dir, and
everything closed when the trial ends (`reuse_actors=True` runs many trials per process).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import yaml
from ray import tune
from ray.tune.result import DONE

from latent_tune.errors import UserInputError
from latent_tune.training.config import BaseTrainConfig
from latent_tune.training.config_loading import flatten, validate_config
from latent_tune.training.tensorboard import HPARAM_METRIC_PREFIX, write_hparams
from latent_tune.training.trainer import Trainer
from latent_tune.training.trainer_state import StateFormatError
from latent_tune.tune.files import (
    BEST_MODEL_FILE,
    CONFIG_FILE,
    META_FILE,
    RESTORES_FILE,
    TRAINER_FILE,
)
from latent_tune.tune.gpu_share import claim_gpu_share, explain_gpu_oom, peak_gb
from latent_tune.tune.resolve import META_KEY, trial_config
from latent_tune.tune.smoothing import Smoother, rank_metric
from latent_tune.tune.trial_events import TrialEventWriter

__all__ = [
    "CKPT_TMP_PREFIX",
    "SMOOTHER_KEY",
    "run_trial",
    "smooth_report",
    "sweep_orphaned_checkpoint_dirs",
    "weights_digest",
]

# Checkpoint staging dirs in the node's temp dir: `lt-ckpt-<pid>-<random>`, so a later trial can
# tell the ones whose process is gone.
CKPT_TMP_PREFIX = "lt-ckpt-"
ORPHAN_AGE_S = 600.0  # staging lives for seconds; older + dead owner = orphaned

_HPARAM_METRICS = ("crossval_rollout_mse", "best_crossval_rollout_mse", "crossval_intervening_mse")
SMOOTHER_KEY = "smoother"  # the objective smoother's state in the checkpoint's meta.json
OBJECTIVE_TAG = "Objective/"  # raw and smoothed objective side by side in TensorBoard


def weights_digest(state: Mapping[str, Any]) -> str:
    """sha256 over the model tensors of a trainer state (or a bare model state dict)."""
    model = state.get("model", state)
    h = hashlib.sha256()
    for key in sorted(model):
        value = model[key]
        if isinstance(value, torch.Tensor):
            h.update(key.encode())
            h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _scalars(report: Mapping[str, Any]) -> dict[str, float | int | bool]:
    """Only scalars go to Tune (arrays would land in result.json and need Pillow)."""
    out: dict[str, float | int | bool] = {}
    for k, v in report.items():
        if isinstance(v, bool | int | float):
            out[k] = v
        elif isinstance(v, torch.Tensor) and v.numel() == 1:
            out[k] = v.item()
    return out


def _write_checkpoint(
    trainer: Trainer,
    out: Path,
    params: Mapping[str, Any],
    epoch: int,
    trial_id: str,
    *,
    smoother: Smoother,
) -> None:
    trainer.save_checkpoint(out / TRAINER_FILE)
    torch.save(trainer.best_checkpoint(), out / BEST_MODEL_FILE)
    (out / CONFIG_FILE).write_text(trainer.config.to_yaml(), encoding="utf-8")
    state = trainer.state_dict()
    meta = {
        "epoch": epoch,
        "params": dict(params),
        "digest": weights_digest(state),
        "trial_id": trial_id,
        "time": time.time(),
        SMOOTHER_KEY: smoother.state_dict(),
    }
    (out / META_FILE).write_text(json.dumps(meta, default=str), encoding="utf-8")


def _restore(
    trainer: Trainer,
    ckpt: tune.Checkpoint,
    trial_dir: Path,
    params: dict,
    trial_id: str,
    *,
    smoother: Smoother,
) -> None:
    """Load weights/optimizer/RNG from a checkpoint (maybe a PBT donor's) into this trial.

    Its own checkpoint (a retry, a resume) restores exactly; a donor's (a PBT exploit) is
    adopted: fresh data order seeded from this trial and epoch, no inherited best model.
    The objective smoother continues from the checkpoint either way (a clone goes on with the
    donor's smoothed curve, which is what PBT compared when it chose the donor).
    """
    with ckpt.as_directory() as d:
        trainer_path = Path(d) / TRAINER_FILE
        state = torch.load(trainer_path, map_location="cpu", weights_only=True)
        meta_path = Path(d) / META_FILE
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    donor = meta.get("trial_id")
    try:
        if donor is not None and donor != trial_id:
            trainer.adopt(state, key=f"{trial_id}:{state.get('epoch')}")
        else:
            trainer.load_state_dict(state)
    except StateFormatError as e:  # an older latent_tune's checkpoint: one line, no traceback
        raise UserInputError(f"{ckpt.path}/{TRAINER_FILE}", "format", str(e)) from None
    if isinstance(meta.get(SMOOTHER_KEY), dict):
        smoother.load_state_dict(meta[SMOOTHER_KEY])
    record = {
        "time": time.time(),
        "epoch": trainer.epoch,
        "from_trial": meta.get("trial_id"),
        "from_epoch": meta.get("epoch"),
        "checkpoint_digest": meta.get("digest"),
        "loaded_digest": weights_digest(trainer.state_dict()),
        "params": params,
        "learning_rate": trainer.config.training.learning_rate,
        "optimizer_lr": trainer.optimizer.param_groups[0]["lr"],
    }
    with open(trial_dir / RESTORES_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, default=str) + "\n")


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def sweep_orphaned_checkpoint_dirs(
    root: str | os.PathLike | None = None, max_age_s: float = ORPHAN_AGE_S
) -> list[Path]:
    """Remove the checkpoint staging dirs of processes that are gone.

    Why: a trial killed while it reports (a lost node's raylet, an OOM kill, the actors of a
    SIGKILLed driver) cannot clean its own staging dir; at lab scale one holds about 300 MB
    (trainer state with Adam's moments plus the best model). Every trial sweeps its node's temp
    dir when it starts. A dir is only removed when its owner PID is dead and it is older than
    `max_age_s`, so a live trial's dir (or one from another PID namespace, just made) is safe.
    """
    base = Path(root if root is not None else tempfile.gettempdir())
    removed = []
    now = time.time()
    for d in base.glob(f"{CKPT_TMP_PREFIX}*-*"):
        pid = d.name[len(CKPT_TMP_PREFIX) :].split("-", 1)[0]
        with contextlib.suppress(OSError):
            if not pid.isdigit() or _process_alive(int(pid)):
                continue
            if now - d.stat().st_mtime < max_age_s:
                continue
            shutil.rmtree(d)
            removed.append(d)
    return removed


def _hparam_values(params: Mapping[str, Any]) -> dict[str, Any]:
    return {
        k: (v if isinstance(v, bool | int | float | str) else str(v)) for k, v in params.items()
    }


def run_trial(config: Mapping[str, Any], recipe: str | None = None) -> None:
    """Train one trial under Tune: resume if a checkpoint is given, report every epoch."""
    meta = config[META_KEY]
    params = {k: v for k, v in config.items() if k != META_KEY}
    base = yaml.safe_load(meta["base"])
    defaults = flatten(validate_config(base, file=meta["space_file"]))
    cfg = trial_config(
        base,
        params,
        recipe=recipe or meta.get("recipe"),
        file=meta["space_file"],
        defaults=defaults,
    )
    params = {k: flatten(cfg)[k] for k in params}  # the coerced values (ints stay ints)
    sweep_orphaned_checkpoint_dirs()
    torch.set_num_threads(max(1, int(meta.get("cpu", 1))))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    every = max(1, int(meta["checkpoint_every"]))  # PBT/PB2: the perturbation interval
    metric = meta.get("metric", "crossval_rollout_mse")
    smoothing = meta.get("smoothing")
    share = claim_gpu_share(float(meta.get("gpu", 0.0)), device)  # before anything is allocated
    with explain_gpu_oom(share, device):
        _train(cfg, params, device, every=every, metric=metric, smoothing=smoothing)


def smooth_report(metrics: dict[str, Any], metric: str, smoother: Smoother) -> str | None:
    """Add `<metric>_smoothed` to an epoch's report (every epoch); returns that key, or None."""
    if smoother.rule == "none" or metric not in metrics:
        return None
    key = rank_metric(metric, smoother.rule)
    evaluated = bool(metrics.get("evaluated", True))
    metrics[key] = smoother.update(float(metrics[metric]), evaluated)
    return key


def _upload_trial_dir(ctx: Any) -> None:
    """Upload this epoch's event files to the experiment storage before reporting the epoch.

    Why: without a checkpoint, Ray uploads the trial dir only every `sync_period` (minutes) and
    once more when the trial's actor stops. A trial a scheduler stops (ASHA) stays blocked in
    its last report; with reused actors that final upload runs only when the actor is reused
    or cleaned up, and the driver kills actors that take long to stop at the end of the search,
    so the storage copy kept an earlier epoch's scalars (TensorBoard disagreed with
    results.parquet). Uploading before each report keeps storage at least as new as the results.
    """
    ctx.get_storage().persist_artifacts(force=True)


def _train(
    cfg: BaseTrainConfig,
    params: dict[str, Any],
    device: torch.device,
    *,
    every: int,
    metric: str,
    smoothing: Mapping[str, Any] | None = None,
) -> None:
    """The epoch loop: one report per epoch, a checkpoint every `every` epochs and at the end."""
    ctx = tune.get_context()
    trial_dir = Path(ctx.get_trial_dir())
    trial_id = ctx.get_trial_id()
    trainer = Trainer(cfg, trial_dir, device)
    writer = TrialEventWriter(trial_dir, filename_suffix=".hparams")
    smoother = Smoother.from_spec(smoothing)
    try:
        ckpt = tune.get_checkpoint()
        if ckpt is not None:
            _restore(trainer, ckpt, trial_dir, params, trial_id, smoother=smoother)
        ranked = rank_metric(metric, smoother.rule)
        metric_names = dict.fromkeys((metric, ranked, *_HPARAM_METRICS))
        write_hparams(writer, _hparam_values(params), dict.fromkeys(metric_names, math.nan))
        while not trainer.done:
            report = trainer.train_epoch()
            metrics = _scalars(report)
            epoch = int(metrics.get("epoch", trainer.epoch))
            metrics["epoch"] = epoch
            smoothed = smooth_report(metrics, metric, smoother)
            if smoothed is not None:
                for name in (metric, smoothed):
                    if math.isfinite(float(metrics[name])):
                        writer.add_scalar(OBJECTIVE_TAG + name, float(metrics[name]), epoch)
            peak = peak_gb(device)
            if peak is not None:
                metrics["gpu_peak_gb"] = peak  # what this trial needs of a GPU, measured
            for name in metric_names:
                if name in metrics and math.isfinite(float(metrics[name])):
                    writer.add_scalar(HPARAM_METRIC_PREFIX + name, float(metrics[name]), epoch)
            writer.flush()
            if trainer.done:
                # Tune then stops the trial on this result: no scheduler sees it, so PBT
                # cannot pause or exploit a finished trial (that would pair an explored
                # config with the old weights' score and leave an unregistered checkpoint)
                metrics[DONE] = True
            if trainer.done or epoch % every == 0:
                with tempfile.TemporaryDirectory(prefix=f"{CKPT_TMP_PREFIX}{os.getpid()}-") as tmp:
                    _write_checkpoint(
                        trainer, Path(tmp), params, epoch, trial_id, smoother=smoother
                    )
                    # Ray uploads the trial dir with a checkpoint (sync_artifacts_on_checkpoint)
                    tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))
            else:
                _upload_trial_dir(ctx)
                tune.report(metrics)
    finally:
        writer.close()
        trainer.close()
