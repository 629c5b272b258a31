"""Train one EED model without Ray: `python -m latent_tune.train CONFIG.yaml [--set k=v]`.

Why a standalone command: a person checks a recipe (or a search's best config) on one machine
and gets the same run directory a trial writes: resolved config, phases, TensorBoard events,
latest and best checkpoints, final metrics. Bad input fails before anything is written, as one
line `<file>: <key>: <problem>` with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from latent_tune.atomic import atomic_write_text
from latent_tune.bundled import bundled_file
from latent_tune.errors import CliParser, UserInputError, run_cli
from latent_tune.training.checkpoint import save_state
from latent_tune.training.config import BaseTrainConfig
from latent_tune.training.config_loading import flatten, load_config
from latent_tune.training.trainer import Trainer

__all__ = ["main", "resolve_config_path", "run_training"]

HPARAM_METRICS = ("crossval_rollout_mse", "best_crossval_rollout_mse", "crossval_intervening_mse")


def _parser() -> argparse.ArgumentParser:
    p = CliParser(
        prog="python -m latent_tune.train",
        description="Train one EED model and write a run directory (no Ray).",
    )
    p.add_argument("config", help="training config YAML (a path, or a bundled name in trainables/)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config leaf by dotted path, e.g. --set training.epochs=3 (repeatable)",
    )
    p.add_argument("--out", type=Path, default=None, help="run dir (default runs/<stem>-<time>)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    return p


def resolve_config_path(name: str) -> Path:
    """A config path as given, else the bundled file of that name in the trainables package
    (found wherever it is installed, not relative to the working directory)."""
    path = Path(name)
    if path.exists():
        return path
    bundled = bundled_file("trainables", name)
    return bundled if bundled is not None else path  # load_config reports it as unreadable


def _default_run_dir(config_path: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{config_path.stem}-{stamp}"


def _json_safe(value: Any) -> Any:
    """NaN/inf are not JSON: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    return value


def _epoch_line(r: dict[str, Any], epochs: int) -> str:
    mark = "*" if r.get("evaluated") else " "
    div = " DIVERGED" if r.get("diverged") else ""
    base = f"const {r['constant_rollout_mse']:.4g}"
    if "linear_rollout_mse" in r:
        base += f", linear {r['linear_rollout_mse']:.4g}"
    return (
        f"epoch {r['epoch']:>3}/{epochs} loss {r['train_loss']:.4g} "
        f"cv_mse{mark}{r['crossval_rollout_mse']:.4g} ({base}) "
        f"best {r['best_crossval_rollout_mse']:.4g}@{r['best_epoch']} "
        f"{r['epoch_duration']:.1f}s{div}"
    )


HISTORY_KEYS = (
    "epoch",
    "crossval_rollout_mse",
    "penalised",
    "diverged",
    "evaluated",
    "constant_rollout_mse",
    "linear_rollout_mse",
    "best_crossval_rollout_mse",
    "best_epoch",
    "train_loss",
    "epoch_duration",
)


def _append_history(path: Path, report: dict[str, Any]) -> None:
    """One JSON line per epoch, flushed at once: a run's trajectory survives a crash or a kill
    (the stability bench reads the per-epoch objective from it)."""
    row = {k: report[k] for k in HISTORY_KEYS if k in report}
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(_json_safe(row)) + "\n")
        fh.flush()


def _final_metrics(trainer: Trainer, report: dict[str, Any], wall: float) -> dict[str, Any]:
    out: dict[str, Any] = {
        "crossval_rollout_mse": report["crossval_rollout_mse"],
        "constant_rollout_mse": report["constant_rollout_mse"],
        "crossval_intervening_mse": report["crossval_intervening_mse"],
        "best_crossval_rollout_mse": report["best_crossval_rollout_mse"],
        "best_epoch": report["best_epoch"],
        "diverged": report["diverged"],
        "penalised": report["penalised"],
        "final_train_loss": report["train_loss"],
        "epochs": report["epoch"],
        "optimizer_steps": report["optimizer_steps"],
        "total_training_duration": report["total_elapsed"],
        "wall_duration": wall,
        "device": str(trainer.device),
        "datasets": {k: dict(v) for k, v in trainer.last_dataset_metrics.items()},
    }
    if "linear_rollout_mse" in report:
        out["linear_rollout_mse"] = report["linear_rollout_mse"]
    return out


def run_training(
    config: BaseTrainConfig,
    run_dir: Path,
    *,
    source: Path | None = None,
    device: str | None = None,
    echo: bool = True,
) -> dict[str, Any]:
    """Train to the end, writing the run dir; returns the final metrics."""
    t_start = time.perf_counter()
    trainer = Trainer(config, run_dir, device, source=source)  # bad data fails before any write
    if echo:
        print(
            f"training {source or config.recipe} on {trainer.data.suite_path} "
            f"({trainer.data.n_neurons} neurons, {trainer.device}) -> run dir {run_dir}",
            flush=True,
        )
    try:
        atomic_write_text(run_dir / "config.yaml", config.to_yaml())
        save_state(
            {
                "phases": trainer.phases.clone(),
                "mode": config.acquisition.mode,
                "tu": int(config.training.time_units),
                "seed": int(config.acquisition.seed),
            },
            run_dir / "neuron_phases.pt",
        )
        report: dict[str, Any] = {}
        while not trainer.done:
            report = trainer.train_epoch()
            trainer.save_checkpoint(run_dir / "checkpoints" / "latest.pt")
            _append_history(run_dir / "history.jsonl", report)
            if echo:
                print(_epoch_line(report, config.training.epochs), flush=True)
        metrics = _final_metrics(trainer, report, time.perf_counter() - t_start)
        trainer.tb.hparams(
            flatten(config),
            {k: float(metrics[k]) for k in HPARAM_METRICS}
            | {"final_train_loss": metrics["final_train_loss"]},
            step=trainer.epoch,
        )
        atomic_write_text(run_dir / "final_metrics.yaml", yaml.safe_dump(metrics, sort_keys=False))
        atomic_write_text(
            run_dir / "final_metrics.json", json.dumps(_json_safe(metrics), indent=2) + "\n"
        )
        return metrics
    finally:
        trainer.close()


def _main(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    config_path = resolve_config_path(args.config)
    config = load_config(config_path, args.overrides)
    run_dir = args.out if args.out is not None else _default_run_dir(config_path)
    if (run_dir / "config.yaml").exists():
        raise UserInputError(None, "--out", f"{run_dir} already holds a run; choose another dir")
    metrics = run_training(config, run_dir, source=config_path, device=args.device)
    linear = metrics.get("linear_rollout_mse")
    linear_text = "" if linear is None else f", linear baseline {linear:.4g}"
    print(
        f"final crossval_rollout_mse {metrics['crossval_rollout_mse']:.4g} "
        f"(constant baseline {metrics['constant_rollout_mse']:.4g}{linear_text}), "
        f"best {metrics['best_crossval_rollout_mse']:.4g} at epoch {metrics['best_epoch']}"
    )
    print(f"run dir: {run_dir}")
    print(f"view it: tensorboard --logdir {run_dir} --host 127.0.0.1")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Command entry point (tests call it in-process)."""
    return run_cli(lambda: _main(argv))


if __name__ == "__main__":
    sys.exit(main())
