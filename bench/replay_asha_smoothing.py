"""Replay ASHA's stop decisions offline on a search's per-epoch curves, raw vs smoothed.

Why: whether smoothing the objective helps ASHA is a question about real curves. Run a search
without early stopping (scheduler fifo) so every trial reaches its last epoch, then replay
Ray's asynchronous successive-halving rule (cutoff = the (1 - 1/rf) quantile of the values
already recorded at the rung, a trial is stopped when it is worse) on the same curves under
each smoothing rule, in the order the trials really reached each rung, and compare the
decisions with the trials' final-epoch ranking:

- `disagree`: of the (stopped, kept) pairs, the fraction where the stopped trial ended better
  (lower final raw objective; `--truth best`: lower best raw value): 0 = every stop was right;
- `best_kept`: whether the trial with the best final value survived;
- `spearman[t]`: rank correlation, over all complete trials, between the value at epoch t and the
  final raw value (how well epoch t predicts the end, the quantity every rung relies on).

    python bench/replay_asha_smoothing.py EXP_DIR [--grace 2 --rf 3] [--out replay.json]

EXP_DIR may be unexported (trial dirs only); only trials with a complete curve (or stopped on
the divergence penalty, ranked by that penalty) are replayed.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from latent_tune.tune.files import RESULTS_FILE
from latent_tune.tune.results import records_from_dir, results_table
from latent_tune.tune.smoothing import smooth_series

METRIC = "crossval_rollout_mse"
RULES = {
    "none": {"type": "none"},
    "ema_0.5": {"type": "ema", "alpha": 0.5},
    "ema_0.3": {"type": "ema", "alpha": 0.3},
    "median_of_last_3": {"type": "median_of_last", "k": 3},
    "mean_of_last_3": {"type": "mean_of_last", "k": 3},
}


def milestones(max_t: int, grace: int, rf: float) -> list[int]:
    """Ray's ASHA rungs (one bracket), smallest first."""
    n = int(math.log(max_t / grace) / math.log(rf) + 1)
    return sorted(int(grace * rf**k) for k in range(n))


def replay(curves: dict[str, pd.DataFrame], rule: dict, rungs: list[int], rf: float) -> set[str]:
    """The trials ASHA stops (mode min) when it compares the `rule`-smoothed value."""
    smoothed = {
        tid: smooth_series(list(df[METRIC]), list(df["evaluated"]), rule)
        for tid, df in curves.items()
    }
    events = []  # (time the trial reached the rung, rung, trial)
    for tid, df in curves.items():
        for r in rungs:
            if r <= len(df):
                events.append((float(df["timestamp"].iloc[r - 1]), r, tid))
    recorded: dict[int, list[float]] = {r: [] for r in rungs}
    stopped: set[str] = set()
    for _, r, tid in sorted(events):
        if tid in stopped:
            continue
        value = -smoothed[tid][r - 1]  # Ray records metric_op * value
        rec = recorded[r]
        if rec and value < float(np.nanpercentile(rec, (1 - 1 / rf) * 100)):
            stopped.add(tid)
        rec.append(value)
    return stopped


def _disagreement(final: pd.Series, stopped: set[str]) -> float:
    kept = [t for t in final.index if t not in stopped]
    pairs = [(s, k) for s in stopped for k in kept]
    if not pairs:
        return 0.0
    return sum(final[s] < final[k] for s, k in pairs) / len(pairs)


def _diverged_stop(df: pd.DataFrame) -> bool:
    """Stopped on its penalty (stopping.diverged_patience): complete, with the penalty as final;
    the stop is on the raw value, so every rule replays it the same way."""
    return "penalised" in df.columns and bool(df.sort_values("epoch")["penalised"].iloc[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("exp", type=Path)
    p.add_argument("--grace", type=int, default=2)
    p.add_argument("--rf", type=float, default=3.0)
    p.add_argument("--epochs", type=int, default=None, help="complete = this many epochs")
    p.add_argument(
        "--truth",
        choices=("final", "best"),
        default="final",
        help="rank trials by their final-epoch (default) or best-epoch raw value",
    )
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    path = args.exp / RESULTS_FILE
    results = pd.read_parquet(path) if path.is_file() else results_table(records_from_dir(args.exp))
    epochs = args.epochs or int(results["epoch"].max())
    curves = {
        str(t): df.sort_values("epoch").reset_index(drop=True)
        for t, df in results.groupby("trial_id")
        if int(df["epoch"].max()) >= epochs or _diverged_stop(df)
    }
    curves = {t: df[df["epoch"] <= epochs] for t, df in curves.items()}
    pick = (lambda v: float(v.iloc[-1])) if args.truth == "final" else (lambda v: float(v.min()))
    final = pd.Series({t: pick(df[METRIC]) for t, df in curves.items()})
    rungs = [r for r in milestones(epochs, args.grace, args.rf) if r < epochs]
    out: dict[str, Any] = {
        "exp": str(args.exp),
        "complete_trials": len(curves),
        "epochs": epochs,
        "rungs": rungs,
        "truth": args.truth,
        "final": final.sort_values().round(4).to_dict(),
        "rules": {},
    }
    for name, rule in RULES.items():
        stopped = replay(curves, rule, rungs, args.rf)
        spearman = {}
        for t in range(1, epochs):
            at = pd.Series(
                {
                    tid: smooth_series(list(df[METRIC]), list(df["evaluated"]), rule)[
                        min(t, len(df)) - 1  # a trial stopped on its penalty keeps its last
                    ]
                    for tid, df in curves.items()
                }
            )
            spearman[t] = round(float(at.rank().corr(final.rank())), 3)
        out["rules"][name] = {
            "stopped": sorted(stopped),
            "disagree": round(_disagreement(final, stopped), 3),
            "best_kept": bool(final.idxmin() not in stopped) if len(final) else None,
            "spearman": spearman,
        }
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
