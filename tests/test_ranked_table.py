"""The console's ranked table labels every tuned parameter unambiguously."""

from __future__ import annotations

import unittest

import pandas as pd

from latent_tune.train import _epoch_line
from latent_tune.tune.ranked_table import format_ranked, param_labels
from latent_tune.tune.results import TrialRecord, trials_table


class ParamLabelsTest(unittest.TestCase):
    def test_section_dropped_nested_leaves_kept_apart(self) -> None:
        labels = param_labels(
            [
                "training.time_units",
                "loss.aug.coeff",
                "model.encoder.hidden_units",
                "model.evolver.hidden_units",
            ]
        )
        self.assertEqual(
            labels,
            {
                "training.time_units": "time_units",
                "loss.aug.coeff": "aug.coeff",
                "model.encoder.hidden_units": "encoder.hidden_units",
                "model.evolver.hidden_units": "evolver.hidden_units",
            },
        )

    def test_a_label_two_sections_share_keeps_its_full_path(self) -> None:
        labels = param_labels(["training.seed", "acquisition.seed", "loss.tv_coeff"])
        self.assertEqual(
            labels,
            {
                "training.seed": "training.seed",
                "acquisition.seed": "acquisition.seed",
                "loss.tv_coeff": "tv_coeff",
            },
        )

    def test_ranked_table_header_uses_the_labels(self) -> None:
        trials = pd.DataFrame(
            {
                "rank": [1, 2],
                "trial_id": ["a1", "b2"],
                "status": ["completed", "stopped_early"],
                "best_crossval_rollout_mse": [0.05, 0.09],
                "best_epoch": [4, 2],
                "epochs": [6, 2],
                "model.encoder.hidden_units": [64, 128],
                "model.evolver.hidden_units": [32, 64],
            }
        )
        params = ["model.encoder.hidden_units", "model.evolver.hidden_units"]
        lines = format_ranked(trials, "crossval_rollout_mse", params).splitlines()
        self.assertEqual(
            lines[0].split(),
            [
                "rank",
                "trial_id",
                "status",
                "best_crossval_rollout_mse",
                "best_epoch",
                "epochs",
                "encoder.hidden_units",
                "evolver.hidden_units",
            ],
        )
        self.assertEqual(lines[1].split(), ["1", "a1", "completed", "0.05", "4", "6", "64", "32"])


class BaselinesTest(unittest.TestCase):
    """The model is compared with both baselines: constant and linear interpolation."""

    def record(self, tid: str, mse: list[float], const: list[float], linear=None) -> TrialRecord:
        cols = {
            "epoch": list(range(1, len(mse) + 1)),
            "crossval_rollout_mse": mse,
            "constant_rollout_mse": const,
        }
        if linear is not None:
            cols["linear_rollout_mse"] = linear
        rows = pd.DataFrame(cols)
        rows["trial_id"] = tid
        return TrialRecord(tid, rows, "TERMINATED", None, None, None)

    def test_best_epochs_baselines_in_table(self) -> None:
        recs = [
            self.record("a", [0.3, 0.1, 0.2], [0.5, 0.4, 0.45], [0.35, 0.25, 0.3]),
            self.record("b", [0.4, 0.3], [0.6, 0.55], [0.5, 0.45]),
        ]
        df = trials_table(recs, "crossval_rollout_mse", "min", [], max_epochs=3)
        first = df.iloc[0]
        self.assertEqual(first["trial_id"], "a")
        self.assertEqual(float(first["baseline_constant"]), 0.4)  # the best epoch's (2) row
        self.assertEqual(float(first["baseline_linear"]), 0.25)
        lines = format_ranked(df, "crossval_rollout_mse", []).splitlines()
        header = lines[0].split()
        self.assertIn("const", header)
        self.assertIn("linear", header)
        row = dict(zip(header, lines[1].split()))
        self.assertEqual((row["const"], row["linear"]), ("0.4", "0.25"))

    def test_old_experiment_without_linear_column(self) -> None:
        df = trials_table(
            [self.record("a", [0.3, 0.1], [0.5, 0.4])], "crossval_rollout_mse", "min", [], 2
        )
        header = format_ranked(df, "crossval_rollout_mse", []).splitlines()[0].split()
        self.assertIn("const", header)
        self.assertNotIn("linear", header)

    def test_epoch_line_shows_both_baselines(self) -> None:
        r = {
            "epoch": 2,
            "train_loss": 0.5,
            "evaluated": True,
            "crossval_rollout_mse": 0.1,
            "constant_rollout_mse": 0.4,
            "linear_rollout_mse": 0.25,
            "best_crossval_rollout_mse": 0.1,
            "best_epoch": 2,
            "epoch_duration": 1.0,
        }
        line = _epoch_line(r, 5)
        self.assertIn("const 0.4", line)
        self.assertIn("linear 0.25", line)
        del r["linear_rollout_mse"]
        self.assertNotIn("linear", _epoch_line(r, 5))


if __name__ == "__main__":
    unittest.main()


class AdoptedTrialBestTest(unittest.TestCase):
    def test_best_is_taken_after_the_last_pbt_exploit(self) -> None:
        """A PBT clone's epochs before its exploit belong to weights it threw away: its best
        (and so its rank and best/ export) comes from the epochs since (review: the ranked
        value did not describe the exported model)."""
        rows = pd.DataFrame(
            {
                "epoch": [1, 2, 3, 4],
                "crossval_rollout_mse": [0.05, 0.2, 0.15, 0.12],
                "penalised": [False] * 4,
                "adopted_at_epoch": [0, 0, 2, 2],
            }
        )
        rec = TrialRecord("clone", rows, "TERMINATED", None, None, None)
        table = trials_table([rec], "crossval_rollout_mse", "min", [], max_epochs=4)
        self.assertEqual(table.loc[0, "best_crossval_rollout_mse"], 0.12)
        self.assertEqual(table.loc[0, "best_epoch"], 4)
        no_exploit = rows.assign(adopted_at_epoch=0)
        rec = TrialRecord("plain", no_exploit, "TERMINATED", None, None, None)
        table = trials_table([rec], "crossval_rollout_mse", "min", [], max_epochs=4)
        self.assertEqual(table.loc[0, "best_epoch"], 1)
