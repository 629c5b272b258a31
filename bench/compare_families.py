"""EED vs LFADS on the demo suite at equal budget, each search verified with new seeds.

    python bench/compare_families.py run CELL [--storage DIR] [--epochs E]   # one cell
    python bench/compare_families.py table [--storage DIR] [--previous FILE.json] [--out FILE.json]

Why: the lab's question is not only which EED recipe is best but whether EED recovers the
dynamics from staggered data better than the field's standard latent-dynamics model. Each cell
is one search of the quick spaces (the same 8 trials x 6 epochs x 200 optimizer steps, ASHA +
Optuna), followed by `verify` of its top configuration and the base recipe with 3 new training
seeds. The table reads the verification runs only: a search's own best epoch is a selected
(lucky) number, the verified mean is what a user gets.

Equal information: EED's start frame is built by interpolating the staggered observations; the
default (linear) looks up to tu - 1 steps past the start, which LFADS never does. Every staggered
EED cell here uses `acquisition.interpolation: hold` (causal), so both families see only data
up to the start. At tu = 1 (`time_aligned`) every neuron is seen every step and there is nothing
to interpolate.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from bench_training import emit_json

from latent_tune.errors import UserInputError, run_cli
from latent_tune.training.config_loading import load_config
from latent_tune.training.trainer import Trainer
from latent_tune.tune.verify_stats import spread

REPO = Path(__file__).resolve().parents[1]
OBJECTIVE = "crossval_rollout_mse"
VERIFY_SEEDS = 3  # search --verify K uses 3 seeds


@dataclass(frozen=True)
class Cell:
    family: str
    recipe: str
    tu: int
    space: str
    sets: tuple[str, ...]


_HOLD = "overrides.acquisition.interpolation=hold"
# Pinned off, as in the demo recipe today and as for LFADS: a later change of the demo's
# stabilising levers must not change what an EED cell measures (the tu 20 cells ran without).
_NO_LEVERS = (
    "overrides.training.ema_decay=0.0",
    "overrides.training.lr_schedule.type=constant",
    "overrides.training.lr_schedule.warmup_epochs=0",
)
CELLS = {
    "eed_tu10": Cell(
        "EED", "staggered", 10, "stag_quick.yaml",
        ("space.training.time_units={choice: [10]}", _HOLD, *_NO_LEVERS),
    ),
    "eed_tu20": Cell(
        "EED", "staggered", 20, "stag_quick.yaml",
        ("space.training.time_units={choice: [20]}", _HOLD, *_NO_LEVERS),
    ),
    "lfads_tu10": Cell(
        "LFADS", "lfads", 10, "lfads_quick.yaml", ()
    ),
    "lfads_tu20": Cell(
        "LFADS", "lfads", 20, "lfads_quick.yaml", ()
    ),
    "eed_aligned_tu1": Cell(
        "EED", "aligned", 1, "stag_quick.yaml",
        ("trainable=eed_aligned", "base=eed_aligned_demo.yaml",
         "space.training.time_units={choice: [1]}",
         # the same training horizons in steps as the staggered cells (tu x ems: 20-100)
         "space.training.evolve_multiple_steps={randint: [20, 101]}",
         "overrides.training.evolve_multiple_steps=60", *_NO_LEVERS),
    ),
}  # fmt: skip


def search_command(name: str, storage: Path, epochs: int | None) -> list[str]:
    """The documented command of one cell: a search, then `--verify 1` (top 1 + base, 3 seeds)."""
    cell = CELLS[name]
    cmd = [sys.executable, "-m", "latent_tune.search", f"search_spaces/{cell.space}"]
    cmd += ["--storage", str(storage), "--name", name, "--verify", "1"]
    # The base recipe (verify's reference) runs at the cell's tu too, not the base config's.
    sets = [*cell.sets, f"overrides.training.time_units={cell.tu}", f"name={name}"]
    if epochs is not None:
        sets.append(f"overrides.training.epochs={epochs}")
    for s in sets:
        cmd += ["--set", s]
    return cmd


def _last_results(trial_dir: Path) -> dict[str, Any] | None:
    path = trial_dir / "result.json"
    if not path.is_file():
        return None
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    return json.loads(lines[-1]) if lines else None


def verify_runs(exp: Path) -> pd.DataFrame:
    """One row per verification run: its configuration, seed and last reported metrics."""
    rows = []
    for params in sorted((exp / "verify").glob("*/params.json")):
        cfg = json.loads(params.read_text(encoding="utf-8"))
        last = _last_results(params.parent)
        if last is None:
            continue
        seed = cfg.get("training.seed")
        rows.append({"config_id": str(cfg.get("config_id")), "seed": seed, **last})
    return pd.DataFrame(rows)


def _mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """(mean, sd) of the finite values: the verification's own spread."""
    mean, sd, _, _ = spread(values)
    return mean, sd


def param_count(config_path: Path) -> int:
    """Trainable parameters of the model a config builds (data shapes from its own suite)."""
    torch.manual_seed(0)
    trainer = Trainer(load_config(config_path), device=torch.device("cpu"))
    return int(sum(p.numel() for p in trainer.model.parameters() if p.requires_grad))


def cell_summary(name: str, storage: Path) -> dict[str, Any]:
    """The verified winner of one cell, its spread over seeds and the baselines on its windows."""
    cell, exp = CELLS[name], storage / name
    verified = exp / "verified.parquet"
    if not verified.is_file():
        raise UserInputError(verified, None, f"cell {name} has no verification yet (run it first)")
    table = pd.read_parquet(verified)
    win = table.iloc[0]
    tu = win.get("training.time_units", cell.tu)
    if tu is not None and not pd.isna(tu) and int(tu) != cell.tu:
        raise UserInputError(
            verified, "training.time_units", f"cell {name}'s verified winner runs at tu {tu}"
        )
    runs = verify_runs(exp)
    mine = runs[runs["config_id"] == str(win["trial_id"])]

    def stat(col: str) -> list[float]:
        return [float(x) for x in mine[col]] if col in mine else []

    final, inter = _mean_sd(stat(OBJECTIVE)), _mean_sd(stat("crossval_intervening_mse"))
    test = _mean_sd(stat(f"test_{OBJECTIVE}"))
    return {
        "cell": name, "family": cell.family, "recipe": cell.recipe, "tu": cell.tu,
        "winner": str(win["trial_id"]), "n": int(win["n"]),
        "seeds": [int(s) for s in mine["seed"]],
        "best_mean": float(win["best_mean"]), "best_sd": float(win["best_sd"]),
        "final_mean": final[0], "final_sd": final[1],
        "test_final_mean": test[0], "test_final_sd": test[1],
        "intervening_mean": inter[0] if cell.tu > 1 else math.nan,
        "intervening_sd": inter[1] if cell.tu > 1 else math.nan,
        "constant": float(np.nanmean(stat("constant_rollout_mse"))),
        "linear": float(np.nanmean(stat("linear_rollout_mse"))),
        "search_value": float(win.get("search_value", math.nan)),
        "params": param_count(exp / "best" / "config.yaml"),
        "s_per_epoch": float(np.nanmean(stat("epoch_duration"))),
        "search_table": str(verified.relative_to(storage)),
    }  # fmt: skip


def _pm(m: float, s: float) -> str:
    if not math.isfinite(m):
        return "n/a"
    return f"{m:.4f} ± {s:.4f}" if math.isfinite(s) else f"{m:.4f}"


def markdown(rows: list[dict[str, Any]]) -> str:
    """The README table: one line per cell, verified values over the winner's seeds."""
    head = (
        "| model | tu | best epoch | final epoch | final, test third | intervening | const | "
        "linear | params | s/epoch |\n|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in rows:
        label = f"{r['family']} {r['recipe']}" if r["family"] == "EED" else r["family"]
        lines.append(
            f"| {label} | {r['tu']} | {_pm(r['best_mean'], r['best_sd'])} | "
            f"{_pm(r['final_mean'], r['final_sd'])} | "
            f"{_pm(r['test_final_mean'], r['test_final_sd'])} | "
            f"{_pm(r['intervening_mean'], r['intervening_sd'])} | {r['constant']:.4f} | "
            f"{r['linear']:.4f} | {r['params']:,} | {r['s_per_epoch']:.0f} |"
        )
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    r = sub.add_parser("run", help="search one cell and verify its top configuration")
    r.add_argument("cell", choices=sorted(CELLS))
    r.add_argument("--storage", type=Path, default=Path("ray_results/families"))
    r.add_argument("--epochs", type=int, default=None, help="epochs per trial (default: 6)")
    t = sub.add_parser("table", help="gather the verified cells into JSON and a markdown table")
    t.add_argument("--storage", type=Path, default=Path("ray_results/families"))
    t.add_argument(
        "--previous",
        type=Path,
        default=None,
        help="a table JSON of earlier cells: those not in --storage are carried over as they are",
    )
    t.add_argument("--out", type=Path, default=None)
    return p


def previous_cells(path: Path | None, present: set[str]) -> list[dict[str, Any]]:
    """The cells of an earlier table that this storage does not hold (run on another machine)."""
    if path is None:
        return []
    try:
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserInputError(path, "cells", f"not a family table: {exc}") from None
    out = []
    for row in cells:
        if not isinstance(row, dict) or row.get("cell") not in CELLS:
            raise UserInputError(path, "cells", f"unknown cell {row!r:.60}")
        if row["cell"] not in present:
            out.append({**row, "carried_from": str(path)})
    return out


def _main(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    storage = args.storage.resolve()
    if args.what == "run":
        cmd = search_command(args.cell, storage, args.epochs)
        print("$", " ".join(cmd), flush=True)
        return subprocess.run(cmd, cwd=REPO, check=False).returncode
    here = {n for n in CELLS if (storage / n / "verified.parquet").is_file()}
    carried = {r["cell"]: r for r in previous_cells(args.previous, here)}
    rows = [
        cell_summary(n, storage) if n in here else carried[n]
        for n in CELLS
        if n in here | set(carried)
    ]
    if not rows:
        raise UserInputError(storage, None, "no verified cell here (run `compare_families.py run`)")
    emit_json({"objective": OBJECTIVE, "seeds_per_config": VERIFY_SEEDS, "cells": rows}, args.out)
    print(markdown(rows))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(lambda: _main(argv))


if __name__ == "__main__":
    sys.exit(main())
