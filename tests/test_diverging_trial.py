"""A diverging trial (issue 5, item 3): stopped early with the finite penalty, never the best.

Why: a learning rate that blows the model up (NaN loss, exploding rollout) must not crash the
search, must be reported with the penalty objective rather than NaN, must be stopped by
`stopping.diverged_patience`, and must never be exported as the best model.
"""

from __future__ import annotations

import json
import math
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

EPOCHS = 4
GOOD_LR, BAD_LR = 1.0e-3, 1.0e3


class DivergingTrial(unittest.TestCase):
    tmp: Path

    @classmethod
    def setUpClass(cls) -> None:
        os.environ.update(QUIET)
        cls.tmp = Path(tempfile.mkdtemp(prefix="lt-div-"))
        start_local_ray(num_cpus=2, include_dashboard=False)

    @classmethod
    def tearDownClass(cls) -> None:
        ray.shutdown()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def test_diverging_trial_is_penalised_stopped_and_not_best(self) -> None:
        space = tiny_space(
            "div",
            tiny_overrides(EPOCHS, {"evaluation.rollout_steps": 100}),
            searcher={"type": "grid", "seed": 0},
            space={"training.learning_rate": {"grid": [GOOD_LR, BAD_LR]}},
            trials={"num_samples": 1},
            stopping={"diverged_patience": 1},
        )
        path = write_space(self.tmp, space)
        rc, out = run_search([str(path), "--storage", str(self.tmp / "res"), "--name", "div"])
        self.assertEqual(rc, 0, out)
        exp = self.tmp / "res" / "div"
        results = pd.read_parquet(exp / "results.parquet")
        bad = results[results["training.learning_rate"] == BAD_LR]
        good = results[results["training.learning_rate"] == GOOD_LR]
        self.assertTrue(len(bad) > 0 and len(good) == EPOCHS, results)
        self.assertLess(bad["epoch"].max(), EPOCHS)  # stopped early by the stopper
        self.assertTrue(bad["penalised"].astype(bool).all(), bad)
        for value in bad["crossval_rollout_mse"]:  # the finite penalty, never NaN
            self.assertTrue(math.isfinite(value))
            self.assertGreater(value, good["crossval_rollout_mse"].max())
        summary = json.loads((exp / "best" / "summary.json").read_text())
        self.assertEqual(summary["trial_id"], good["trial_id"].iloc[0])


if __name__ == "__main__":
    unittest.main()
