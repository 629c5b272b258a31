"""Every run of a search is scored on the same evaluation windows, whatever its tu or seed.

Why: the windows used to be drawn from the training seed and tu, so a search over tu (or a
re-run with another seed) compared numbers measured on different data; even the constant
baseline moved between trials.
"""

from __future__ import annotations

import unittest

import torch

from latent_tune.errors import UserInputError
from latent_tune.training.trainer import Trainer
from tests.test_trainer import _SuiteCase


class TestFixedWindows(_SuiteCase):
    def test_same_windows_and_baseline_across_tu_and_seeds(self) -> None:
        a = Trainer(self.config("training.time_units=10", "training.seed=1"), None, "cpu")
        b = Trainer(
            self.config(
                "training.time_units=20", "training.evolve_multiple_steps=2", "training.seed=7"
            ),
            None,
            "cpu",
        )
        for ea, eb in zip([a.val, *a.crossval], [b.val, *b.crossval], strict=True):
            self.assertTrue(torch.equal(ea.starts, eb.starts), ea.name)
        ra, rb = a.train_epoch(), b.train_epoch()
        self.assertEqual(ra["constant_rollout_mse"], rb["constant_rollout_mse"])
        self.assertNotEqual(ra["crossval_rollout_mse"], rb["crossval_rollout_mse"])
        a.close()
        b.close()

    def test_evaluation_seed_moves_the_windows(self) -> None:
        a = Trainer(self.config(), None, "cpu")
        b = Trainer(self.config("evaluation.seed=1"), None, "cpu")
        self.assertFalse(torch.equal(a.crossval[0].starts, b.crossval[0].starts))
        self.assertGreaterEqual(int(a.crossval[0].starts.min()), a.config.evaluation.start_margin)

    def test_margin_must_cover_tu(self) -> None:
        with self.assertRaises(UserInputError) as cm:
            self.config("training.time_units=20", "evaluation.start_margin=10")
        self.assertIn("evaluation.start_margin", str(cm.exception))


if __name__ == "__main__":
    unittest.main()
