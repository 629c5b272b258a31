"""Review fixes in the training core (each reproduced by a test first).

- NaN metrics (the intervening MSE at tu = 1) made tensorboardX warn three times an epoch;
- the epoch report compared the model only with the constant baseline, not the linear one;
- `all_time_points` training puts loss points every tu steps, but evaluation used tu = 1, so
  `mse_at_loss_points` sat on the wrong grid and the intervening objective was the penalty;
- after a PBT exploit the clone kept the donor's data order and best-so-far model.
"""

from __future__ import annotations

import logging
import math
import tempfile
import unittest
from pathlib import Path

import numpy as np
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from latent_tune.training.evaluate import STABILITY_PREFIX
from latent_tune.training.tensorboard import TBLogger
from latent_tune.training.trainer import Trainer
from tests.test_trainer import TINY_ALIGNED, _SuiteCase


class TestNonFiniteScalars(unittest.TestCase):
    def test_nan_is_skipped_without_a_warning(self) -> None:
        with tempfile.TemporaryDirectory() as d:
            tb = TBLogger(Path(d))
            with self.assertNoLogs("tensorboardX.x2num", level=logging.WARNING):
                tb.scalar("Val/x", math.nan, 0)
                tb.scalar("Val/x", math.inf, 1)
            tb.scalar("Val/x", 0.5, 2)
            tb.close()
            acc = EventAccumulator(d)
            acc.Reload()
            self.assertEqual([(e.step, e.value) for e in acc.Scalars("Val/x")], [(2, 0.5)])


class TestReportedBaselines(_SuiteCase):
    def test_linear_baseline_is_reported(self) -> None:
        t = Trainer(self.config("training.epochs=1"), None, "cpu")
        report = t.train_epoch()
        cv = [t.last_dataset_metrics[es.name] for es in t.crossval]
        want = float(np.mean([m["linear_interp_mse_overall"] for m in cv]))
        self.assertEqual(report["linear_rollout_mse"], want)
        self.assertGreater(report["linear_rollout_mse"], 0.0)
        t.close()


class TestAllTimePointsGrid(_SuiteCase):
    def test_loss_points_on_the_training_grid(self) -> None:
        cfg = self.config(
            "acquisition.mode=all_time_points", "training.epochs=1", base=TINY_ALIGNED
        )
        tu = cfg.training.time_units
        self.assertGreater(tu, 1)
        t = Trainer(cfg, None, "cpu")
        report = t.train_epoch()
        evals = t.evaluate()
        ev = evals[t.crossval[0].name]
        self.assertEqual(ev.tu, tu)
        worst = ev.curves.max(0).values.double()
        k = torch.arange(cfg.horizon)
        at = worst[: cfg.horizon][(k + 1) % tu == 0].mean().item()
        got = ev.metrics[f"{STABILITY_PREFIX}mse_at_loss_points"]
        first = int(ev.metrics[f"{STABILITY_PREFIX}first_divergence_step"])
        if first >= cfg.horizon:  # the prefix covers the whole fit window
            self.assertAlmostEqual(got, at, places=6)
        self.assertTrue(math.isfinite(ev.metrics[f"{STABILITY_PREFIX}mse_intervening"]))
        if not report["penalised"]:
            penalty = cfg.evaluation.penalty_factor * report["constant_rollout_mse"]
            self.assertLess(report["crossval_intervening_mse"], penalty)
        t.close()


class TestAdoptAnotherRunsState(_SuiteCase):
    def test_clone_reseeds_and_drops_the_donor_best(self) -> None:
        cfg = self.config("training.epochs=3", "loss.aug.coeff=0.1", "loss.aug.num_neurons=4")
        donor = Trainer(cfg, None, "cpu")
        donor.train_epoch()
        state = donor.state_dict()
        self.assertIsNotNone(donor.best_model)

        resumed = Trainer(cfg, None, "cpu")  # the same trial resuming: exact
        resumed.load_state_dict(state)
        clone = Trainer(cfg, None, "cpu")  # another trial exploiting the donor
        clone.adopt(state, key="trial_b:1")
        self.assertIsNone(clone.best_model)
        self.assertEqual(clone.best_value, math.inf)
        self.assertEqual(clone.adopted_at, 1)
        self.assertEqual(clone.epoch, 1)

        a, r, c = donor.train_epoch(), resumed.train_epoch(), clone.train_epoch()
        self.assertEqual(a["train_loss"], r["train_loss"])
        self.assertNotEqual(a["train_loss"], c["train_loss"])  # other batches
        self.assertEqual(c["best_epoch"], 2)  # its own first evaluated epoch
        self.assertEqual(c["adopted_at_epoch"], 1)

        again = Trainer(cfg, None, "cpu")  # a retry of the clone's exploit: exact again
        again.adopt(state, key="trial_b:1")
        self.assertEqual(again.train_epoch()["train_loss"], c["train_loss"])
        for t in (donor, resumed, clone, again):
            t.close()


if __name__ == "__main__":
    unittest.main()
