"""How well one recipe's objective holds up across training seeds and epochs.

    python bench/bench_stability.py CONFIG [--set k=v ...] --seeds K [--jobs J] [--epochs E]
        [--base-seed S] [--device cpu] [--keep DIR] [--out FILE.json] [--label NAME]
    python bench/bench_stability.py --merge A.json --merge B.json [--out FILE.json] [--label NAME]

Why: the per-epoch rollout objective (``crossval_rollout_mse``) of a staggered EED run can swing
between epochs and between seeds, so a search that ranks trials on one epoch's value ranks
noise. This trains the recipe K times, with ``training.seed`` = S, S+1, ..., S+K-1 (S defaults
to the config's own seed), as parallel ``python -m latent_tune.train`` processes (J at a time,
one torch thread each), and reads each run's ``history.jsonl``. Evaluation windows come from
``evaluation.seed``, not the training seed, so every run is scored on the same windows.

Per run: the objective of every epoch, the penalised flags, best and final (raw and as a
fraction of the constant baseline's rollout MSE), final/best, the epoch of the last penalised
evaluation, and the volatility: the median |log(x_t / x_{t-1})| over consecutive evaluated
epochs (0.1 = a typical epoch moves the objective by ~10%). Across seeds: mean, sd (ddof=1)
and CV of best and final, runs with a penalised evaluation (or one no better than the constant
baseline) after epoch 2, the largest final/best, the mean volatility, and the acceptance
criteria of a stable recipe (``criteria``).

``--merge`` trains nothing: it summarises the runs of earlier measurements of the same recipe
(same config, overrides and epochs; distinct seeds) as one, so a 5-seed screen and its 5-seed
confirmation give the 10-seed numbers by the same code.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch
from bench_training import device_info, emit_json

from latent_tune.errors import UserInputError, run_cli
from latent_tune.train import resolve_config_path
from latent_tune.training.config_loading import load_config

REPO = Path(__file__).resolve().parents[1]
OBJECTIVE = "crossval_rollout_mse"
DEFAULT_SETS = ("evaluation.figures_every=0",)  # figures cost time and never change the objective
LATE_EPOCH = 2  # a penalised evaluation after this epoch counts against a recipe

# What a stable recipe must show (10 seeds x 6 epochs on fixed windows).
CRITERIA = {
    "max_share_penalised_after_epoch_2": 0.1,
    "max_cv_final": 0.10,
    "max_final_over_best": 1.5,
    "max_mean_best_rel": 0.25,
    "max_mean_final_rel": 0.35,
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UserInputError(None, "arguments", message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="bench/bench_stability.py", description=__doc__.splitlines()[0])
    p.add_argument("config", nargs="?", help="training config YAML (a path, or a bundled name)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--seeds", type=int, default=None, help="number of training seeds")
    p.add_argument("--base-seed", type=int, default=None, help="first seed (default: config's)")
    p.add_argument("--jobs", type=int, default=None, help="parallel runs (default min(K, cores))")
    p.add_argument("--epochs", type=int, default=None, help="sets training.epochs")
    p.add_argument("--device", default="cpu", help="torch device of every run (default cpu)")
    p.add_argument("--keep", type=Path, default=None, help="keep the run dirs under DIR")
    p.add_argument(
        "--from-runs",
        type=Path,
        default=None,
        metavar="DIR",
        help="train nothing: summarise the run dirs a --keep DIR left (finished or not)",
    )
    p.add_argument(
        "--merge",
        type=Path,
        action="append",
        default=[],
        metavar="FILE.json",
        help="train nothing: summarise the runs of these measurements together",
    )
    p.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    p.add_argument("--label", default=None, help="name of this measurement (default: stem)")
    return p


def _finite(x: Any) -> float | None:
    return float(x) if x is not None and math.isfinite(float(x)) else None


def read_history(path: Path) -> list[dict[str, Any]]:
    """The per-epoch rows a `latent_tune.train` run appended."""
    return [json.loads(ln) for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]


def volatility(values: Sequence[float]) -> float | None:
    """Median |log(x_t / x_{t-1})| over consecutive values (None below two values)."""
    x = np.asarray([v for v in values if v is not None and v > 0], dtype=float)
    if x.size < 2:
        return None
    return float(np.median(np.abs(np.diff(np.log(x)))))


def summarise_run(seed: int, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One run's trajectory and its stability numbers, from its history rows."""
    ev = [r for r in rows if r.get("evaluated")]
    objective = [_finite(r.get(OBJECTIVE)) for r in rows]
    last = rows[-1]
    const = _finite(last.get("constant_rollout_mse"))
    best, final = _finite(last.get("best_crossval_rollout_mse")), objective[-1]
    penalised_at = [int(r["epoch"]) for r in ev if r.get("penalised")]
    # Unpenalised but no better than predicting the start frame forever: as bad for a ranking.
    worse_at = [
        int(r["epoch"])
        for r in ev
        if const and (_finite(r.get(OBJECTIVE)) is None or r[OBJECTIVE] >= const)
    ]

    def rel(v: float | None) -> float | None:
        return v / const if v is not None and const else None

    return {
        "seed": seed,
        "epochs": int(last["epoch"]),
        "complete": True,
        "objective_by_epoch": objective,
        "evaluated": [bool(r.get("evaluated")) for r in rows],
        "penalised": [bool(r.get("penalised")) for r in rows],
        "constant_rollout_mse": const,
        "best": best,
        "best_epoch": int(last.get("best_epoch", -1)),
        "final": final,
        "best_rel": rel(best),
        "final_rel": rel(final),
        "final_over_best": final / best if final is not None and best else None,
        "last_penalised_epoch": max(penalised_at) if penalised_at else None,
        "last_worse_than_constant_epoch": max(worse_at) if worse_at else None,
        "volatility": volatility([_finite(r.get(OBJECTIVE)) for r in ev]),
        "epoch_s": float(np.mean([r.get("epoch_duration", 0.0) for r in rows])),
    }


def _stats(values: list[float | None]) -> dict[str, float | None]:
    x = np.asarray([v for v in values if v is not None], dtype=float)
    if x.size == 0:
        return {"mean": None, "sd": None, "cv": None}
    mean = float(x.mean())
    sd = float(x.std(ddof=1)) if x.size > 1 else 0.0
    return {"mean": mean, "sd": sd, "cv": sd / mean if mean else None}


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Across seeds: spread of best and final, late penalties, worst final/best, volatility."""
    done = [r for r in runs if "error" not in r]
    ok = [r for r in done if r["complete"]]
    out: dict[str, Any] = {
        "runs": len(runs),
        "failed_runs": len(runs) - len(done),
        "incomplete_runs": len(done) - len(ok),  # still training (--from-runs): not summarised
    }
    for key in ("best", "final", "best_rel", "final_rel"):
        out[key] = _stats([r[key] for r in ok])
    late = [r for r in ok if (r["last_penalised_epoch"] or 0) > LATE_EPOCH]
    out["runs_penalised_after_epoch_2"] = len(late)
    worse = [r for r in ok if (r["last_worse_than_constant_epoch"] or 0) > LATE_EPOCH]
    out["runs_worse_than_constant_after_epoch_2"] = len(worse)
    ratios = [r["final_over_best"] for r in ok if r["final_over_best"] is not None]
    out["max_final_over_best"] = max(ratios) if ratios else None
    vols = [r["volatility"] for r in ok if r["volatility"] is not None]
    out["mean_volatility"] = float(np.mean(vols)) if vols else None
    out["criteria"] = criteria(out, len(ok))
    return out


def criteria(s: dict[str, Any], n: int) -> dict[str, bool | None]:
    """Each acceptance criterion of a stable recipe: met or not (None: no numbers)."""

    def le(v: float | None, limit: float) -> bool | None:
        return None if v is None else bool(v <= limit)

    share = s["runs_penalised_after_epoch_2"] / n if n else None
    return {
        "penalised_after_epoch_2": le(share, CRITERIA["max_share_penalised_after_epoch_2"]),
        "cv_final": le(s["final_rel"]["cv"], CRITERIA["max_cv_final"]),
        "final_over_best": le(s["max_final_over_best"], CRITERIA["max_final_over_best"]),
        "mean_best_rel": le(s["best_rel"]["mean"], CRITERIA["max_mean_best_rel"]),
        "mean_final_rel": le(s["final_rel"]["mean"], CRITERIA["max_mean_final_rel"]),
    }


def train_one(
    config: Path, sets: list[str], seed: int, run_dir: Path, device: str
) -> dict[str, Any]:
    """One `latent_tune.train` process on one torch thread; its summary (or its error)."""
    argv = [sys.executable, "-m", "latent_tune.train", str(config)]
    for s in [*sets, f"training.seed={seed}"]:
        argv += ["--set", s]
    argv += ["--out", str(run_dir), "--device", device]
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=REPO, check=False)
    wall = time.perf_counter() - t0
    history = run_dir / "history.jsonl"
    if proc.returncode != 0 or not history.is_file():
        return {"seed": seed, "error": proc.stderr.strip()[-2000:], "wall_s": wall}
    run = summarise_run(seed, read_history(history))
    run["wall_s"] = round(wall, 1)
    print(
        f"[seed {seed}] best/const {_fmt(run['best_rel'])} final/const {_fmt(run['final_rel'])}"
        f" ({wall:.0f}s)",
        file=sys.stderr,
        flush=True,
    )
    return run


def from_run_dir(run_dir: Path, seed: int, epochs: int) -> dict[str, Any]:
    """A kept run dir's summary, finished or still training (no history yet: an error)."""
    history = run_dir / "history.jsonl"
    rows = read_history(history) if history.is_file() else []
    if not rows:
        return {"seed": seed, "error": f"{history}: no epoch written"}
    run = summarise_run(seed, rows)
    run["complete"] = run["epochs"] >= epochs
    return run


def _fmt(v: float | None, spec: str = ".3f") -> str:
    return "-" if v is None else format(v, spec)


def table(result: dict[str, Any]) -> str:
    """A short human table: one line per seed, then the across-seed summary."""
    lines = [f"{result['label']}: {result['config']} {' '.join(result['overrides'])}"]
    lines.append("seed   best/c  @ep  final/c  fin/best  volat  last_pen")
    for r in result["runs"]:
        if "error" in r:
            lines.append(f"{r['seed']:<6} FAILED: {r['error'].splitlines()[-1:]}")
            continue
        if not r["complete"]:
            lines.append(f"{r['seed']:<6} (epoch {r['epochs']} so far) {r['objective_by_epoch']}")
            continue
        lines.append(
            f"{r['seed']:<6} {_fmt(r['best_rel']):>6} {r['best_epoch']:>4} "
            f"{_fmt(r['final_rel']):>8} {_fmt(r['final_over_best'], '.2f'):>9} "
            f"{_fmt(r['volatility']):>6} {r['last_penalised_epoch'] or '-':>9}"
        )
    s = result["summary"]
    b, f = s["best_rel"], s["final_rel"]
    n = s["runs"] - s["failed_runs"] - s["incomplete_runs"]
    lines.append(
        f"best/const {_fmt(b['mean'])} +- {_fmt(b['sd'])}, final/const {_fmt(f['mean'])} +- "
        f"{_fmt(f['sd'])} (CV {_fmt(f['cv'], '.0%')}), penalised after epoch 2: "
        f"{s['runs_penalised_after_epoch_2']}/{n} (worse than constant: "
        f"{s['runs_worse_than_constant_after_epoch_2']}/{n}), max final/best "
        f"{_fmt(s['max_final_over_best'], '.2f')}, volatility {_fmt(s['mean_volatility'])}"
    )
    lines.append("criteria: " + ", ".join(f"{k} {v}" for k, v in s["criteria"].items()))
    return "\n".join(lines)


def _shown(path: Path) -> str:
    return str(path.relative_to(REPO) if path.is_relative_to(REPO) else path)


def _json_safe(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_json_safe(x) for x in v]
    return v


def merge(paths: Sequence[Path]) -> dict[str, Any]:
    """Earlier measurements of one recipe as one: their runs, config and overrides."""
    parts = []
    for path in paths:
        try:
            parts.append((path, json.loads(path.read_text(encoding="utf-8"))))
        except (OSError, ValueError) as exc:
            raise UserInputError(path, None, f"not a stability measurement: {exc}") from None
    first_path, first = parts[0]
    runs: list[dict[str, Any]] = []
    for path, part in parts:
        if part.get("bench") != "stability":
            raise UserInputError(path, "bench", "not a stability measurement")
        for key in ("config", "epochs", "device"):
            if part.get(key) != first.get(key):
                raise UserInputError(
                    path, key, f"{part.get(key)!r}, but {first_path} has {first.get(key)!r}"
                )
        if sorted(part["overrides"]) != sorted(first["overrides"]):
            raise UserInputError(
                path, "overrides", f"{part['overrides']}, but {first_path} has {first['overrides']}"
            )
        seen = {r["seed"] for r in runs}
        twice = sorted(seen & {r["seed"] for r in part["runs"]})
        if twice:
            raise UserInputError(path, "seeds", f"seeds {twice} are already in an earlier file")
        runs += part["runs"]
    return {
        "config": first["config"],
        "overrides": first["overrides"],
        "epochs": first["epochs"],
        "device": first.get("device"),
        "runs": runs,
    }


def _main(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    if args.merge:
        given = [f for f, v in (("CONFIG", args.config), ("--seeds", args.seeds)) if v is not None]
        if given or args.overrides or args.epochs is not None:
            what = ", ".join(given or ["--set/--epochs"])
            raise UserInputError(None, "--merge", f"takes everything from its files, not {what}")
        merged = merge(args.merge)
        result = {
            "bench": "stability",
            "label": args.label or "merged",
            "config": merged["config"],
            "overrides": merged["overrides"],
            "epochs": merged["epochs"],
            "device": merged["device"],
            "seeds": [r["seed"] for r in merged["runs"]],
            "merged_from": [_shown(p.resolve()) for p in args.merge],
            "threads_per_run": 1,
            "criteria_limits": CRITERIA,
            "summary": summarise(merged["runs"]),
            "runs": merged["runs"],
        }
        return _emit(_json_safe(result), args.out)
    if args.config is None or args.seeds is None:
        raise UserInputError(None, "arguments", "CONFIG and --seeds are required (or --merge)")
    if args.seeds < 1:
        raise UserInputError(None, "--seeds", f"must be >= 1, got {args.seeds}")
    config_path = resolve_config_path(args.config).resolve()
    sets = [*DEFAULT_SETS, *args.overrides]
    if args.epochs is not None:
        sets.append(f"training.epochs={args.epochs}")
    config = load_config(config_path, sets)  # bad input fails here, before any run starts
    base = config.training.seed if args.base_seed is None else args.base_seed
    seeds = [base + i for i in range(args.seeds)]
    jobs = args.jobs or min(args.seeds, len(os.sched_getaffinity(0)))
    t0 = time.perf_counter()
    if args.from_runs is not None:
        runs = [
            from_run_dir(args.from_runs / f"seed-{s}", s, config.training.epochs) for s in seeds
        ]
    else:
        with tempfile.TemporaryDirectory(prefix="lt-stability-") as tmp:
            root = args.keep if args.keep is not None else Path(tmp)
            with ThreadPoolExecutor(max_workers=jobs) as pool:
                futures = [
                    pool.submit(train_one, config_path, sets, s, root / f"seed-{s}", args.device)
                    for s in seeds
                ]
                runs = [f.result() for f in futures]
    result = {
        "bench": "stability",
        "label": args.label or config_path.stem,
        **device_info(torch.device(args.device)),
        "config": _shown(config_path),
        "overrides": sets,
        "epochs": config.training.epochs,
        "seeds": seeds,
        "jobs": jobs,
        "from_runs": None if args.from_runs is None else str(args.from_runs),
        "threads_per_run": 1,
        "wall_s": round(time.perf_counter() - t0, 1),
        "criteria_limits": CRITERIA,
        "summary": summarise(runs),
        "runs": runs,
    }
    return _emit(_json_safe(result), args.out)


def _emit(result: dict[str, Any], out: Path | None) -> int:
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
    emit_json(result, out)
    print(table(result), file=sys.stderr)
    return 1 if result["summary"]["failed_runs"] else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Command entry point (tests call it in-process)."""
    return run_cli(lambda: _main(argv))


if __name__ == "__main__":
    sys.exit(main())
