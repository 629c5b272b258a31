"""`python -m latent_tune.data suite`: a suite from existing datasets, linked not copied, with
default ranges stated, bad ranges and mismatched datasets refused in one line (nothing written),
the dataset/suite mix-up named, and a tiny training run on the result."""

from __future__ import annotations

import math
import shutil
import tempfile
import unittest
from pathlib import Path

import torch
import yaml

from latent_tune.data.format import SUITE_FILE
from latent_tune.data.reader import Dataset
from latent_tune.data.simulate import simulate_suite
from latent_tune.data.suite import Suite
from latent_tune.errors import UserInputError
from latent_tune.training.config_loading import load_config
from latent_tune.training.data import clear_suite_cache, load_run_data
from latent_tune.training.trainer import Trainer
from tests.test_data_cli import run_main
from tests.test_data_format import make_dataset

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "trainables" / "eed_staggered_tiny.yaml"


class SuiteCommandTest(unittest.TestCase):
    def setUp(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="lt-suite-cli-"))
        self.addCleanup(shutil.rmtree, self.tmp, ignore_errors=True)
        make_dataset(self.tmp / "rec_train", t=600, chunks=(600,), seed=1, name="rec_train")
        make_dataset(self.tmp / "rec_flow", t=300, chunks=(300,), seed=2, name="rec_flow")
        make_dataset(self.tmp / "rec_davis", t=250, chunks=(250,), seed=3, name="rec_davis")
        self.out = self.tmp / "suite"

    def argv(self, *extra: str) -> list[str]:
        return [
            "suite",
            "--train",
            str(self.tmp / "rec_train"),
            "--crossval",
            f"flow={self.tmp / 'rec_flow'}",
            "--crossval",
            f"davis={self.tmp / 'rec_davis'}@10:250",
            "--out",
            str(self.out),
            "--rollout-steps",
            "50",
            "--margin",
            "10",
            *extra,
        ]

    def refused(self, argv: list[str], prefix: str, fragment: str) -> str:
        rc, out, err = run_main(*argv)
        self.assertEqual(rc, 2, err)
        self.assertEqual(out, "")
        self.assertEqual(err.count("\n"), 1, repr(err))
        self.assertTrue(err.startswith(prefix), f"{err!r} does not start with {prefix!r}")
        self.assertIn(fragment, err)
        self.assertFalse(self.out.exists())
        self.assertEqual([p.name for p in self.tmp.iterdir() if p.name.startswith(".")], [])
        return err

    def test_builds_linked_suite_with_default_ranges(self) -> None:
        rc, out, err = run_main(*self.argv())
        self.assertEqual((rc, err), (0, ""))
        # T = 600: skip min(5000, 60) rows, hold out the last 20% (120 rows) for validation.
        self.assertIn("train_range [60, 480), val_range [480, 600)", out)
        self.assertIn("crossval flow", out)
        self.assertIn("range [30, 300)", out)
        self.assertIn("range [10, 250)", out)
        suite = Suite.open(self.out)
        self.assertEqual(suite.manifest.train.train_range, (60, 480))
        self.assertEqual(suite.manifest.train.val_range, (480, 600))
        self.assertEqual(
            [(n, r) for n, _, r in suite.crossval], [("flow", (30, 300)), ("davis", (10, 250))]
        )
        for sub, src in (("train", "rec_train"), ("flow", "rec_flow"), ("davis", "rec_davis")):
            self.assertTrue((self.out / sub).is_symlink())
            self.assertEqual((self.out / sub).resolve(), (self.tmp / src).resolve())
        size = sum(p.stat().st_size for p in self.out.iterdir() if not p.is_symlink())
        self.assertLess(size, 4096)  # suite.yaml only: no data copied
        raw = yaml.safe_load((self.out / SUITE_FILE).read_text())
        self.assertEqual(raw["train"]["dataset"], "train")

    def test_explicit_ranges_and_force(self) -> None:
        self.assertEqual(run_main(*self.argv())[0], 0)
        self.refused_exists()
        rc, out, err = run_main(*self.argv("--train-range", "0:400", "--val-range", "400:600"))
        self.assertEqual(rc, 2)
        rc, out, err = run_main(
            *self.argv("--train-range", "0:400", "--val-range", "400:600", "--force")
        )
        self.assertEqual((rc, err), (0, ""))
        m = Suite.open(self.out).manifest.train
        self.assertEqual((m.train_range, m.val_range), ((0, 400), (400, 600)))

    def refused_exists(self) -> None:
        rc, _, err = run_main(*self.argv())
        self.assertEqual(rc, 2)
        self.assertIn("already exists", err)

    def test_bad_ranges(self) -> None:
        train = str(self.tmp / "rec_train")
        self.refused(
            self.argv("--val-range", "560:600"),
            f"{train}: --val-range: ",
            "[560, 600) holds 40 rows; an evaluation range needs rollout_steps + margin + 1 = 61",
        )
        self.refused(self.argv("--val-range", "500:700"), f"{train}: --val-range: ", "does not fit")
        self.refused(
            self.argv("--train-range", "0:500", "--val-range", "450:600"),
            f"{train}: --train-range: ",
            "overlaps",
        )
        self.refused(self.argv("--val-range", "9-10"), "-: --val-range: ", "not a row range")
        self.refused(
            self.argv("--rollout-steps", "300"),
            f"{train}: --val-range: ",
            "needs rollout_steps + margin + 1 = 311",
        )

    def test_short_crossval_range(self) -> None:
        argv = self.argv()
        argv[argv.index(f"davis={self.tmp / 'rec_davis'}@10:250")] = (
            f"davis={self.tmp / 'rec_davis'}@200:250"
        )
        self.refused(argv, f"{self.tmp / 'rec_davis'}: --crossval davis: ", "holds 50 rows")

    def test_other_network_and_missing_dataset(self) -> None:
        make_dataset(self.tmp / "rec_other", t=300, n=7, chunks=(300,), seed=4)
        argv = self.argv("--crossval", f"other={self.tmp / 'rec_other'}")
        self.refused(argv, f"{self.tmp / 'rec_other'}: --crossval other: ", "has 7 neurons")
        argv = self.argv("--crossval", f"gone={self.tmp / 'nope'}")
        self.refused(argv, f"{self.tmp / 'nope'}: -: ", "does not exist")
        argv = self.argv("--crossval", f"val={self.tmp / 'rec_flow'}")
        self.refused(argv, "-: --crossval: ", "reserved")
        argv = self.argv("--crossval", f"flow={self.tmp / 'rec_flow'}")
        self.refused(argv, "-: --crossval: ", "more than once")

    def test_suite_given_where_a_dataset_is_expected_and_back(self) -> None:
        self.assertEqual(run_main(*self.argv())[0], 0)
        argv = self.argv()
        argv[argv.index("--out") + 1] = str(self.tmp / "suite2")
        argv[argv.index("--train") + 1] = str(self.out)
        rc, _, err = run_main(*argv)
        self.assertEqual(rc, 2)
        self.assertTrue(err.startswith(f"{self.out}: -: is a suite"), err)
        self.assertIn("a single dataset directory (dataset.yaml) is expected", err)
        with self.assertRaises(UserInputError) as cm:
            Suite.open(self.tmp / "rec_train")
        self.assertIn(
            "is a dataset directory (dataset.yaml), but a suite is expected", str(cm.exception)
        )
        self.assertIn("python -m latent_tune.data suite", str(cm.exception))
        cfg = load_config(TINY, [f"data.suite={self.tmp / 'rec_train'}"])
        with self.assertRaises(UserInputError) as cm:
            load_run_data(cfg)
        self.assertIn("a suite is expected", str(cm.exception))


class TrainOnBuiltSuiteTest(unittest.TestCase):
    """A suite made by `suite` from simulated datasets trains like the simulated suite."""

    def setUp(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="lt-suite-train-"))
        self.addCleanup(shutil.rmtree, self.tmp, ignore_errors=True)
        self.addCleanup(clear_suite_cache)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        self.addCleanup(torch.set_num_threads, threads)

    def test_tiny_training_run(self) -> None:
        sim = simulate_suite(self.tmp / "sim", preset="tiny", seed=0)
        cvs = [name for name, _, _ in Suite.open(sim).crossval]
        argv = ["suite", "--train", sim / "train", "--out", self.tmp / "mine"]
        for name in cvs:
            argv += ["--crossval", f"{name}={sim / name}"]
        rc, out, err = run_main(*argv, "--rollout-steps", "200")
        self.assertEqual((rc, err), (0, ""), out)
        suite = Suite.open(self.tmp / "mine")
        self.assertEqual(suite.train.n_steps, Dataset.open(sim / "train").n_steps)
        cfg = load_config(
            TINY,
            [
                f"data.suite={self.tmp / 'mine'}",
                "training.epochs=1",
                "training.chunks_per_epoch=1",
                "training.batches_per_chunk=3",
                "training.chunk_steps=1024",
                "evaluation.rollout_steps=200",
                "evaluation.starts=2",
                "evaluation.figures_every=0",
            ],
        )
        trainer = Trainer(cfg, None, "cpu")
        trainer.train_epoch()
        self.assertEqual(trainer.epoch, 1)
        self.assertEqual(set(trainer.last_dataset_metrics), {"val", *cvs})
        self.assertTrue(all(math.isfinite(v) for v in trainer.last_losses.values()))
        self.assertEqual(trainer.data.train_range, suite.manifest.train.train_range)


if __name__ == "__main__":
    unittest.main()
