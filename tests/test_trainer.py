"""Trainer protocol: exact save/restore, weights_only state, phase order, ems warmup, TensorBoard
tags and figures, best-epoch rule, and the `latent_tune.train` command's run dir and errors."""

from __future__ import annotations

import contextlib
import io
import json
import math
import shutil
import tempfile
import unittest
import weakref
from pathlib import Path

import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from latent_tune import train as train_cli
from latent_tune.data.simulate import simulate_suite
from latent_tune.model.eed import EEDModel
from latent_tune.training.checkpoint import check_weights_only, load_state
from latent_tune.training.config_loading import load_config
from latent_tune.training.figures import FIGURE_NAMES
from latent_tune.training.recipes.eed import ems_effective
from latent_tune.training.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "trainables" / "eed_staggered_tiny.yaml"
TINY_ALIGNED = REPO / "trainables" / "eed_aligned_tiny.yaml"

# Small and fast: one chunk of a few batches per epoch, short rollouts.
FAST = [
    "training.epochs=3",
    "training.chunks_per_epoch=2",
    "training.batches_per_chunk=4",
    "training.chunk_steps=1024",
    "evaluation.rollout_steps=200",
    "evaluation.starts=2",
    "evaluation.figures_every=0",
]


class _SuiteCase(unittest.TestCase):
    """Simulates one tiny suite per test class into a temp dir (no shared cache touched)."""

    tmp: Path
    suite: Path
    threads: int

    @classmethod
    def setUpClass(cls) -> None:
        # One thread: tiny matmuls gain nothing from more, and on a shared machine extra
        # threads wait on each other (10x slower under load).
        cls.threads = torch.get_num_threads()
        torch.set_num_threads(1)
        cls.tmp = Path(tempfile.mkdtemp(prefix="lt-trainer-test-"))
        cls.suite = simulate_suite(cls.tmp / "suite", preset="tiny", seed=0)

    @classmethod
    def tearDownClass(cls) -> None:
        shutil.rmtree(cls.tmp, ignore_errors=True)
        torch.set_num_threads(cls.threads)

    def config(self, *overrides: str, base: Path = TINY):
        return load_config(base, [f"data.suite={self.suite}", *FAST, *overrides])


class TestEmsWarmup(unittest.TestCase):
    def test_schedule_ramps_from_one_to_ems(self) -> None:
        got = [ems_effective(e, 5, 10) for e in range(12)]
        self.assertEqual(got, [1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 5, 5])
        self.assertEqual([ems_effective(e, 3, 0) for e in range(3)], [3, 3, 3])
        self.assertEqual([ems_effective(e, 4, 1) for e in range(3)], [1, 4, 4])


class TestDeviceMemory(_SuiteCase):
    def test_one_training_chunk_on_the_device_at_a_time(self) -> None:
        """A lab chunk is 7.7 GB on the GPU: the old one must be gone before the next loads
        (the epoch loop's own variable used to keep it, doubling the peak)."""
        cfg = self.config(
            "training.epochs=1", "training.chunks_per_epoch=3", "training.batches_per_chunk=1"
        )
        t = Trainer(cfg, None, "cpu")
        load = t.data.chunk
        loaded: list[weakref.ref] = []

        def chunk(*args, **kwargs):
            alive = sum(r() is not None for r in loaded)
            self.assertEqual(alive, 0, "a previous chunk is still referenced")
            c = load(*args, **kwargs)
            loaded.append(weakref.ref(c.x))
            return c

        t.data.chunk = chunk  # type: ignore[method-assign]
        t.train_epoch()
        self.assertGreaterEqual(len(loaded), 2)  # distinct chunks were loaded
        t.close()


class TestTrainerState(_SuiteCase):
    def test_save_restore_next_epoch_is_identical(self) -> None:
        # AUG on, so its own generator is part of what must be restored.
        cfg = self.config("loss.aug.coeff=0.1", "loss.aug.num_neurons=4", "loss.tv_coeff=1e-3")
        ckpt = self.tmp / "state.pt"
        a = Trainer(cfg, None, "cpu")
        a.train_epoch()
        a.save_checkpoint(ckpt)
        ra = a.train_epoch()
        b = Trainer.from_checkpoint(ckpt, None, "cpu")
        self.assertEqual(b.epoch, 1)
        rb = b.train_epoch()
        for key in ("train_loss", "train_evolve", "train_tv", "train_aug", "crossval_rollout_mse"):
            self.assertEqual(ra[key], rb[key], key)
        self.assertGreater(ra["train_aug"], 0.0)
        for (ka, va), (kb, vb) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
            self.assertEqual(ka, kb)
            self.assertTrue(torch.equal(va, vb), ka)
        # A restored state is not aliased to the live model: training on leaves it unchanged.
        state = b.state_dict()
        before = {k: v.clone() for k, v in state["model"].items()}
        b.train_epoch()
        self.assertTrue(all(torch.equal(before[k], state["model"][k]) for k in before))
        self.assertTrue(b.done)

    def test_state_loads_weights_only(self) -> None:
        cfg = self.config("training.epochs=1")
        t = Trainer(cfg, None, "cpu")
        t.train_epoch()
        path = t.save_checkpoint(self.tmp / "wo.pt")
        state = torch.load(path, map_location="cpu", weights_only=True)
        check_weights_only(state)
        self.assertIsInstance(state["config"], str)
        self.assertEqual(yaml.safe_load(state["config"])["recipe"], "staggered")
        self.assertTrue(torch.equal(state["phases"], t.phases))
        self.assertIsInstance(state["generator"], torch.Tensor)
        best = torch.load(self.tmp / "wo.pt", weights_only=True)["best"]
        self.assertEqual(best["epoch"], 1)

    def test_lr_comes_from_the_loading_config(self) -> None:
        t = Trainer(self.config("training.epochs=1"), None, "cpu")
        t.train_epoch()
        state = t.state_dict()
        u = Trainer(self.config("training.learning_rate=0.0005"), None, "cpu")
        u.load_state_dict(state)
        self.assertEqual(u.optimizer.param_groups[0]["lr"], 0.0005)
        self.assertEqual(u.epoch, 1)

    def test_penalised_never_best_unless_all_are(self) -> None:
        t = Trainer(self.config("training.epochs=1"), None, "cpu")
        t.epoch = 1
        t._update_best({"crossval_rollout_mse": 5.0, "penalised": True})
        self.assertEqual((t.best_value, t.best_epoch), (5.0, 1))
        t.epoch = 2
        t._update_best({"crossval_rollout_mse": 4.0, "penalised": True})
        self.assertEqual((t.best_value, t.best_epoch), (4.0, 2))
        t.epoch = 3
        t._update_best({"crossval_rollout_mse": 9.0, "penalised": False})
        self.assertEqual((t.best_value, t.best_epoch), (9.0, 3))
        t.epoch = 4
        t._update_best({"crossval_rollout_mse": 1.0, "penalised": True})
        self.assertEqual((t.best_value, t.best_epoch), (9.0, 3))
        t.epoch = 5
        t._update_best({"crossval_rollout_mse": 8.0, "penalised": False})
        self.assertEqual((t.best_value, t.best_epoch), (8.0, 5))

    def test_ems_warmup_drives_the_horizon(self) -> None:
        t = Trainer(
            self.config("training.evolve_multiple_steps=3", "training.ems_warmup_epochs=2"),
            None,
            "cpu",
        )
        got = [t.train_epoch()["ems_effective"] for _ in range(3)]
        self.assertEqual(got, [1, 2, 3])

    def test_evaluation_cadence_carries_values_forward(self) -> None:
        t = Trainer(self.config("training.epochs=3", "evaluation.every=2"), None, "cpu")
        reports = [t.train_epoch() for _ in range(3)]
        self.assertEqual([r["evaluated"] for r in reports], [True, True, True])
        t = Trainer(self.config("training.epochs=4", "evaluation.every=3"), None, "cpu")
        reports = [t.train_epoch() for _ in range(4)]
        self.assertEqual([r["evaluated"] for r in reports], [True, False, True, True])
        self.assertEqual(reports[1]["crossval_rollout_mse"], reports[0]["crossval_rollout_mse"])
        for r in reports:
            for v in r.values():
                self.assertIsInstance(v, bool | int | float)


class TestPhasesAndTensorBoard(_SuiteCase):
    """One run with every phase on and figures every epoch; its event file is read back."""

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        cls.run_dir = cls.tmp / "run"
        cfg = load_config(
            TINY,
            [
                f"data.suite={cls.suite}",
                *FAST,
                "training.epochs=1",
                "training.stimulus_ae.enabled=true",
                "training.stimulus_ae.epochs=2",
                "training.recon_warmup_epochs=2",
                "evaluation.figures_every=1",
            ],
        )
        cls.trainer = Trainer(cfg, cls.run_dir, "cpu")
        cls.init = {k: v.clone() for k, v in cls.trainer.model.state_dict().items()}
        cls.trainer._run_pending_phases()
        cls.after_phases = {k: v.clone() for k, v in cls.trainer.model.state_dict().items()}
        cls.report = cls.trainer.train_epoch()
        cls.trainer.close()
        acc = EventAccumulator(str(cls.run_dir), size_guidance={"images": 0, "scalars": 0})
        cls.events = acc.Reload()

    def test_phases_ran_in_order(self) -> None:
        self.assertEqual(self.trainer.phases_done, ["stimulus_ae", "recon_warmup"])
        self.assertEqual(self.trainer.phase, "main")
        ev = self.events
        t_ae = max(e.wall_time for e in ev.Scalars("StimulusAE/recon"))
        t_rw = [e.wall_time for e in ev.Scalars("ReconWarmup/total")]
        t_main = min(e.wall_time for e in ev.Scalars("Loss/train_total"))
        self.assertEqual(len(t_rw), 2)
        self.assertLessEqual(t_ae, min(t_rw))
        self.assertLessEqual(max(t_rw), t_main)

    def test_warmups_touch_only_their_modules(self) -> None:
        init, mid = self.init, self.after_phases
        final = self.trainer.model.state_dict()
        changed = lambda a, b, prefix: any(  # noqa: E731
            not torch.equal(a[k], b[k]) for k in a if k.startswith(prefix)
        )
        # Stimulus AE then recon warmup: stimulus encoder, encoder, decoder move; evolver frozen.
        self.assertTrue(changed(init, mid, "stimulus_encoder."))
        self.assertTrue(changed(init, mid, "encoder."))
        self.assertTrue(changed(init, mid, "decoder."))
        self.assertFalse(changed(init, mid, "evolver."))
        # Main training: the pretrained stimulus encoder stays frozen, the evolver learns.
        self.assertFalse(changed(mid, final, "stimulus_encoder."))
        self.assertTrue(changed(mid, final, "evolver."))

    def test_lab_tags_are_written(self) -> None:
        tags = self.events.Tags()
        scalars, images = set(tags["scalars"]), set(tags["images"])
        for tag in (
            "Loss/train_total",
            "Loss/train_evolve",
            "Loss/train_tv",
            "Time/epoch_duration",
            "Time/total_elapsed",
            "Time/diagnostics_duration",
            "StimulusAE/recon",
            "ReconWarmup/total",
            "ReconWarmup/recon",
            "Val/mse_overall",
            "Val/rollout_latent_2000step_first_divergence_step",
            "CrossVal/gratings/mse_overall",
            "CrossVal/flashes/constant_mse_overall",
            "CrossVal/flashes/rollout_latent_2000step_mse_intervening",
        ):
            self.assertIn(tag, scalars)
        for prefix in ("Val/", "CrossVal/gratings/", "CrossVal/flashes/"):
            for name in FIGURE_NAMES:
                self.assertIn(prefix + name, images)
        value = self.events.Scalars("CrossVal/gratings/mse_overall")[0].value
        self.assertAlmostEqual(value, self.report["cv_gratings_mse_overall"], places=5)

    def test_best_checkpoint_written(self) -> None:
        best = load_state(self.run_dir / "checkpoints" / "best.pt")
        self.assertEqual(best["epoch"], 1)
        model = EEDModel(112, 14, self.trainer.config.model)
        model.load_state_dict(best["model"])


class TestAlignedRecipe(_SuiteCase):
    def test_aligned_recipe_with_recon_warmup_runs(self) -> None:
        cfg = self.config("training.epochs=1", "training.recon_warmup_epochs=1", base=TINY_ALIGNED)
        t = Trainer(cfg, None, "cpu")
        r = t.train_epoch()
        self.assertIn("train_recon", r)
        self.assertTrue(math.isfinite(r["train_loss"]))
        self.assertTrue(bool((t.phases == 0).all()))


class TestTrainCommand(_SuiteCase):
    def run_main(self, argv: list[str]) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = train_cli.main(argv)
        return rc, out.getvalue(), err.getvalue()

    def test_writes_run_dir(self) -> None:
        run_dir = self.tmp / "cli-run"
        sets = [x for o in [f"data.suite={self.suite}", *FAST] for x in ("--set", o)]
        rc, out, _ = self.run_main(
            [str(TINY), *sets, "--set", "training.epochs=2", "--out", str(run_dir)]
        )
        self.assertEqual(rc, 0)
        for name in ("config.yaml", "neuron_phases.pt", "final_metrics.yaml", "final_metrics.json"):
            self.assertTrue((run_dir / name).is_file(), name)
        for name in ("latest.pt", "best.pt"):
            self.assertTrue((run_dir / "checkpoints" / name).is_file(), name)
        self.assertTrue(list(run_dir.glob("events.out.tfevents.*")))
        metrics = json.loads((run_dir / "final_metrics.json").read_text())
        for key in ("crossval_rollout_mse", "constant_rollout_mse", "best_epoch"):
            self.assertIn(key, metrics)
        self.assertEqual(yaml.safe_load((run_dir / "final_metrics.yaml").read_text())["epochs"], 2)
        resolved = load_config(run_dir / "config.yaml")
        self.assertEqual(resolved.training.epochs, 2)
        self.assertEqual(load_state(run_dir / "checkpoints" / "latest.pt")["epoch"], 2)
        phases = load_state(run_dir / "neuron_phases.pt")["phases"]
        self.assertEqual(phases.shape, (112,))
        self.assertEqual(len([ln for ln in out.splitlines() if ln.startswith("epoch")]), 2)
        self.assertIn(f"tensorboard --logdir {run_dir}", out)

    def test_history_has_one_line_per_epoch(self) -> None:
        run_dir = self.tmp / "history-run"
        sets = [f"data.suite={self.suite}", *FAST, "training.epochs=4", "evaluation.every=3"]
        argv = [str(TINY), *[x for o in sets for x in ("--set", o)], "--out", str(run_dir)]
        rc, _, err = self.run_main(argv)
        self.assertEqual(rc, 0, err)
        rows = [json.loads(ln) for ln in (run_dir / "history.jsonl").read_text().splitlines()]
        self.assertEqual([r["epoch"] for r in rows], [1, 2, 3, 4])
        # Epochs 1 and 4 (first, last) and every 3rd; epoch 2 carries epoch 1's value forward.
        self.assertEqual([r["evaluated"] for r in rows], [True, False, True, True])
        self.assertEqual(rows[1]["crossval_rollout_mse"], rows[0]["crossval_rollout_mse"])
        for r in rows:
            for key in ("penalised", "constant_rollout_mse", "train_loss", "epoch_duration"):
                self.assertIn(key, r)
            self.assertGreater(r["epoch_duration"], 0.0)
        best = min(r["crossval_rollout_mse"] for r in rows)
        self.assertEqual(rows[-1]["best_crossval_rollout_mse"], best)
        metrics = json.loads((run_dir / "final_metrics.json").read_text())
        self.assertEqual(metrics["crossval_rollout_mse"], rows[-1]["crossval_rollout_mse"])
        self.assertEqual(metrics["penalised"], rows[-1]["penalised"])
        self.assertIs(type(metrics["penalised"]), bool)
        self.assertEqual(
            yaml.safe_load((run_dir / "final_metrics.yaml").read_text())["penalised"],
            metrics["penalised"],
        )

    def test_bad_config_is_one_line_and_writes_nothing(self) -> None:
        bad = self.tmp / "bad.yaml"
        bad.write_text(TINY.read_text().replace("epochs: 10", "epochs: -3"))
        run_dir = self.tmp / "never"
        rc, out, err = self.run_main([str(bad), "--out", str(run_dir)])
        self.assertEqual(rc, 2)
        self.assertEqual(len(err.strip().splitlines()), 1, err)
        self.assertTrue(err.startswith(f"{bad}: training.epochs: "), err)
        self.assertFalse(run_dir.exists())
        rc, _, err = self.run_main([str(TINY), "--set", "training.nope=1", "--out", str(run_dir)])
        self.assertEqual(rc, 2)
        self.assertTrue(err.startswith(f"{TINY}: training.nope: "), err)
        self.assertFalse(run_dir.exists())
        missing = self.tmp / "no-suite"
        rc, _, err = self.run_main(
            [str(TINY), "--set", f"data.suite={missing}", "--out", str(run_dir)]
        )
        self.assertEqual(rc, 2)
        self.assertTrue(err.startswith(f"{TINY}: data.suite: "), err)
        self.assertFalse(run_dir.exists())


if __name__ == "__main__":
    unittest.main()
