"""`report` on experiment dirs: ranking rebuilt from the trial dirs when nothing was exported."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import tempfile
import unittest
from pathlib import Path

import yaml

from latent_tune.report import main as report_main
from latent_tune.tune.report import load_trials
from latent_tune.tune.resolve import META_KEY

BASE = {"training": {"epochs": 3, "learning_rate": 1.0e-3}, "loss": {"tv_coeff": 0.0}}


def write_trial(exp: Path, trial_id: str, params: dict, mses: list[float], done: bool) -> None:
    """A trial dir as Tune writes it: result.json, one JSON line per reported epoch."""
    d = exp / f"trial_{trial_id}"
    d.mkdir(parents=True)
    config = {**params, META_KEY: {"base": yaml.safe_dump(BASE), "space_file": "s.yaml"}}
    lines = []
    for i, mse in enumerate(mses, 1):
        lines.append(
            {
                "trial_id": trial_id,
                "epoch": i,
                "training_iteration": i,
                "crossval_rollout_mse": mse,
                "constant_rollout_mse": 0.2,
                "done": done and i == len(mses),
                "config": config,
            }
        )
    (d / "result.json").write_text("".join(json.dumps(x) + "\n" for x in lines))


class ReportFromTrialDirs(unittest.TestCase):
    def setUp(self) -> None:
        self.exp = Path(tempfile.mkdtemp()) / "exp"
        self.addCleanup(shutil.rmtree, self.exp.parent, ignore_errors=True)

    def test_status_knows_each_trials_epoch_count(self) -> None:
        write_trial(self.exp, "a", {"training.learning_rate": 1e-3}, [0.3, 0.2, 0.1], done=True)
        write_trial(self.exp, "b", {"training.learning_rate": 1e-2}, [0.4], done=False)
        # a searched epoch count overrides the base config's
        write_trial(
            self.exp,
            "c",
            {"training.learning_rate": 1e-3, "training.epochs": 2},
            [0.3, 0.15],
            done=True,
        )
        df, metric = load_trials(self.exp, None, "min")
        self.assertEqual(metric, "crossval_rollout_mse")
        status = dict(zip(df["trial_id"], df["status"]))
        self.assertEqual(status["a"], "completed")
        self.assertEqual(status["c"], "completed")
        self.assertNotEqual(status["b"], "completed")
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            self.assertEqual(report_main([str(self.exp)]), 0)
        rows = {line.split()[1]: line.split()[2] for line in out.getvalue().splitlines()[1:]}
        self.assertEqual(rows["a"], "completed")


if __name__ == "__main__":
    unittest.main()
