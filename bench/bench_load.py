"""Load benchmark, JSON on stdout: more trials than slots, and node memory per concurrent trial.

1. load: a search with many more trials than slots (default 32 trials of 1 epoch, 2 CPUs,
   0.5 CPU per trial -> 4 at a time) runs to completion; every trial is in trials.parquet and
   results.parquet exactly once (none lost, none duplicated).
2. memory: the same short search with 1 vs 4 trials running at once; the Ray worker processes
   of the trials are sampled from /proc while they train: RSS, RssAnon, USS (private pages) and,
   for the mappings of the dataset files, Rss and Pss. Why: the datasets are memory-mapped,
   so their pages are file-backed and shared by all trials of a node (Pss of the dataset
   mappings summed over the trials stays about one copy), and the anonymous memory of a trial
   is the model, the torch runtime and its copied chunk/eval tensors, not the dataset.

Usage: python bench/bench_load.py [--trials 32] [--cpus 2] [--cpu-per-trial 0.5] [--out F]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pandas as pd
import ray
import yaml
from bench_training import emit_json

from latent_tune.data.suite import ensure_demo_suite
from latent_tune.search import main as search_main
from latent_tune.tune.cli import ensure_loopback_switch, start_local_ray

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "training.chunks_per_epoch": 1,
    "training.batches_per_chunk": 10,
    "evaluation.rollout_steps": 150,
    "evaluation.starts": 2,
    "evaluation.figures_every": 0,
}


def _space(tmp: Path, name: str, samples: int, epochs: int, cpu: float) -> Path:
    d = {
        "name": name,
        "trainable": "eed_staggered",
        "base": "eed_staggered_tiny.yaml",
        "overrides": {**TINY, "training.epochs": epochs},
        "scheduler": {"type": "fifo"},
        "searcher": {"type": "random", "seed": 0},
        "space": {"training.learning_rate": {"loguniform": [3e-4, 3e-3]}},
        "trials": {"num_samples": samples},
        "resources": {"cpu": cpu},
        "stopping": {"diverged_patience": 0},
    }
    p = tmp / f"{name}.yaml"
    p.write_text(yaml.safe_dump(d))
    return p


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], list(children.get(pid, []))
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def _kb_fields(text: str, names: tuple[str, ...]) -> dict[str, int]:
    out = dict.fromkeys(names, 0)
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in out:
            out[key] += int(rest.split()[0])
    return out


def _proc_memory(pid: int, data_dir: str) -> dict[str, int] | None:
    """kB of one process: rss, anon (RssAnon), uss (private pages), dataset mappings Rss/Pss."""
    try:
        status = _kb_fields(Path(f"/proc/{pid}/status").read_text(), ("VmRSS", "RssAnon"))
        roll = _kb_fields(
            Path(f"/proc/{pid}/smaps_rollup").read_text(), ("Private_Clean", "Private_Dirty")
        )
        data_rss = data_pss = 0
        in_data = False
        for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
            first = line.split(maxsplit=5)
            if first and "-" in first[0] and not first[0].endswith(":"):  # a mapping header
                in_data = len(first) == 6 and first[5].startswith(data_dir)
            elif in_data and line.startswith("Rss:"):
                data_rss += int(line.split()[1])
            elif in_data and line.startswith("Pss:"):
                data_pss += int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return {
        "rss": status["VmRSS"],
        "anon": status["RssAnon"],
        "uss": roll["Private_Clean"] + roll["Private_Dirty"],
        "data_rss": data_rss,
        "data_pss": data_pss,
    }


class Sampler(threading.Thread):
    """Samples the trial processes below this driver every `period` s; keeps the sample with
    the most concurrent trial processes (the largest total RSS among those)."""

    def __init__(self, data_dir: str, period: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.data_dir, self.period = data_dir, period
        self.stop_event = threading.Event()
        self.best: dict[str, Any] | None = None
        self.samples = 0

    def sample(self) -> dict[str, Any]:
        procs = {}
        for pid in _descendants(os.getpid()):
            with contextlib.suppress(OSError):
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
                if cmd.startswith("ray::") and not cmd.startswith("ray::IDLE"):
                    mem = _proc_memory(pid, self.data_dir)
                    if mem is not None and mem["data_rss"] > 0:  # a trial with its data open
                        procs[pid] = mem
        total = {k: sum(m[k] for m in procs.values()) for k in ("rss", "anon", "uss")}
        total.update(
            data_rss=sum(m["data_rss"] for m in procs.values()),
            data_pss=sum(m["data_pss"] for m in procs.values()),
        )
        return {"n": len(procs), "sum_kb": total, "per_proc_kb": list(procs.values())}

    def run(self) -> None:
        while not self.stop_event.wait(self.period):
            s = self.sample()
            self.samples += 1
            key = (s["n"], s["sum_kb"]["rss"])
            if self.best is None or key > (self.best["n"], self.best["sum_kb"]["rss"]):
                self.best = s


def _run_search(space: Path, storage: Path, name: str) -> float:
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()) as out:
        rc = search_main([str(space), "--storage", str(storage), "--name", name])
    if rc != 0:
        raise SystemExit(f"search {name} failed (rc {rc}):\n{out.getvalue()[-3000:]}")
    return time.perf_counter() - t0


def _accounting(exp: Path, samples: int, epochs: int) -> dict[str, Any]:
    trials = pd.read_parquet(exp / "trials.parquet")
    results = pd.read_parquet(exp / "results.parquet")
    dup_rows = int(results.duplicated(["trial_id", "epoch"]).sum())
    return {
        "trials_expected": samples,
        "trials_rows": len(trials),
        "distinct_trials": int(trials["trial_id"].nunique()),
        "statuses": trials["status"].value_counts().to_dict(),
        "results_rows": len(results),
        "results_distinct_trials": int(results["trial_id"].nunique()),
        "duplicated_trial_epochs": dup_rows,
        "ok": len(trials) == samples
        and trials["trial_id"].nunique() == samples
        and set(trials["status"]) == {"completed"}
        and results["trial_id"].nunique() == samples
        and len(results) == samples * epochs
        and dup_rows == 0,
    }


def _memory(tmp: Path, data_dir: str, concurrent: int, cpus: int, epochs: int) -> dict:
    cpu = cpus / concurrent
    space = _space(tmp, f"mem{concurrent}", concurrent, epochs, cpu)
    sampler = Sampler(data_dir)
    sampler.start()
    try:
        wall = _run_search(space, tmp / "storage", f"mem{concurrent}")
    finally:
        sampler.stop_event.set()
        sampler.join()
    best = sampler.best or {"n": 0, "sum_kb": {}, "per_proc_kb": []}
    n = max(best["n"], 1)
    mib = {k: round(v / 1024, 1) for k, v in best["sum_kb"].items()}
    return {
        "cpu_per_trial": cpu,
        "trials_running_at_peak": best["n"],
        "wall_s": round(wall, 1),
        "samples": sampler.samples,
        "sum_mib": mib,
        "per_trial_mib": {k: round(v / n, 1) for k, v in mib.items()},
    }


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--trials", type=int, default=32)
    p.add_argument("--cpus", type=int, default=2)
    p.add_argument("--cpu-per-trial", type=float, default=0.5)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--mem-epochs", type=int, default=4, help="epochs of the memory runs")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = p.parse_args()
    ensure_loopback_switch()  # the local Ray below listens on 127.0.0.1 only
    os.environ.update(
        RAY_AUTH_MODE="disabled",
        RAY_USAGE_STATS_ENABLED="0",
        LATENT_TUNE_DASHBOARD="0",
        PYTHONPATH=str(ROOT),
    )
    suite = ensure_demo_suite("tiny", 0)
    data_bytes = sum(f.stat().st_size for f in suite.rglob("*.arrow"))
    tmp = Path(tempfile.mkdtemp(prefix="lt-load-"))
    start_local_ray(num_cpus=args.cpus, include_dashboard=False)
    try:
        space = _space(tmp, "load", args.trials, args.epochs, args.cpu_per_trial)
        wall = _run_search(space, tmp / "storage", "load")
        load = {
            "trials": args.trials,
            "cpus": args.cpus,
            "cpu_per_trial": args.cpu_per_trial,
            "slots": int(args.cpus / args.cpu_per_trial),
            "epochs": args.epochs,
            "wall_s": round(wall, 1),
            **_accounting(tmp / "storage" / "load", args.trials, args.epochs),
        }
        mem = {
            f"{c}_concurrent": _memory(tmp, str(suite), c, args.cpus, args.mem_epochs)
            for c in (1, 4)
        }
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    one, four = mem["1_concurrent"]["sum_mib"], mem["4_concurrent"]["sum_mib"]
    n4 = max(mem["4_concurrent"]["trials_running_at_peak"] - 1, 1)
    out = {
        "device": "cpu",
        "dataset_arrow_mib": round(data_bytes / 2**20, 1),
        "load": load,
        "memory": mem,
        "memory_added_per_extra_trial_mib": {
            k: round((four[k] - one[k]) / n4, 1) for k in one if k in four
        },
    }
    emit_json(out, args.out, indent=1)
    return 0 if load["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
