"""Training and evaluation cost at demo and lab sizes; prints JSON.

    python bench/bench_training.py [--quick] [--device cpu|cuda] [--sizes demo,lab] [--out F]

Measures, per size (model and loss settings from the bundled configs; data are random tensors
of the right shapes, so no suite is simulated):

- train_step: optimizer steps per second of the recipe's loss + backward + Adam, eager and
  with torch.compile (compile time reported separately; on a CPU the lab-size compile is
  skipped unless --compile-lab, since it takes many minutes there);
- evaluation: one dataset's open-loop rollout evaluation batched over all starts (how the
  trainer does it) vs one start at a time (how the lab's aligned diagnostics did it);
- eval_fraction: evaluation time of one epoch (val + cross-val datasets) as a fraction of the
  epoch (configured steps per epoch x measured step time + evaluation).

Why random tensors: cost depends on shapes only, and a lab-size suite (1e6 x 13,741) cannot
be simulated on a laptop. --quick shortens everything (few steps, short rollouts) for CI.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from latent_tune.data.acquisition import make_acquisition
from latent_tune.data.interpolation import interpolate_staggered
from latent_tune.data.network import PRESETS
from latent_tune.data.simulate import build_network
from latent_tune.model.eed import EEDModel
from latent_tune.training.config_loading import load_config
from latent_tune.training.eed_config import TrainConfig
from latent_tune.training.evaluate import evaluate_dataset
from latent_tune.training.losses import aligned_loss, staggered_loss

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {
    "demo": REPO / "trainables" / "eed_staggered_demo.yaml",
    "lab": REPO / "trainables" / "eed_staggered.yaml",
}
LAB_SHAPE = (13_741, 1_736)  # the lab's data: neurons, photoreceptor stimulus inputs
N_CROSSVAL = 2  # cross-val datasets evaluated per epoch besides the validation split


def shape_of(size: str) -> tuple[int, int]:
    """(N, S) of a size: the lab's data, or the demo simulator's network (no simulation)."""
    if size == "lab":
        return LAB_SHAPE
    net = build_network(PRESETS[size], np.random.default_rng(0))
    return net.n_neurons, net.n_stimulus


def device_info(device: torch.device) -> dict[str, str]:
    """Which machine a benchmark's numbers come from (every bench JSON names it)."""
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine()
    )
    return {"device": str(device), "device_name": name, "torch": torch.__version__}


def emit_json(result: dict[str, Any], out: Path | None, indent: int = 2) -> None:
    """Print a benchmark's JSON and, when asked, write it to a file as well."""
    text = json.dumps(result, indent=indent)
    print(text)
    if out is not None:
        out.write_text(text + "\n", encoding="utf-8")


def bench_device(name: str | None, threads: int | None) -> torch.device:
    """The device a benchmark runs on (CUDA when present, TF32 on) and its CPU thread count."""
    if threads:
        torch.set_num_threads(threads)
    device = torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    return device


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: torch.device, repeat: int) -> float:
    """Mean seconds per call over `repeat` calls (after the caller's warm-up)."""
    sync(device)
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / max(repeat, 1)


def random_data(
    cfg: TrainConfig, n: int, s: int, rows: int, device: torch.device, *, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Any]:
    """Activity-like random data (T, N), its interpolation, stimulus (T, S)."""
    gen = torch.Generator().manual_seed(seed)
    x = (0.3 * torch.randn(rows, n, generator=gen)).to(device)
    stim = torch.rand(rows, s, generator=gen).to(device)
    acq = make_acquisition(cfg.acquisition.mode, cfg.training.time_units, n, cfg.acquisition.seed)
    xi = interpolate_staggered(x, acq.phases, acq.effective_tu, cfg.acquisition.interpolation)
    return x, xi, stim, acq


def bench_train_step(
    cfg: TrainConfig,
    n: int,
    s: int,
    device: torch.device,
    *,
    steps: int,
    batch: int,
    compile_: bool,
) -> dict[str, Any]:
    """Steps/s of one training step (loss, backward, Adam) at the config's horizon."""
    horizon = cfg.horizon
    tu = cfg.training.time_units
    rows = max(4 * (horizon + tu), 512)
    x, xi, stim, acq = random_data(cfg, n, s, rows, device, seed=0)
    torch.manual_seed(0)
    model = EEDModel(n, s, cfg.model).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.training.learning_rate)
    loss_fn = staggered_loss if cfg.recipe == "staggered" else aligned_loss
    gen = torch.Generator().manual_seed(1)

    def loss(t0: torch.Tensor) -> torch.Tensor:
        return loss_fn(model, x, xi, stim, t0, acq, horizon, cfg.loss, None)["total"]

    fn = torch.compile(loss, dynamic=False) if compile_ else loss

    def step() -> None:
        t0 = torch.randint(tu, rows - horizon - 1, (batch,), generator=gen).to(device)
        opt.zero_grad(set_to_none=True)
        fn(t0).backward()
        opt.step()

    t_first = time.perf_counter()
    step()  # warm-up (and compilation)
    sync(device)
    first = time.perf_counter() - t_first
    per_step = timed(step, device, steps)
    return {
        "mode": "compile" if compile_ else "eager",
        "batch_size": batch,
        "horizon": horizon,
        "first_step_s": round(first, 4),
        "step_s": round(per_step, 5),
        "steps_per_s": round(1.0 / per_step, 3),
        "samples_per_s": round(batch / per_step, 1),
        "timed_steps": steps,
    }


def bench_evaluation(
    cfg: TrainConfig, n: int, s: int, device: torch.device, *, rollout: int, starts: int
) -> dict[str, Any]:
    """One dataset's evaluation: batched over starts vs one start at a time."""
    tu = cfg.training.time_units
    rows = rollout + 2 * tu + 4 * starts + 2
    x, xi, stim, acq = random_data(cfg, n, s, rows, device, seed=2)
    torch.manual_seed(0)
    model = EEDModel(n, s, cfg.model).to(device)
    st = torch.arange(starts, dtype=torch.int64) * 4 + tu

    def run(start_idx: torch.Tensor) -> None:
        evaluate_dataset(
            model,
            x,
            xi,
            stim,
            start_idx,
            tu=acq.effective_tu,
            horizon=cfg.horizon,
            rollout_steps=rollout,
            threshold=cfg.evaluation.divergence_threshold,
            need_figures=False,
        )

    run(st[:1])  # warm-up
    batched = timed(lambda: run(st), device, 1)
    sequential = timed(lambda: [run(st[i : i + 1]) for i in range(starts)], device, 1)
    return {
        "rollout_steps": rollout,
        "starts": starts,
        "batched_s": round(batched, 4),
        "sequential_s": round(sequential, 4),
        "speedup": round(sequential / batched, 2),
    }


def bench_size(size: str, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    cfg = load_config(CONFIGS[size])
    n, s = shape_of(size)
    quick, lab_cpu = args.quick, size == "lab" and device.type == "cpu"
    steps = 2 if quick or lab_cpu else 20
    batch = cfg.training.batch_size
    if lab_cpu and quick:
        batch = 32  # a lab-size step at batch 256 takes tens of seconds on a small CPU
    out: dict[str, Any] = {
        "n_neurons": n,
        "n_stimulus": s,
        "parameters": EEDModel.param_count(n, s, cfg.model),
        "config": str(CONFIGS[size].relative_to(REPO)),
        "tu": cfg.training.time_units,
        "ems": cfg.training.evolve_multiple_steps,
        "steps_per_epoch": cfg.training.chunks_per_epoch * cfg.training.batches_per_chunk,
    }
    print(f"[{size}] train step (eager) ...", file=sys.stderr, flush=True)
    eager = bench_train_step(cfg, n, s, device, steps=steps, batch=batch, compile_=False)
    runs = [eager]
    if args.no_compile:
        runs.append({"mode": "compile", "skipped": "--no-compile"})
    elif lab_cpu and not args.compile_lab:
        runs.append({"mode": "compile", "skipped": "lab size on CPU (use --compile-lab)"})
    else:
        print(f"[{size}] train step (torch.compile) ...", file=sys.stderr, flush=True)
        try:
            runs.append(
                bench_train_step(cfg, n, s, device, steps=steps, batch=batch, compile_=True)
            )
            runs[-1]["speedup_vs_eager"] = round(eager["step_s"] / runs[-1]["step_s"], 2)
        except Exception as e:  # a compiler toolchain problem must not lose the other numbers
            runs.append({"mode": "compile", "error": f"{type(e).__name__}: {e}"[:300]})
    out["train_step"] = runs

    rollout = cfg.evaluation.rollout_steps
    n_starts = cfg.evaluation.starts
    if quick:
        rollout = min(rollout, 200 if size == "lab" else 500)
    print(
        f"[{size}] evaluation ({n_starts} starts x {rollout} steps) ...",
        file=sys.stderr,
        flush=True,
    )
    ev = bench_evaluation(cfg, n, s, device, rollout=rollout, starts=n_starts)
    out["evaluation"] = ev
    # Scale a shortened rollout to the configured length (cost is linear in steps).
    eval_one = ev["batched_s"] * cfg.evaluation.rollout_steps / rollout
    epoch_train = out["steps_per_epoch"] * eager["step_s"] * (cfg.training.batch_size / batch)
    eval_epoch = (1 + N_CROSSVAL) * eval_one
    out["eval_fraction"] = {
        "datasets": 1 + N_CROSSVAL,
        "epoch_train_s_est": round(epoch_train, 2),
        "epoch_eval_s_est": round(eval_epoch, 2),
        "fraction": round(eval_epoch / (epoch_train + eval_epoch), 4),
        "note": "eager step time x configured steps/epoch; batch scaled linearly when reduced",
    }
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="few steps, short rollouts (CI)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--sizes", default="demo,lab", help="comma list of demo, lab")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile runs")
    p.add_argument("--compile-lab", action="store_true", help="also compile at lab size on CPU")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    device = bench_device(args.device, args.threads)
    result: dict[str, Any] = {
        "bench": "training",
        "quick": args.quick,
        **device_info(device),
        "threads": torch.get_num_threads(),
        "sizes": {},
    }
    for size in [x.strip() for x in args.sizes.split(",") if x.strip()]:
        if size not in CONFIGS:
            p.error(f"unknown size {size!r} (demo, lab)")
        result["sizes"][size] = bench_size(size, args, device)
    emit_json(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
