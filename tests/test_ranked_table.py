"""The console's ranked table labels every tuned parameter unambiguously."""

from __future__ import annotations

import unittest

import pandas as pd

from latent_tune.tune.results import format_ranked, param_labels


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


if __name__ == "__main__":
    unittest.main()
