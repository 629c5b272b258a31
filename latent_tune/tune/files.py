"""File names inside a Tune checkpoint, a trial dir and an experiment dir (one place)."""

from __future__ import annotations

__all__ = [
    "BEST_DIR",
    "BEST_MODEL_FILE",
    "CONFIG_FILE",
    "META_FILE",
    "OBJECTIVE_FILE",
    "PBT_HISTORY_FILE",
    "RESTORES_FILE",
    "RESULTS_FILE",
    "TRAINER_FILE",
    "TRIALS_FILE",
]

# in every checkpoint the trainable reports
TRAINER_FILE = "trainer.pt"  # full trainer state (weights, optimizer, RNG, epoch, config text)
BEST_MODEL_FILE = "best_model.pt"  # model weights of the best epoch so far
CONFIG_FILE = "config.yaml"  # the resolved training config of this trial
META_FILE = "meta.json"  # epoch, sampled params, weights digest (lineage checks)
# in the trial dir
RESTORES_FILE = "restores.jsonl"  # one line per restore (resume or PBT exploit)
# in the experiment dir
RESULTS_FILE = "results.parquet"
TRIALS_FILE = "trials.parquet"
OBJECTIVE_FILE = "objective.json"  # metric, mode, rank_metric, smoothing (written by the search)
PBT_HISTORY_FILE = "pbt_history.parquet"
BEST_DIR = "best"
