"""Masked vs dense decoding in the staggered train step, and plain vs fast rollout; prints JSON.

    python bench/bench_masked_decode.py [--device cpu|cuda] [--sizes demo,lab] [--out F]
        [--lab-batch 32] [--lab-ems 2] [--steps 3] [--rollout 500] [--bf16]

Why: the dense staggered loss decodes all B x N entries at each of the H steps although only
~1/tu of them are observed; the decoder's output layer (2h -> N) dominates the step at lab
size. This times one optimizer step (loss + backward + Adam) with ``masked_decode`` off and on,
on random tensors of the right shapes (as bench_training.py does): the demo config as is, and
the lab model (N 13,741, L 256, h 256) at tu 20 with a reduced batch and ems so that it runs
on a small CPU. Also one dataset's rollout evaluation, plain vs ``fast`` (and, with --bf16,
the bf16 step and rollout).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from bench_training import bench_device, device_info, emit_json, random_data, shape_of
from bench_training import timed as timed_calls

from latent_tune.model.eed import EEDModel
from latent_tune.training.config_loading import load_config
from latent_tune.training.eed_config import TrainConfig
from latent_tune.training.evaluate import evaluate_dataset
from latent_tune.training.losses import staggered_loss
from latent_tune.training.masked_decode import phase_classes
from latent_tune.training.precision import bf16_autocast

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {
    "demo": REPO / "trainables" / "eed_staggered_demo.yaml",
    "lab": REPO / "trainables" / "eed_staggered.yaml",
}


def timed(fn: Callable[[], Any], device: torch.device, repeat: int) -> float:
    """Mean seconds per call over ``repeat`` calls after one warm-up call."""
    fn()
    return timed_calls(fn, device, repeat)


def bench_step(
    cfg: TrainConfig, n: int, s: int, device: torch.device, *, steps: int, bf16: bool
) -> dict[str, Any]:
    """Seconds per train step, dense vs masked decoding, same model, data and batch starts."""
    tu, horizon, batch = cfg.training.time_units, cfg.horizon, cfg.training.batch_size
    rows = max(4 * (horizon + tu), 512)
    x, xi, stim, acq = random_data(cfg, n, s, rows, device, seed=0)
    classes = phase_classes(acq, device)
    torch.manual_seed(0)
    model = EEDModel(n, s, cfg.model).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.training.learning_rate)
    out: dict[str, Any] = {"batch_size": batch, "tu": tu, "horizon": horizon, "bf16": bf16}
    for name, masked in (("dense", False), ("masked", True)):
        gen = torch.Generator().manual_seed(1)

        def step(masked: bool = masked, gen: torch.Generator = gen) -> None:
            t0 = torch.randint(tu, rows - horizon - 1, (batch,), generator=gen).to(device)
            opt.zero_grad(set_to_none=True)
            with bf16_autocast(bf16, device):
                terms = staggered_loss(
                    model, x, xi, stim, t0, acq, horizon, cfg.loss, None,
                    masked_decode=masked, classes=classes,
                )  # fmt: skip
            terms["total"].backward()
            opt.step()

        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        out[f"{name}_step_s"] = round(timed(step, device, steps), 4)
        if device.type == "cuda":
            out[f"{name}_peak_mem_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    out["speedup"] = round(out["dense_step_s"] / out["masked_step_s"], 2)
    out["timed_steps"] = steps
    return out


def bench_rollout(
    cfg: TrainConfig, n: int, s: int, device: torch.device, *, rollout: int, bf16: bool
) -> dict[str, Any]:
    """One dataset's rollout evaluation (configured starts), plain vs fast."""
    tu, n_starts = cfg.training.time_units, cfg.evaluation.starts
    x, xi, stim, acq = random_data(cfg, n, s, rollout + 2 * tu + 4 * n_starts + 2, device, seed=0)
    torch.manual_seed(0)
    model = EEDModel(n, s, cfg.model).to(device)
    starts = torch.arange(n_starts, dtype=torch.int64) * 4 + tu

    def run(fast: bool, amp: bool = False) -> float:
        return evaluate_dataset(
            model, x, xi, stim, starts, tu=acq.effective_tu, horizon=cfg.horizon,
            rollout_steps=rollout, threshold=cfg.evaluation.divergence_threshold,
            need_figures=False, fast=fast, bf16=amp,
        ).metrics["mse_overall"]  # fmt: skip

    out: dict[str, Any] = {"starts": n_starts, "rollout_steps": rollout}
    out["plain_s"] = round(timed(lambda: run(False), device, 1), 4)
    out["fast_s"] = round(timed(lambda: run(True), device, 1), 4)
    out["speedup"] = round(out["plain_s"] / out["fast_s"], 2)
    plain, fast = run(False), run(True)
    out["mse_overall_plain"], out["mse_overall_fast"] = plain, fast
    if bf16:
        out["fast_bf16_s"] = round(timed(lambda: run(True, True), device, 1), 4)
        out["mse_overall_fast_bf16"] = run(True, True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--sizes", default="demo,lab", help="comma list of demo, lab")
    p.add_argument("--steps", type=int, default=3, help="timed train steps per variant")
    p.add_argument("--lab-batch", type=int, default=32, help="batch size at lab size")
    p.add_argument("--lab-ems", type=int, default=2, help="evolve_multiple_steps at lab size")
    p.add_argument("--rollout", type=int, default=500, help="rollout steps (lab on CPU: 1/4)")
    p.add_argument("--bf16", action="store_true", help="also time bf16 autocast")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    device = bench_device(args.device, args.threads)
    result: dict[str, Any] = {
        "bench": "masked_decode",
        **device_info(device),
        "threads": torch.get_num_threads(),
        "sizes": {},
    }
    for size in [x.strip() for x in args.sizes.split(",") if x.strip()]:
        if size not in CONFIGS:
            p.error(f"unknown size {size!r} (demo, lab)")
        over = []
        if size == "lab":
            over = [
                f"training.batch_size={args.lab_batch}",
                f"training.evolve_multiple_steps={args.lab_ems}",
            ]
        cfg = load_config(CONFIGS[size], over)
        n, s = shape_of(size)
        print(f"[{size}] train step dense vs masked ...", file=sys.stderr, flush=True)
        entry: dict[str, Any] = {"n_neurons": n, "n_stimulus": s, "overrides": over}
        entry["train_step"] = bench_step(cfg, n, s, device, steps=args.steps, bf16=False)
        if args.bf16:
            entry["train_step_bf16"] = bench_step(cfg, n, s, device, steps=args.steps, bf16=True)
        # A CPU times a quarter of the lab rollout (minutes otherwise); a GPU the whole of it.
        full = size == "demo" or device.type == "cuda"
        rollout = args.rollout if full else max(args.rollout // 4, cfg.horizon + 1)
        print(f"[{size}] rollout plain vs fast ({rollout} steps) ...", file=sys.stderr, flush=True)
        entry["rollout"] = bench_rollout(cfg, n, s, device, rollout=rollout, bf16=args.bf16)
        result["sizes"][size] = entry
    emit_json(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
