"""Service benchmarks, JSON on stdout.

1. overhead: the same training run (tiny config, E epochs) as a bare Trainer loop vs inside the
   Tune trainable through `latent_tune.search` (one trial): wall-time ratio.
2. efficiency: ASHA + random sampling vs random sampling (FIFO) at about the same epoch budget,
   over several seeds: best objective reached within the budget.

Usage: python bench/bench_service.py [--epochs 4] [--seeds 3] [--samples 6]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import ray
import torch
import yaml

from latent_tune.search import main as search_main
from latent_tune.training.config_loading import apply_overrides, validate_config
from latent_tune.training.trainer import Trainer
from latent_tune.tune.cli import ensure_loopback_switch, start_local_ray

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "training.chunks_per_epoch": 1,
    "training.batches_per_chunk": 30,
    "evaluation.rollout_steps": 200,
    "evaluation.starts": 2,
    "evaluation.figures_every": 0,
}


def _space(tmp: Path, name: str, epochs: int, **kw) -> Path:
    d = {
        "name": name,
        "trainable": "eed_staggered",
        "base": "eed_staggered_tiny.yaml",
        "overrides": {**TINY, "training.epochs": epochs},
        "resources": {"cpu": 1},
        "stopping": {"diverged_patience": 0},
        **kw,
    }
    p = tmp / f"{name}.yaml"
    p.write_text(yaml.safe_dump(d))
    return p


def _search(argv: list[str]) -> None:
    with contextlib.redirect_stdout(io.StringIO()):
        rc = search_main(argv)
    if rc != 0:
        raise SystemExit(f"search failed: {argv}")


def overhead(tmp: Path, epochs: int) -> dict:
    base = yaml.safe_load((ROOT / "trainables" / "eed_staggered_tiny.yaml").read_text())
    cfg = validate_config(apply_overrides(base, {**TINY, "training.epochs": epochs}))
    torch.set_num_threads(1)  # the trial gets resources.cpu = 1 and sets the same
    t0 = time.perf_counter()
    tr = Trainer(cfg, None, "cpu")
    while not tr.done:
        tr.train_epoch()
    tr.close()
    bare = time.perf_counter() - t0
    lr = cfg.training.learning_rate
    space = _space(
        tmp,
        "overhead",
        epochs,
        scheduler={"type": "fifo"},
        searcher={"type": "random", "seed": 0},
        space={"training.learning_rate": {"choice": [lr]}},
        trials={"num_samples": 1},
    )
    t0 = time.perf_counter()
    _search([str(space), "--storage", str(tmp / "res"), "--name", "overhead"])
    wall = time.perf_counter() - t0
    res = pd.read_parquet(tmp / "res" / "overhead" / "results.parquet")
    inside = float(res["time_total_s"].max())
    return {
        "epochs": epochs,
        "bare_loop_s": round(bare, 3),
        "tune_trial_s": round(inside, 3),
        "search_wall_s": round(wall, 3),
        "trial_over_bare": round(inside / bare, 3),
        "wall_over_bare": round(wall / bare, 3),
    }


def _best_within(exp: Path, budget: int, metric: str = "crossval_rollout_mse") -> float:
    r = pd.read_parquet(exp / "results.parquet").sort_values("timestamp")
    r = r[~r["penalised"].astype(bool)] if "penalised" in r else r
    r = r.head(budget)
    return float(r[metric].min()) if len(r) else float("nan")


def efficiency(tmp: Path, epochs: int, seeds: int, samples: int) -> dict:
    space_def = {
        "training.learning_rate": {"loguniform": [1e-4, 1e-2]},
        "training.evolve_multiple_steps": {"randint": [2, 5]},
    }
    runs = []
    for seed in range(seeds):
        rnd = _space(
            tmp,
            f"rnd{seed}",
            epochs,
            scheduler={"type": "fifo"},
            searcher={"type": "random", "seed": seed},
            space=space_def,
            trials={"num_samples": samples, "max_concurrent": 2},
        )
        _search([str(rnd), "--storage", str(tmp / "res"), "--name", f"rnd{seed}"])
        budget = len(pd.read_parquet(tmp / "res" / f"rnd{seed}" / "results.parquet"))
        asha = _space(
            tmp,
            f"asha{seed}",
            epochs,
            scheduler={"type": "asha", "grace_period": 1, "reduction_factor": 2},
            searcher={"type": "random", "seed": seed},
            space=space_def,
            trials={"num_samples": samples * 2, "max_concurrent": 2},
        )
        _search([str(asha), "--storage", str(tmp / "res"), "--name", f"asha{seed}"])
        asha_rows = len(pd.read_parquet(tmp / "res" / f"asha{seed}" / "results.parquet"))
        b = min(budget, asha_rows)
        runs.append(
            {
                "seed": seed,
                "epoch_budget": b,
                "random_epochs": budget,
                "asha_epochs": asha_rows,
                "random_best": _best_within(tmp / "res" / f"rnd{seed}", b),
                "asha_best": _best_within(tmp / "res" / f"asha{seed}", b),
            }
        )
    wins = sum(r["asha_best"] < r["random_best"] for r in runs)
    return {"runs": runs, "asha_wins": wins, "seeds": seeds}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--skip-efficiency", action="store_true")
    args = p.parse_args()
    ensure_loopback_switch()  # the local Ray below listens on 127.0.0.1 only
    os.environ.update(
        RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", LATENT_TUNE_DASHBOARD="0"
    )
    start_local_ray(num_cpus=2, include_dashboard=False)  # the search's loopback-only start
    try:
        with tempfile.TemporaryDirectory(prefix="lt-bench-") as name:
            tmp = Path(name)
            out = {"overhead": overhead(tmp, args.epochs)}
            if not args.skip_efficiency:
                out["efficiency"] = efficiency(tmp, args.epochs, args.seeds, args.samples)
    finally:
        ray.shutdown()
    json.dump(out, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
