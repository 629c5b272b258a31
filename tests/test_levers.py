"""The stabilising levers: the weights' EMA (training.ema_decay) and the lr schedule
(training.lr_schedule): hand-computed values, what evaluation/best/export use, exact
save/restore, PBT adoption, and the one-line refusal of an older trainer state."""

from __future__ import annotations

import contextlib
import io
import math
import unittest
from pathlib import Path

import torch
from ray import tune
from torch import nn

from latent_tune.errors import UserInputError, run_cli
from latent_tune.training.checkpoint import load_state, save_state
from latent_tune.training.config import LRScheduleConfig
from latent_tune.training.diagnostics import evaluate_set
from latent_tune.training.levers import ModelEMA, ema_decay_at, lr_factor
from latent_tune.training.trainer import Trainer
from latent_tune.training.trainer_state import STATE_FORMAT
from latent_tune.tune.files import TRAINER_FILE
from latent_tune.tune.smoothing import Smoother
from latent_tune.tune.trainable import _restore
from tests.test_trainer import _SuiteCase

# FAST (tests/test_trainer.py): 2 chunks x 4 batches = 8 optimizer steps per epoch, 3 epochs.
SPE = 8


def _states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class TestLrFactor(unittest.TestCase):
    def sched(self, **kw) -> LRScheduleConfig:
        return LRScheduleConfig(**kw)

    def test_constant_with_and_without_warmup(self) -> None:
        s = self.sched()
        self.assertEqual([lr_factor(s, i, 40, 10) for i in (0, 5, 39)], [1.0, 1.0, 1.0])
        s = self.sched(warmup_epochs=1)
        got = [lr_factor(s, i, 40, 10) for i in (0, 4, 9, 10, 39)]
        self.assertEqual(got, [0.1, 0.5, 1.0, 1.0, 1.0])

    def test_cosine_by_hand(self) -> None:
        s = self.sched(type="cosine", warmup_epochs=1, min_factor=0.2)
        # after 10 warm-up steps, 30 cosine steps from 1 down to 0.2
        for i, p in ((10, 0.0), (25, 0.5), (35, 25 / 30)):
            want = 0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi * p))
            self.assertAlmostEqual(lr_factor(s, i, 40, 10), want, places=12)
        self.assertAlmostEqual(lr_factor(s, 25, 40, 10), 0.6, places=12)
        self.assertAlmostEqual(lr_factor(s, 3, 40, 10), 0.4, places=12)

    def test_step_by_hand(self) -> None:
        s = self.sched(type="step", step_epochs=2, gamma=0.5)
        got = [lr_factor(s, i, 100, 10) for i in (0, 19, 20, 39, 40, 99)]
        self.assertEqual(got, [1.0, 1.0, 0.5, 0.5, 0.25, 0.0625])

    def test_extra_key_refused(self) -> None:
        with self.assertRaises(ValueError):
            LRScheduleConfig(type="cosine", warmup=1)


class TestModelEMA(unittest.TestCase):
    def test_matches_the_decay_weighted_mean_of_the_weights(self) -> None:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))  # a float buffer too
        model[1].weight.requires_grad_(False)  # frozen: copied, not averaged
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.3)
        d = 0.8
        ema = ModelEMA(model, d)
        seen: list[dict[str, torch.Tensor]] = []
        for _ in range(4):
            opt.zero_grad()
            model(torch.randn(8, 3)).square().mean().backward()
            opt.step()
            with torch.no_grad():
                model[1].weight.add_(1.0)  # a frozen weight changed outside the optimizer
            ema.update(model)
            seen.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        self.assertEqual(ema.updates, 4)
        w = torch.tensor([d**3, d**2, d, 1.0], dtype=torch.float64)
        w = w / w.sum()
        got = ema.module.state_dict()
        for key in ("0.weight", "0.bias", "1.bias", "1.running_mean", "1.running_var"):
            want = sum(float(w[i]) * seen[i][key].double() for i in range(4))
            torch.testing.assert_close(got[key].double(), want, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(got["1.weight"], seen[-1]["1.weight"], rtol=0, atol=0)
        self.assertEqual(int(got["1.num_batches_tracked"]), 4)  # non-float buffer: copied
        # the averaged weights differ from the last raw ones (it does average)
        self.assertFalse(torch.equal(got["0.weight"], seen[-1]["0.weight"]))

    def test_decay_schedule(self) -> None:
        self.assertEqual(ema_decay_at(0.99, 0), 0.0)
        self.assertAlmostEqual(ema_decay_at(0.99, 1), 0.99 / 1.99, places=12)
        self.assertAlmostEqual(ema_decay_at(0.99, 5000), 0.99, places=12)


class TestLeversInTrainer(_SuiteCase):
    def test_evaluation_best_and_export_use_the_ema(self) -> None:
        run_dir = self.tmp / "ema-run"
        t = Trainer(self.config("training.ema_decay=0.9"), run_dir, "cpu")
        t.train_epoch()
        self.assertEqual(t.ema.updates, t.optimizer_steps)
        ema_state = {k: v.clone() for k, v in t.ema.module.state_dict().items()}
        self.assertFalse(_states_equal(ema_state, dict(t.model.state_dict())))
        evals = t.evaluate()
        fresh = t.recipe.build_model()
        fresh.load_state_dict(ema_state)
        for es in [t.val, *t.crossval]:
            want = evaluate_set(t, fresh, es, False).metrics
            self.assertEqual(evals[es.name].metrics, want, es.name)
        raw = evaluate_set(t, t.model, t.crossval[0], False).metrics["mse_overall"]
        self.assertNotEqual(evals[t.crossval[0].name].metrics["mse_overall"], raw)
        # epoch 1 is the best so far: best_model, best.pt and the export hold the EMA weights
        self.assertTrue(_states_equal(t.best_model, ema_state))
        best = load_state(run_dir / "checkpoints" / "best.pt")
        self.assertTrue(_states_equal(best["model"], ema_state))
        self.assertTrue(_states_equal(t.best_checkpoint()["model"], ema_state))
        t.close()

    def test_recon_warmup_steps_update_the_ema(self) -> None:
        t = Trainer(
            self.config("training.ema_decay=0.9", "training.recon_warmup_epochs=1"), None, "cpu"
        )
        t.train_epoch()
        self.assertEqual(t.optimizer_steps, 2 * SPE)
        self.assertEqual(t.ema.updates, 2 * SPE)
        self.assertEqual(t.schedule_step, SPE)  # the schedule counts main steps only
        t.close()

    def test_save_restore_next_epoch_exact_with_ema_and_cosine(self) -> None:
        cfg = self.config(
            "training.ema_decay=0.9",
            "training.lr_schedule.type=cosine",
            "training.lr_schedule.warmup_epochs=1",
        )
        ckpt = self.tmp / "levers-state.pt"
        a = Trainer(cfg, None, "cpu")
        a.train_epoch()
        a.save_checkpoint(ckpt)
        state = load_state(ckpt)
        self.assertEqual(state["format"], STATE_FORMAT)
        self.assertEqual(state["lr_schedule"]["step"], SPE)
        self.assertEqual(state["lr_schedule"]["factor"], a.lr_factor())
        self.assertNotIn("lr", state["lr_schedule"])
        ra = a.train_epoch()
        b = Trainer.from_checkpoint(ckpt, None, "cpu")
        self.assertEqual(b.schedule_step, SPE)
        rb = b.train_epoch()
        for key in ("train_loss", "crossval_rollout_mse", "lr_factor"):
            self.assertEqual(ra[key], rb[key], key)
        self.assertLess(ra["lr_factor"], 1.0)  # the cosine has started to decay
        self.assertTrue(_states_equal(a.model.state_dict(), b.model.state_dict()))
        self.assertTrue(_states_equal(a.ema.module.state_dict(), b.ema.module.state_dict()))
        self.assertEqual(a.ema.updates, b.ema.updates)
        self.assertEqual(a.optimizer.param_groups[0]["lr"], b.optimizer.param_groups[0]["lr"])
        self.assertEqual(
            a.optimizer.param_groups[0]["lr"], cfg.training.learning_rate * a.lr_factor(2 * SPE - 1)
        )

    def test_adopt_carries_the_ema_and_applies_the_new_lr_times_the_factor(self) -> None:
        sched = ("training.lr_schedule.type=cosine", "training.lr_schedule.min_factor=0.0")
        donor = Trainer(self.config("training.ema_decay=0.9", *sched), None, "cpu")
        donor.train_epoch()
        state = donor.state_dict()
        clone = Trainer(
            self.config("training.ema_decay=0.9", "training.learning_rate=0.0002", *sched),
            None,
            "cpu",
        )
        clone.adopt(state, key="clone:1")
        self.assertTrue(_states_equal(clone.ema.module.state_dict(), state["ema"]["model"]))
        self.assertEqual(clone.ema.updates, donor.ema.updates)
        factor = lr_factor(clone.config.training.lr_schedule, SPE, 3 * SPE, SPE)
        self.assertLess(factor, 1.0)
        self.assertAlmostEqual(clone.optimizer.param_groups[0]["lr"], 0.0002 * factor, places=15)
        clone.train_epoch()
        last = lr_factor(clone.config.training.lr_schedule, 2 * SPE - 1, 3 * SPE, SPE)
        self.assertAlmostEqual(clone.optimizer.param_groups[0]["lr"], 0.0002 * last, places=15)
        self.assertEqual(clone.ema.updates, 2 * SPE)

    def test_ema_turned_on_over_a_state_without_one_starts_at_its_weights(self) -> None:
        a = Trainer(self.config(), None, "cpu")
        a.train_epoch()
        b = Trainer(self.config("training.ema_decay=0.9"), None, "cpu")
        b.load_state_dict(a.state_dict())
        self.assertTrue(_states_equal(b.ema.module.state_dict(), a.model.state_dict()))
        self.assertEqual(b.ema.updates, 0)


class TestOldStateRefused(_SuiteCase):
    def old_state(self, path: Path) -> Path:
        t = Trainer(self.config("training.epochs=1"), None, "cpu")
        state = t.state_dict()
        state["format"] = "latent_tune.trainer/2"
        del state["ema"], state["lr_schedule"]
        t.close()
        return save_state(state, path)

    def test_from_checkpoint_is_one_line_naming_the_file_exit_2(self) -> None:
        path = self.old_state(self.tmp / "old.pt")
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            rc = run_cli(lambda: Trainer.from_checkpoint(path, None, "cpu"))
        self.assertEqual(rc, 2)
        lines = err.getvalue().strip().splitlines()
        self.assertEqual(len(lines), 1, lines)
        self.assertTrue(lines[0].startswith(f"{path}: format: "), lines[0])
        self.assertIn("latent_tune.trainer/2", lines[0])

    def test_trial_restore_is_one_line_naming_the_checkpoint(self) -> None:
        ckpt_dir = self.tmp / "old-ckpt"
        ckpt_dir.mkdir()
        self.old_state(ckpt_dir / TRAINER_FILE)
        trial_dir = self.tmp / "trial"
        trial_dir.mkdir()
        t = Trainer(self.config("training.epochs=1"), None, "cpu")
        ckpt = tune.Checkpoint.from_directory(str(ckpt_dir))
        with self.assertRaises(UserInputError) as cm:
            _restore(t, ckpt, trial_dir, {}, "trial_1", smoother=Smoother.from_spec(None))
        msg = str(cm.exception)
        self.assertEqual(len(msg.splitlines()), 1)
        self.assertIn(str(ckpt_dir / TRAINER_FILE), msg)
        self.assertIn("format", msg)
        self.assertIsNone(cm.exception.__cause__)
        self.assertEqual(t.epoch, 0)  # nothing restored
        t.close()


if __name__ == "__main__":
    unittest.main()
