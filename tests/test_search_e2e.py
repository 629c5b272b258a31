"""End-to-end searches with a real local Ray on the tiny demo data (one Ray per module).

ASHA + Optuna stops trials early and writes the right files; PBT exploits, keeps explored values
in bounds, and after an exploit a trial holds the donor's weights with its own explored config;
Ctrl+C (SIGINT to a subprocess) then --resume finishes without rerunning finished trials.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import unittest
from pathlib import Path

import pandas as pd
import ray
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from latent_tune.report import main as report_main
from latent_tune.training.config_loading import load_config
from latent_tune.tune.cli import start_local_ray
from latent_tune.tune.preview import preview_trials
from latent_tune.tune.space import load_space
from tests.ray_cluster import QUIET
from tests.tiny_search import FIRST_FINISH_S, run_search, tiny_overrides

ROOT = Path(__file__).resolve().parents[1]
TINY = tiny_overrides(  # seconds per epoch on one CPU thread
    6, {"training.batches_per_chunk": 15, "evaluation.divergence_threshold": 100.0}
)


def _space(tmp: Path, name: str, **sections) -> Path:
    d = {
        "name": name,
        "trainable": "eed_staggered",
        "base": "eed_staggered_tiny.yaml",
        "overrides": dict(TINY),
        "resources": {"cpu": 0.5},
        "report": {"html": False},  # the page has its own tests (test_html_report, test_smoothing)
    }
    d.update(sections)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


def _assert_dry_run_preview_ran(test, space: Path, sets: list[str], exp: Path) -> None:
    """The dry run's trial list is what the search really started, in order: a trial dir is
    `<name>_<trial id>_<creation counter>_...`; a trial's first row holds its sampled values."""
    planned = preview_trials(load_space(space, sets))
    results = pd.read_parquet(exp / "results.parquet")
    first = results.sort_values(["trial_id", "epoch"]).groupby("trial_id").first()
    counter = {
        tid: int(Path(path).name.split(f"_{tid}_", 1)[1].split("_", 1)[0])
        for tid, path in pd.read_parquet(exp / "trials.parquet")[["trial_id", "path"]].values
    }
    test.assertGreater(len(planned), 1)
    for tid, params in zip(sorted(first.index, key=counter.__getitem__), planned):
        for key, value in params.items():
            test.assertAlmostEqual(float(first.loc[tid, key]), float(value), msg=(tid, key))


def _results_column(tag: str) -> str | None:
    """The results.parquet column of a TensorBoard scalar tag, where the trial reports both."""
    parts = tag.split("/")
    if parts[0] == "hparam":
        return parts[1]
    if parts[0] == "Loss":
        return parts[1]  # Loss/train_total -> train_total
    if parts[0] == "Val":
        return f"val_{parts[1]}"
    if parts[0] == "CrossVal" and len(parts) == 3:
        return f"cv_{parts[1]}_{parts[2]}"
    if parts[0] == "Train":
        return parts[1]
    return None


def _assert_storage_events_match_results(test, exp: Path) -> int:
    """Each early-stopped trial's event files in the experiment's storage copy hold its last
    reported epoch, every scalar equal to results.parquet. Returns how many trials it checked.

    Steps: the trainer logs epoch e at step e - 1, the trial's `hparam/` scalars at step e."""
    results = pd.read_parquet(exp / "results.parquet")
    trials = pd.read_parquet(exp / "trials.parquet")
    stopped = trials[trials["status"] == "stopped_early"]
    for tid, path in stopped[["trial_id", "path"]].values:
        test.assertTrue(str(path).startswith(str(exp)), path)  # the storage copy
        rows = results[results["trial_id"] == tid].sort_values("epoch")
        last = rows.iloc[-1]
        epoch = int(last["epoch"])
        acc = EventAccumulator(str(path), size_guidance={"scalars": 0})
        acc.Reload()
        steps = {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}
        checked = 0
        for tag, values in steps.items():
            step = epoch if tag.startswith("hparam/") else epoch - 1
            test.assertLessEqual(max(values), step, (tid, tag))
            col = _results_column(tag)
            if col is None or col not in rows.columns or step not in values:
                continue
            want = float(last[col])
            test.assertAlmostEqual(values[step], want, delta=1e-6 * abs(want), msg=(tid, tag))
            checked += 1
        for tag, step in (
            ("hparam/crossval_rollout_mse", epoch),
            ("Loss/train_total", epoch - 1),
            ("Val/mse_overall", epoch - 1),
        ):
            test.assertIn(step, steps.get(tag, {}), (tid, tag))
        test.assertGreater(checked, 5, tid)
    return len(stopped)


def _trial_dirs(exp: Path) -> dict[str, Path]:
    """trial id -> trial dir (read from each trial's result.json)."""
    out = {}
    for p in exp.iterdir():
        lines = (
            (p / "result.json").read_text().splitlines() if (p / "result.json").is_file() else []
        )
        if lines:
            out[json.loads(lines[0])["trial_id"]] = p
    return out


class SearchE2E(unittest.TestCase):
    tmp: Path

    @classmethod
    def setUpClass(cls) -> None:
        os.environ.update(QUIET)
        cls.tmp = Path(tempfile.mkdtemp(prefix="lt-e2e-"))
        # the search's own local start: every listener on loopback
        start_local_ray(num_cpus=2, include_dashboard=False)

    @classmethod
    def tearDownClass(cls) -> None:
        ray.shutdown()

    def test_asha_optuna(self) -> None:
        space = _space(
            self.tmp,
            "asha",
            scheduler={"type": "asha", "grace_period": 1, "reduction_factor": 2},
            searcher={"type": "optuna", "seed": 0},
            space={
                "training.learning_rate": {"loguniform": [3e-4, 1e-2]},
                "training.evolve_multiple_steps": {"randint": [2, 4]},
            },
            trials={"num_samples": 4, "max_concurrent": 2},
        )
        storage = self.tmp / "res"
        rc, out = run_search(
            [
                str(space),
                "--storage",
                str(storage),
                "--name",
                "asha",
                "--set",
                "trials.num_samples=6",
            ]
        )
        self.assertEqual(rc, 0, out)
        exp = storage / "asha"
        self.assertIn("tensorboard --logdir", out)
        results = pd.read_parquet(exp / "results.parquet")
        trials = pd.read_parquet(exp / "trials.parquet")
        self.assertEqual(len(trials), 6)
        self.assertFalse(results.duplicated(["trial_id", "epoch"]).any())
        _assert_dry_run_preview_ran(self, space, ["trials.num_samples=6"], exp)
        for col in (
            "crossval_rollout_mse",
            "training.learning_rate",
            "training.evolve_multiple_steps",
            "epoch",
            "train_loss",
        ):
            self.assertIn(col, results.columns)
        self.assertTrue(
            results["training.evolve_multiple_steps"]
            .map(lambda v: isinstance(v, int) or float(v).is_integer())
            .all()
        )
        # ASHA stopped some trials early; at least one ran all epochs
        self.assertIn("stopped_early", set(trials["status"]))
        self.assertIn("completed", set(trials["status"]))
        # the storage copy of a trial ASHA stopped holds its last epoch (not the one before)
        self.assertGreater(_assert_storage_events_match_results(self, exp), 0)
        self.assertEqual(int(trials["epochs"].max()), 6)
        # best/: retrainable config + best-epoch weights
        best = trials.iloc[0]
        cfg = load_config(exp / "best" / "config.yaml")
        self.assertAlmostEqual(cfg.training.learning_rate, float(best["training.learning_rate"]))
        self.assertEqual(
            cfg.training.evolve_multiple_steps, int(best["training.evolve_multiple_steps"])
        )
        ck = torch.load(exp / "best" / "model.pt", weights_only=True)
        self.assertEqual(int(ck["epoch"]), int(best["best_epoch"]))
        summary = json.loads((exp / "best" / "summary.json").read_text())
        self.assertEqual(summary["trial_id"], best["trial_id"])
        # TensorBoard: lab tags + HParams per trial, and the experiment-level HParams file
        self.assertTrue(list(exp.glob("events.out.tfevents.*.hparams")))
        tdir = _trial_dirs(exp)[best["trial_id"]]
        acc = EventAccumulator(str(tdir))
        acc.Reload()
        tags = acc.Tags()["scalars"]
        self.assertTrue(any(t.startswith("Loss/train_") for t in tags), tags)
        self.assertIn("hparam/crossval_rollout_mse", tags)
        self.assertFalse(any(t.startswith("ray/tune") for t in tags))
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            self.assertEqual(report_main([str(exp)]), 0)
        self.assertIn(str(best["trial_id"]), out.getvalue())

    def test_pbt_exploit(self) -> None:
        bounds = {"training.learning_rate": (2e-4, 5e-3), "loss.tv_coeff": (1e-6, 1e-2)}
        # Ray's PBT exploits only from a donor that was itself in the upper quantile at its own
        # boundary, and never at a trial's last epoch (it is done). Exploits per run, measured:
        # 6 epochs 0-3 (2 runs of 8 had none: CI failed), 10 epochs 2-5 (10 runs), 14 epochs
        # 5-9 (4 runs). 14 epochs give 6 boundaries per trial.
        epochs = 14
        space = _space(
            self.tmp,
            "pbt",
            overrides={**TINY, "training.epochs": epochs},
            scheduler={
                "type": "pbt",
                "perturbation_interval": 2,
                "quantile_fraction": 0.5,
                "explore_weight": 0.5,
            },
            searcher={"type": "random", "seed": 1},
            space={
                "training.learning_rate": {
                    "loguniform": [3e-4, 3e-3],
                    "bounds": list(bounds["training.learning_rate"]),
                },
                "loss.tv_coeff": {
                    "loguniform": [1e-5, 1e-3],
                    "bounds": list(bounds["loss.tv_coeff"]),
                },
            },
            trials={"num_samples": 4, "max_concurrent": 4},
            checkpoint={"keep": 1},  # the pruner must still spare the donor's checkpoint
        )
        storage = self.tmp / "res"
        rc, out = run_search([str(space), "--storage", str(storage), "--name", "pbt"])
        self.assertEqual(rc, 0, out)
        exp = storage / "pbt"
        hist = pd.read_parquet(exp / "pbt_history.parquet")
        self.assertGreater(len(hist), 0)
        results = pd.read_parquet(exp / "results.parquet")
        _assert_dry_run_preview_ran(self, space, [], exp)
        for key, (lo, hi) in bounds.items():
            new = hist[f"{key}.new"]
            self.assertTrue(((new >= lo) & (new <= hi)).all(), new)
            self.assertTrue(((results[key] >= lo) & (results[key] <= hi)).all())
        # steps name trials by id; a first step starts from the target's sampled value
        ids = set(results["trial_id"])
        self.assertTrue(set(hist["trial_id"]) <= ids and set(hist["donor_trial_id"]) <= ids)
        first = hist.drop_duplicates("trial_id")
        for _, step in first.iterrows():
            sampled = results[results["trial_id"] == step["trial_id"]].sort_values("epoch")
            for key in bounds:
                self.assertAlmostEqual(step[f"{key}.old"], sampled.iloc[0][key])
        # after an exploit: donor's weights, explored config
        policy = [json.loads(x) for x in (exp / "pbt_global.txt").read_text().splitlines()]
        explored = [p[5] for p in policy]
        n_exploits = 0
        for tid, tdir in _trial_dirs(exp).items():
            rfile = tdir / "restores.jsonl"
            if not rfile.is_file():
                continue
            for rec in map(json.loads, rfile.read_text().splitlines()):
                # a finished trial is stopped, never paused or exploited: a perturbation at
                # the last epoch would pair the explored config with the old weights' score
                self.assertLess(rec["from_epoch"], epochs, (tid, rec))
                if rec["from_trial"] in (None, tid):
                    continue
                n_exploits += 1
                self.assertEqual(rec["loaded_digest"], rec["checkpoint_digest"])
                self.assertTrue(
                    any(
                        all(abs(e[k] - rec["params"][k]) <= 1e-12 * abs(e[k]) for k in bounds)
                        for e in explored
                    ),
                    rec,
                )
                self.assertAlmostEqual(
                    rec["learning_rate"], rec["params"]["training.learning_rate"]
                )
                self.assertAlmostEqual(rec["optimizer_lr"], rec["params"]["training.learning_rate"])
                self.assertEqual(rec["from_epoch"] % 2, 0)  # checkpoint on the boundary
        self.assertGreater(n_exploits, 0)
        # no clone lost its donor's checkpoint; retention back to `keep` once the search ends
        trials = pd.read_parquet(exp / "trials.parquet")
        self.assertFalse((trials["status"] == "ERROR").any(), trials[["trial_id", "error"]])
        for tdir in _trial_dirs(exp).values():
            self.assertEqual(len(list(tdir.glob("checkpoint_*"))), 1, tdir)

    def test_interrupt_and_resume(self) -> None:
        space = _space(
            self.tmp,
            "intr",
            scheduler={"type": "fifo"},
            searcher={"type": "random", "seed": 0},
            space={"training.learning_rate": {"loguniform": [3e-4, 3e-3]}},
            trials={"num_samples": 4, "max_concurrent": 2},
            resources={"cpu": 1},
            stopping={"diverged_patience": 0},
        )
        storage = self.tmp / "res"
        env = {**os.environ, **QUIET, "PYTHONPATH": str(ROOT)}
        env.pop("RAY_ADDRESS", None)
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "latent_tune.search",
                str(space),
                "--storage",
                str(storage),
                "--name",
                "intr",
            ],
            cwd=self.tmp,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        lines: list[str] = []
        try:
            deadline = time.time() + FIRST_FINISH_S
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append(line)
                if "finished at epoch" in line or time.time() > deadline:
                    break
            proc.send_signal(signal.SIGINT)
            rest, _ = proc.communicate(timeout=120)
            lines.append(rest)
        finally:
            if proc.poll() is None:
                proc.kill()
        text = "".join(lines)
        self.assertEqual(proc.returncode, 130, text)
        self.assertIn("--resume", text)
        exp = storage / "intr"
        done_before = {}
        for tid, tdir in _trial_dirs(exp).items():
            rows = [json.loads(x) for x in (tdir / "result.json").read_text().splitlines() if x]
            if rows and rows[-1]["epoch"] == TINY["training.epochs"]:
                done_before[tid] = (tdir / "result.json").read_bytes()
        self.assertTrue(done_before, text)
        rc, out = run_search([str(space), "--storage", str(storage), "--name", "intr", "--resume"])
        self.assertEqual(rc, 0, out)
        trials = pd.read_parquet(exp / "trials.parquet")
        self.assertEqual(len(trials), 4)
        self.assertTrue((trials["status"] == "completed").all(), trials)
        for tid, before in done_before.items():
            self.assertEqual((_trial_dirs(exp)[tid] / "result.json").read_bytes(), before)


if __name__ == "__main__":
    unittest.main()
