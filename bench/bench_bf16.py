"""bf16 autocast's effect on the objective: the same seeded training run in float32 and in bf16.

    python bench/bench_bf16.py [--device cpu|cuda] [--config demo|tiny] [--epochs 6]
        [--seeds 0,1,2] [--threads N] [--set KEY=VALUE ...] [--out F]

Why: mixed precision is only worth offering if it does not move ``crossval_rollout_mse`` by
more than the search can resolve. For each seed this trains the bundled config twice from the
same initialisation and data, float32 and bf16 (``training.bf16`` and ``evaluation.bf16``), and
also scores the float32-trained model with a bf16 rollout (the evaluation's own share of the
difference). The yardstick is how far two float32 runs that differ only in their seed lie
apart: training is chaotic enough that any perturbation changes the trajectory, so a bf16
difference of the same size as the seed-to-seed one cannot change which recipe a search picks
any more than re-seeding does. bf16 autocast acts on CPU too
(``latent_tune/training/precision.py``), natively on CPUs with AVX512-BF16 or AMX. On CUDA the
float32 runs use TF32 matmuls where ``training.tf32`` is on (the default), as a real trial does.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from bench_training import CONFIGS as SIZE_CONFIGS
from bench_training import bench_device, device_info, emit_json

from latent_tune.training.config_loading import load_config
from latent_tune.training.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {**SIZE_CONFIGS, "tiny": REPO / "trainables" / "eed_staggered_tiny.yaml"}
OBJECTIVE = "crossval_rollout_mse"


def train(config: Path, overrides: list[str], device: Any) -> tuple[Trainer, dict[str, Any]]:
    """One run to its last epoch: per-epoch objective and seconds, final and best objective."""
    tr = Trainer(load_config(config, overrides), None, device)
    curve, seconds = [], []
    while not tr.done:
        t0 = time.perf_counter()
        rep = tr.train_epoch()
        seconds.append(time.perf_counter() - t0)
        curve.append(float(rep[OBJECTIVE]))
    run = {
        "objective_by_epoch": [round(v, 6) for v in curve],
        "final": curve[-1],
        "best": min(curve),
        "epoch_s": round(float(np.mean(seconds)), 3),
    }
    return tr, run


def rel(a: float, b: float) -> float:
    return round(a / b - 1.0, 5)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--config", default="demo", choices=sorted(CONFIGS))
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--seeds", default="0,1,2", help="comma list of training seeds")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="config override of every run (e.g. a smaller run for a smoke test)",
    )  # fmt: skip
    p.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    device = bench_device(args.device, args.threads)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    base = [f"training.epochs={args.epochs}", "evaluation.figures_every=0", *args.overrides]
    runs = []
    for seed in seeds:
        over = [*base, f"training.seed={seed}"]
        print(f"[seed {seed}] float32 ...", file=sys.stderr, flush=True)
        tr, fp32 = train(CONFIGS[args.config], over, device)
        tr.config.evaluation.bf16 = True  # the float32-trained model, scored by a bf16 rollout
        fp32["final_scored_bf16"] = float(tr.objective(tr.evaluate())[OBJECTIVE])
        tr.close()
        print(f"[seed {seed}] bf16 ...", file=sys.stderr, flush=True)
        tr, bf16 = train(
            CONFIGS[args.config], [*over, "training.bf16=true", "evaluation.bf16=true"], device
        )
        tr.close()
        runs.append(
            {
                "seed": seed,
                "float32": fp32,
                "bf16": bf16,
                "final_rel_diff": rel(bf16["final"], fp32["final"]),
                "best_rel_diff": rel(bf16["best"], fp32["best"]),
                "eval_only_rel_diff": rel(fp32["final_scored_bf16"], fp32["final"]),
            }
        )
    summary: dict[str, float] = {}
    for kind in ("final", "best"):
        fp32 = [r["float32"][kind] for r in runs]
        summary[f"float32_{kind}_mean"] = round(float(np.mean(fp32)), 6)
        summary[f"bf16_{kind}_mean"] = round(float(np.mean([r["bf16"][kind] for r in runs])), 6)
        summary[f"bf16_{kind}_rel_diff_mean_abs"] = round(
            float(np.mean([abs(r[f"{kind}_rel_diff"]) for r in runs])), 5
        )
        # The yardstick: how far two float32 runs that differ only in their seed lie apart.
        pairs = [abs(rel(a, b)) for i, a in enumerate(fp32) for b in fp32[i + 1 :]]
        summary[f"float32_seed_pair_{kind}_rel_diff_mean_abs"] = (
            round(float(np.mean(pairs)), 5) if pairs else math.nan
        )
    summary["bf16_eval_only_rel_diff_mean_abs"] = round(
        float(np.mean([abs(r["eval_only_rel_diff"]) for r in runs])), 5
    )
    summary["epoch_time_ratio_bf16_over_float32"] = round(
        float(np.mean([r["bf16"]["epoch_s"] / r["float32"]["epoch_s"] for r in runs])), 3
    )
    result = {
        "bench": "bf16_objective",
        **device_info(device),
        "config": args.config,
        "epochs": args.epochs,
        "overrides": args.overrides,
        "summary": summary,
        "runs": runs,
    }
    emit_json(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
