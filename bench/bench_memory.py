"""Device memory of one lab-scale trial, and how many such trials one GPU holds; prints JSON.

    python bench/bench_memory.py [--device cpu|cuda] [--out F] [--rollout 200] [--tu 20 --ems 5]

Why: Ray's fractional `gpu` packs trials on a GPU only as a scheduling token; the search
spaces' default `resources.gpu` must follow from what a lab trial really holds. A trial keeps
on its device: the model state (weights, gradients, Adam's two moments: 16 bytes/parameter),
one training chunk (activity and stimulus, `chunk_steps x (N + S)` floats: batches interpolate
their own start frames), the validation and cross-validation sets (the lab preset's ranges,
with their interpolation: `rows x (2N + S)`), and on top of that the transient of a train step
(masked and dense decoding) or of an evaluation. The resident parts are exact byte counts; the
transients are measured, each in a fresh process: on CUDA with `max_memory_allocated`, on a
CPU from the kernel's peak-RSS counter (reset through /proc/self/clear_refs) with glibc's mmap
threshold fixed so freed tensors leave RSS. On a CPU the CUDA context itself (about 0.5 GB) is
an assumption, stated as such.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from bench_training import LAB_SHAPE, device_info, emit_json, random_data

from latent_tune.data.interpolation import interpolate_rows
from latent_tune.data.network import PRESETS
from latent_tune.data.stimulus import FAMILIES
from latent_tune.model.eed import EEDModel
from latent_tune.training.config_loading import load_config
from latent_tune.training.eed_config import TrainConfig
from latent_tune.training.evaluate import evaluate_dataset
from latent_tune.training.losses import staggered_loss
from latent_tune.training.masked_decode import phase_classes

REPO = Path(__file__).resolve().parents[1]
LAB_CONFIG = REPO / "trainables" / "eed_staggered.yaml"
GB = 1e9
CUDA_CONTEXT_GB = 0.5  # assumed on a CPU; not counted by max_memory_allocated on CUDA either
GPU_GB = 80.0  # the cluster's GPUs (A100 / H100 80 GB)
_CHILD_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}  # big frees go back to the OS at once


def resident_bytes(cfg: TrainConfig, n: int, s: int, n_params: int) -> dict[str, int]:
    """What a lab trial holds on its device for its whole life, in bytes."""
    lab = PRESETS["lab"]
    eval_row = (2 * n + s) * 4  # activity + its interpolation + stimulus, float32
    train_row = (n + s) * 4  # batches interpolate their own start frames
    val_rows = lab.val_steps
    cv_rows = (lab.crossval_steps - lab.burn_in) * (len(FAMILIES) - 1)
    return {
        "model_state": n_params * 16,
        "train_chunk": cfg.training.chunk_steps * train_row,
        "eval_sets": (val_rows + cv_rows) * eval_row,
    }


def _rss_now() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak(device: torch.device) -> int:
    """Start a peak measurement; returns the bytes in use now."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS
    return _rss_now()


def peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated(device)
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def lab_config(tu: int | None, ems: int | None) -> TrainConfig:
    """The lab recipe, at another tu / ems when given (stag.yaml reaches tu 50, ems 6)."""
    cfg = load_config(LAB_CONFIG)
    training = cfg.training.model_copy(
        update={
            "time_units": tu or cfg.training.time_units,
            "evolve_multiple_steps": ems or cfg.training.evolve_multiple_steps,
        }
    )
    return cfg.model_copy(update={"training": training})


def child(what: str, device: torch.device, rollout: int, cfg: TrainConfig) -> dict[str, Any]:
    """One transient, measured in this (fresh) process."""
    n, s = LAB_SHAPE
    tu, horizon, batch = cfg.training.time_units, cfg.horizon, cfg.training.batch_size
    rows = max(4 * (horizon + tu), 512) if what != "eval" else rollout + 2 * tu + 64
    x, xi, stim, acq = random_data(cfg, n, s, rows, device, seed=0)
    torch.manual_seed(0)
    model = EEDModel(n, s, cfg.model).to(device)
    if what == "eval":
        starts = torch.arange(cfg.evaluation.starts, dtype=torch.int64) * 4 + tu

        def run() -> None:
            with torch.no_grad():
                evaluate_dataset(
                    model, x, xi, stim, starts, tu=acq.effective_tu, horizon=horizon,
                    rollout_steps=rollout, threshold=cfg.evaluation.divergence_threshold,
                    need_figures=False, fast=True,
                )  # fmt: skip

    else:
        opt = torch.optim.Adam(model.parameters(), lr=cfg.training.learning_rate)
        classes = phase_classes(acq, device)
        gen = torch.Generator().manual_seed(1)

        def run() -> None:
            t0 = torch.randint(tu, rows - horizon - 1, (batch,), generator=gen).to(device)
            opt.zero_grad(set_to_none=True)
            start = interpolate_rows(x, t0, acq.phases, acq.effective_tu, "linear")
            terms = staggered_loss(
                model, x, None, stim, t0, acq, horizon, cfg.loss, None,
                masked_decode=what == "masked", classes=classes, x_start=start,
            )  # fmt: skip
            terms["total"].backward()
            opt.step()

    run()  # warm-up: Adam state, allocator caches
    base = reset_peak(device)
    run()
    return {"transient_bytes": max(0, peak_bytes(device) - base), "batch_size": batch, "tu": tu}


def _pythonpath() -> str:
    """The repo first, then whatever the caller had (a GPU machine may carry packages there)."""
    return os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)


def measure(what: str, device: torch.device, args: argparse.Namespace) -> dict[str, Any]:
    extra = [f"--{k}={v}" for k, v in (("tu", args.tu), ("ems", args.ems)) if v]
    out = subprocess.run(
        [sys.executable, __file__, "--child", what, "--device", str(device)]
        + ["--rollout", str(args.rollout), *extra],
        env={**os.environ, **_CHILD_ENV, "PYTHONPATH": _pythonpath()},
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--rollout", type=int, default=200, help="evaluation rollout steps")
    p.add_argument("--tu", type=int, default=None, help="training.time_units (default: lab's)")
    p.add_argument("--ems", type=int, default=None, help="evolve_multiple_steps (default: lab's)")
    p.add_argument("--child", choices=("masked", "dense", "eval"), help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cfg = lab_config(args.tu, args.ems)
    if args.child:
        print(json.dumps(child(args.child, device, args.rollout, cfg)))
        return 0
    n, s = LAB_SHAPE
    n_params = sum(p.numel() for p in EEDModel(n, s, cfg.model).parameters())
    resident = resident_bytes(cfg, n, s, n_params)
    transients = {
        w: measure(w, device, args)["transient_bytes"] for w in ("masked", "dense", "eval")
    }
    context = CUDA_CONTEXT_GB * GB
    trial: dict[str, Any] = {}
    for decode in ("masked", "dense"):
        peak = sum(resident.values()) + max(transients[decode], transients["eval"]) + context
        trial[decode] = {
            "peak_gb": round(peak / GB, 2),
            f"trials_per_{GPU_GB:.0f}gb_gpu": int(GPU_GB * GB // peak),
        }
    result = {
        "bench": "memory",
        **device_info(device),
        "shape": {"neurons": n, "stimulus": s, "parameters": n_params},
        "config": {
            "batch_size": cfg.training.batch_size,
            "time_units": cfg.training.time_units,
            "evolve_multiple_steps": cfg.training.evolve_multiple_steps,
            "chunk_steps": cfg.training.chunk_steps,
            "eval_starts": cfg.evaluation.starts,
            "eval_rollout_steps_measured": args.rollout,
        },
        "resident_gb": {k: round(v / GB, 3) for k, v in resident.items()},
        "transient_gb": {k: round(v / GB, 3) for k, v in transients.items()},
        "cuda_context_gb": CUDA_CONTEXT_GB,
        "cuda_context": "assumed"
        if device.type == "cpu"
        else "not measured (outside the allocator)",
        "trial": trial,
    }
    emit_json(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
