"""Device memory of one real trial: the Trainer itself, one short epoch on a real suite; JSON.

    python bench/bench_trial_memory.py [--preset lab|demo|tiny] [--device cpu|cuda]
        [--suite DIR] [--batches 3] [--set key=value ...] [--out F]

Why: `bench_memory.py` adds up a lab trial's parts (exact resident bytes plus transients
measured on random tensors); this checks that sum against the real thing. It runs the bundled
config of the preset through `Trainer.train_epoch()` (one chunk, a few batches, then the full
evaluation of the validation and cross-validation sets) and reads the peak. Without `--suite` it
simulates the preset's suite with a training set just long enough for one training chunk plus
the validation split (the lab preset: about 87,000 steps, 14 GB on disk, a few minutes), into a
temporary dir. On CUDA the peak is the caching allocator's (`max_memory_reserved`, what the
process holds; `max_memory_allocated` beside it); on a CPU it is the peak RSS, which also counts
the memory-mapped data pages and the runtime, so it is no device-memory figure (a smoke run).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from bench_memory import CUDA_CONTEXT_GB, GB, GPU_GB, peak_bytes, reset_peak
from bench_training import bench_device, device_info, emit_json

from latent_tune.data.network import PRESETS
from latent_tune.data.simulate import simulate_suite
from latent_tune.training.config_loading import load_config
from latent_tune.training.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {
    "lab": REPO / "trainables" / "eed_staggered.yaml",
    "demo": REPO / "trainables" / "eed_staggered_demo.yaml",
    "tiny": REPO / "trainables" / "eed_staggered_tiny.yaml",
}


def short_suite(out: Path, preset: str, chunk_steps: int) -> dict[str, float]:
    """Simulate the preset's suite; the lab's with a training set of one chunk plus the
    validation split (the smaller presets are simulated whole: they are small)."""
    p = PRESETS[preset]
    over = {"train_steps": p.burn_in + chunk_steps + p.val_steps + 1024} if preset == "lab" else {}
    t0 = time.perf_counter()
    simulate_suite(out, preset=preset, seed=0, overrides=over)
    seconds = time.perf_counter() - t0
    return {"train_steps": over.get("train_steps", p.train_steps), "simulate_s": seconds}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="lab", choices=sorted(CONFIGS))
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--suite", type=Path, default=None, help="an existing suite of the preset")
    p.add_argument("--batches", type=int, default=3, help="training batches before evaluation")
    p.add_argument("--set", dest="sets", action="append", default=[], help="config override")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    device = bench_device(args.device, args.threads)
    base = load_config(CONFIGS[args.preset], args.sets)
    with tempfile.TemporaryDirectory(prefix="lt-trial-mem-") as tmp:
        suite, made = args.suite, {}
        if suite is None:
            suite = Path(tmp) / "suite"
            print(f"simulating a short {args.preset} suite ...", file=sys.stderr, flush=True)
            made = short_suite(suite, args.preset, base.training.chunk_steps)
        over = [
            *args.sets,
            f"data.suite={suite}",
            "training.epochs=1",
            "training.chunks_per_epoch=1",
            f"training.batches_per_chunk={args.batches}",
            "evaluation.figures_every=0",
        ]
        cfg = load_config(CONFIGS[args.preset], over)
        print("one epoch ...", file=sys.stderr, flush=True)
        base_bytes = reset_peak(device)
        t0 = time.perf_counter()
        trainer = Trainer(cfg, None, device)
        report = trainer.train_epoch()
        seconds = time.perf_counter() - t0
        peak = peak_bytes(device)
        measured: dict[str, Any] = {"peak_gb": round(peak / GB, 3)}
        if device.type == "cuda":
            reserved = torch.cuda.max_memory_reserved(device)
            measured = {
                "peak_allocated_gb": round(peak / GB, 3),
                "peak_reserved_gb": round(reserved / GB, 3),
                f"trials_per_{GPU_GB:.0f}gb_gpu": int(
                    GPU_GB * GB // (reserved + CUDA_CONTEXT_GB * GB)
                ),
                "note": f"reserved = what the process holds; plus {CUDA_CONTEXT_GB} GB of context",
            }
        else:
            measured["before_gb"] = round(base_bytes / GB, 3)
            measured["note"] = "peak RSS: includes mapped data pages and the runtime"
        trainer.close()
    t = cfg.training
    result = {
        "bench": "trial_memory",
        **device_info(device),
        "preset": args.preset,
        "suite": str(args.suite) if args.suite else "simulated (temporary)",
        **({"simulated": {k: round(v, 1) for k, v in made.items()}} if made else {}),
        "config": {
            "batch_size": t.batch_size,
            "time_units": t.time_units,
            "evolve_multiple_steps": t.evolve_multiple_steps,
            "chunk_steps": t.chunk_steps,
            "masked_decode": t.masked_decode,
            "eval_starts": cfg.evaluation.starts,
            "eval_rollout_steps": cfg.evaluation.rollout_steps,
            "overrides": args.sets,
        },
        "epoch_s": round(seconds, 1),
        "crossval_rollout_mse": float(report["crossval_rollout_mse"]),
        "measured": measured,
    }
    emit_json(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
