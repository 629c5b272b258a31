"""Every run of a search is scored on the same evaluation windows, whatever its tu or seed.

Why: the windows used to be drawn from the training seed and tu, so a search over tu (or a
re-run with another seed) compared numbers measured on different data; even the constant
baseline moved between trials.
"""

from __future__ import annotations

import math
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

    def test_test_windows_are_held_out_and_scored_once(self) -> None:
        t = Trainer(self.config("training.epochs=2"), None, "cpu")
        self.assertEqual([es.name for es in t.test], [es.name for es in t.crossval])
        rollout = t.config.evaluation.rollout_steps
        for name, _, (r0, r1) in t.data.crossval_specs:
            cut = r1 - round((r1 - r0) / 3)
            sel = next(es for es in t.crossval if es.name == name)
            test = next(es for es in t.test if es.name == name)
            self.assertEqual(sel.x.shape[0], cut - r0)  # selection: the first two thirds
            self.assertEqual(test.x.shape[0], r1 - cut)  # test: the last third
            self.assertLess(int(sel.starts.max()) + rollout, cut - r0)
        first, last = t.train_epoch(), t.train_epoch()
        self.assertNotIn("test_crossval_rollout_mse", first)
        self.assertTrue(math.isfinite(last["test_crossval_rollout_mse"]))
        self.assertGreater(last["test_constant_rollout_mse"], 0.0)
        self.assertNotEqual(last["test_crossval_rollout_mse"], last["crossval_rollout_mse"])
        t.close()

    def test_no_test_part_when_it_cannot_hold_a_rollout(self) -> None:
        t = Trainer(self.config("evaluation.test_fraction=0.05"), None, "cpu")
        self.assertEqual(t.test, [])
        t = Trainer(self.config("evaluation.test_fraction=0"), None, "cpu")
        self.assertEqual(t.test, [])
        self.assertEqual(
            t.crossval[0].x.shape[0],
            t.data.crossval_specs[0][2][1] - t.data.crossval_specs[0][2][0],
        )

    def test_margin_must_cover_tu(self) -> None:
        with self.assertRaises(UserInputError) as cm:
            self.config("training.time_units=20", "evaluation.start_margin=10")
        self.assertIn("evaluation.start_margin", str(cm.exception))


if __name__ == "__main__":
    unittest.main()
