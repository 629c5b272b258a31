"""Throughput of staggered interpolation on one training chunk (default 65,536 x 13,741 float32).

Prints one JSON object: per device and mode the wall time, GB/s of input processed and, on CPU,
the process's peak RSS (so the memory overhead beyond input + output is visible).

    python bench/bench_interpolation.py              # full chunk, CPU (+ CUDA when present)
    python bench/bench_interpolation.py --quick      # 4,096 x 2,000, seconds
    python bench/bench_interpolation.py --steps 16384 --neurons 13741 --device cpu
"""

from __future__ import annotations

import argparse
import gc
import platform
import resource
import time
from pathlib import Path

import torch
from bench_training import emit_json

from latent_tune.data.acquisition import make_acquisition
from latent_tune.data.interpolation import interpolate_staggered

GB = 1e9


def peak_rss_gb() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_device(
    device: torch.device, steps: int, neurons: int, *, tu: int, repeats: int, seed: int
) -> dict[str, object]:
    """Time both modes on one device; the input is made on the device (no host copy timed)."""
    phases = make_acquisition("staggered_random", tu, neurons, seed).phases
    gen = torch.Generator(device=device).manual_seed(seed)
    x = torch.empty((steps, neurons), dtype=torch.float32, device=device)
    x.uniform_(-1.0, 1.0, generator=gen)
    in_bytes = x.numel() * x.element_size()
    result: dict[str, object] = {
        "device": str(device),
        "device_name": device_name(device),
        "threads": torch.get_num_threads(),
        "input_gb": round(in_bytes / GB, 3),
        "rss_after_input_gb": round(peak_rss_gb(), 3) if device.type == "cpu" else None,
        "modes": {},
    }
    for mode in ("linear", "hold"):
        interpolate_staggered(x[: 4 * tu], phases, tu, mode)  # warm-up (probes, allocator)
        times = []
        for _ in range(repeats):
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            sync(device)
            t0 = time.perf_counter()
            out = interpolate_staggered(x, phases, tu, mode)
            sync(device)
            times.append(time.perf_counter() - t0)
            del out
            gc.collect()
        best = min(times)
        entry: dict[str, object] = {
            "seconds": [round(t, 4) for t in times],
            "best_seconds": round(best, 4),
            "gb_per_s_input": round(in_bytes / GB / best, 3),
            "rows_per_s": round(steps / best, 1),
        }
        if device.type == "cpu":
            entry["peak_rss_gb"] = round(peak_rss_gb(), 3)
        else:
            entry["peak_gpu_allocated_gb"] = round(torch.cuda.max_memory_allocated(device) / GB, 3)
        result["modes"][mode] = entry  # type: ignore[index]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=65_536)
    parser.add_argument("--neurons", type=int, default=13_741)
    parser.add_argument("--tu", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--seed", type=int, default=653)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--quick", action="store_true", help="4,096 x 2,000 (overrides sizes)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    steps, neurons = (4_096, 2_000) if args.quick else (args.steps, args.neurons)
    devices = []
    if args.device in ("auto", "cpu"):
        devices.append(torch.device("cpu"))
    if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()):
        devices.append(torch.device("cuda"))
    report = {
        "benchmark": "interpolation",
        "shape": [steps, neurons],
        "dtype": "float32",
        "tu": args.tu,
        "torch": torch.__version__,
        "results": [
            bench_device(d, steps, neurons, tu=args.tu, repeats=args.repeats, seed=args.seed)
            for d in devices
        ],
    }
    emit_json(report, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
