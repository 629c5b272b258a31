"""More trials than slots: 12 one-epoch trials on 2 CPUs at 0.5 CPU each (4 at a time, reused
actors) all finish, each exactly once in trials.parquet and results.parquet.

Why: queueing, actor reuse and the results export must neither drop nor duplicate a trial when
trials outnumber slots (bench/bench_load.py runs the 32-trial version and measures memory).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import unittest
from pathlib import Path

import pandas as pd
import ray

from latent_tune.tune.cli import start_local_ray
from tests.ray_cluster import QUIET
from tests.tiny_search import run_search, tiny_overrides, tiny_space, write_space

ROOT = Path(__file__).resolve().parents[1]
TRIALS = 12


class Load(unittest.TestCase):
    tmp: Path

    @classmethod
    def setUpClass(cls) -> None:
        os.environ.update(QUIET)
        cls.tmp = Path(tempfile.mkdtemp(prefix="lt-load-"))
        # the search's own local start: every listener on loopback
        start_local_ray(num_cpus=2, include_dashboard=False)

    @classmethod
    def tearDownClass(cls) -> None:
        ray.shutdown()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def test_more_trials_than_slots(self) -> None:
        space = tiny_space(
            "load", tiny_overrides(1), trials={"num_samples": TRIALS}, resources={"cpu": 0.5}
        )
        path = write_space(self.tmp, space)
        storage = self.tmp / "storage"
        rc, out = run_search([str(path), "--storage", str(storage), "--name", "load"])
        self.assertEqual(rc, 0, out[-3000:])
        trials = pd.read_parquet(storage / "load" / "trials.parquet")
        self.assertEqual(len(trials), TRIALS, trials)
        self.assertEqual(trials["trial_id"].nunique(), TRIALS)
        self.assertEqual(set(trials["status"]), {"completed"}, trials)
        results = pd.read_parquet(storage / "load" / "results.parquet")
        self.assertEqual(len(results), TRIALS, results)  # one epoch each, no duplicate rows
        self.assertEqual(set(results["trial_id"]), set(trials["trial_id"]))
        lrs = trials["training.learning_rate"]
        self.assertEqual(lrs.nunique(), TRIALS, "each sampled config ran once")


if __name__ == "__main__":
    unittest.main()
