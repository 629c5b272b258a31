"""Objective smoothing (issue 10 items 3 and 6): the rules, their state, and a real ASHA search.

Why: the 2000-step rollout objective swings several-fold between epochs, so ASHA's cuts and
PBT's exploits followed single-epoch chaos. The trainable reports `<metric>_smoothed` beside the
raw metric; schedulers and searchers compare that key, the export ranks by it, objective.json
records it, and `report` reads it back.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import shutil
import statistics
import tempfile
import unittest
from pathlib import Path

import pandas as pd
import ray
import torch
from ray.tune import Checkpoint
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from latent_tune.data.suite import ensure_demo_suite
from latent_tune.errors import UserInputError
from latent_tune.report import main as report_main
from latent_tune.training.config_loading import load_config
from latent_tune.training.evaluate import STABILITY_PREFIX, DatasetEval, crossval_objective
from latent_tune.training.trainer import Trainer
from latent_tune.tune.cli import start_local_ray
from latent_tune.tune.run import write_html
from latent_tune.tune.smoothing import Smoother, rank_metric, smooth_series
from latent_tune.tune.space import Objective, parse_space
from latent_tune.tune.trainable import SMOOTHER_KEY, _restore, _write_checkpoint, smooth_report
from tests.ray_cluster import QUIET
from tests.tiny_search import run_search, tiny_overrides, tiny_space, write_space

ROOT = Path(__file__).resolve().parents[1]
METRIC = "crossval_rollout_mse"
SMOOTHED = f"{METRIC}_smoothed"
EMA = {"type": "ema", "alpha": 0.5}


def _space(objective: dict) -> dict:
    return tiny_space("s", tiny_overrides(2), objective=objective)


class SmoothingSchema(unittest.TestCase):
    def _problem(self, smoothing: dict) -> str:
        with self.assertRaises(UserInputError) as cm:
            parse_space(_space({"metric": METRIC, "smoothing": smoothing}), "s.yaml")
        return str(cm.exception)

    def test_default_is_no_smoothing_and_the_raw_key_ranks(self) -> None:
        sp = parse_space(_space({"metric": METRIC}), "s.yaml")
        self.assertEqual(sp.objective.smoothing.type, "none")
        self.assertEqual(sp.objective.rank_metric, METRIC)
        self.assertFalse(sp.report.html)  # tiny_space turns the page off
        raw = _space({})
        del raw["report"]
        self.assertTrue(parse_space(raw, "s.yaml").report.html)  # on by default

    def test_smoothed_key_and_record(self) -> None:
        sp = parse_space(_space({"metric": METRIC, "mode": "min", "smoothing": EMA}), "s.yaml")
        self.assertEqual(sp.objective.rank_metric, SMOOTHED)
        rec = sp.objective.record()
        self.assertEqual((rec["metric"], rec["rank_metric"]), (METRIC, SMOOTHED))
        self.assertEqual(rec["smoothing"], {"type": "ema", "alpha": 0.5, "k": 3})

    def test_bad_values_name_the_key(self) -> None:
        for smoothing, key in (
            ({"type": "ema", "alpha": 0.0}, "objective.smoothing.alpha"),
            ({"type": "ema", "alpha": 1.5}, "objective.smoothing.alpha"),
            ({"type": "mean_of_last", "k": 0}, "objective.smoothing.k"),
            ({"type": "kalman"}, "objective.smoothing.type"),
            ({"type": "ema", "beta": 0.1}, "objective.smoothing.beta"),
        ):
            with self.subTest(smoothing=smoothing):
                self.assertIn(key, self._problem(smoothing))

    def test_alpha_one_is_allowed(self) -> None:
        sp = parse_space(_space({"smoothing": {"type": "ema", "alpha": 1.0}}), "s.yaml")
        self.assertEqual(sp.objective.smoothing.alpha, 1.0)


class SmoothingRules(unittest.TestCase):
    CURVE = [4.0, 1.0, 10.0, 2.0, 3.0]

    def test_ema_by_hand(self) -> None:
        out = smooth_series(self.CURVE, None, {"type": "ema", "alpha": 0.25})
        s, want = None, []
        for x in self.CURVE:
            s = x if s is None else 0.25 * x + 0.75 * s
            want.append(s)
        for got, exp in zip(out, want):
            self.assertAlmostEqual(got, exp)
        self.assertAlmostEqual(out[2], 0.25 * 10 + 0.75 * (0.25 * 1 + 0.75 * 4))

    def test_ema_alpha_one_and_none_are_the_raw_curve(self) -> None:
        self.assertEqual(smooth_series(self.CURVE, None, {"type": "ema", "alpha": 1.0}), self.CURVE)
        self.assertEqual(smooth_series(self.CURVE, None, {"type": "none"}), self.CURVE)

    def test_window_rules_use_the_last_k_evaluations(self) -> None:
        rules = (("mean_of_last", statistics.fmean), ("median_of_last", statistics.median))
        for rule, agg in rules:
            for k in (1, 2, 3, 10):
                with self.subTest(rule=rule, k=k):
                    out = smooth_series(self.CURVE, None, {"type": rule, "k": k})
                    want = [agg(self.CURVE[max(0, i + 1 - k) : i + 1]) for i in range(5)]
                    for got, exp in zip(out, want):
                        self.assertAlmostEqual(got, exp)
        # median of the last 3 ignores the one-epoch spike to 10
        self.assertEqual(smooth_series(self.CURVE, None, {"type": "median_of_last"})[3], 2.0)

    def test_epochs_without_evaluation_do_not_update(self) -> None:
        # evaluation every 2 epochs: the epochs between repeat the previous raw value
        raw = [4.0, 4.0, 1.0, 1.0, 10.0, 10.0]
        flags = [True, False, True, False, True, False]
        evaluated_only = [4.0, 1.0, 10.0]
        for spec in (EMA, {"type": "mean_of_last", "k": 2}, {"type": "median_of_last", "k": 3}):
            with self.subTest(spec=spec):
                got = smooth_series(raw, flags, spec)
                want = smooth_series(evaluated_only, None, spec)
                self.assertEqual(got, [want[0], want[0], want[1], want[1], want[2], want[2]])
                self.assertNotEqual(got, smooth_series(raw, None, spec))

    def test_penalty_is_applied_to_each_raw_evaluation_before_smoothing(self) -> None:
        """An exploding rollout enters the smoother as its finite penalty, 10 x constant."""

        def ev(mse: float, finite: bool = True) -> DatasetEval:
            return DatasetEval(
                metrics={
                    "mse_overall": mse,
                    "constant_mse_overall": 0.2,
                    f"{STABILITY_PREFIX}mse_intervening": mse,
                    f"{STABILITY_PREFIX}first_divergence_step": 100.0,
                },
                finite=finite,
                rollout_steps=100,
                tu=4,
                horizon=8,
                starts=torch.zeros(1, dtype=torch.long),
                curves=torch.zeros(1, 100),
                constant_curve=torch.zeros(100),
                short={},
                best_start=0,
                worst_start=0,
            )

        epochs = [ev(0.1), ev(math.inf, finite=False), ev(5.0), ev(0.1)]
        smoother = Smoother.from_spec(EMA)
        raw, smoothed = [], []
        for e in epochs:
            report = {METRIC: crossval_objective({"a": e}, 10.0)[METRIC], "evaluated": True}
            self.assertEqual(smooth_report(report, METRIC, smoother), SMOOTHED)
            raw.append(report[METRIC])
            smoothed.append(report[SMOOTHED])
        self.assertEqual(raw, [0.1, 2.0, 2.0, 0.1])  # inf and 5.0 > 10 x 0.2: the penalty
        self.assertEqual(smoothed, smooth_series([0.1, 2.0, 2.0, 0.1], None, EMA))
        self.assertTrue(all(math.isfinite(v) for v in smoothed))

    def test_no_smoothing_adds_no_key(self) -> None:
        report = {METRIC: 1.0, "evaluated": True}
        self.assertIsNone(smooth_report(report, METRIC, Smoother()))
        self.assertNotIn(SMOOTHED, report)

    def test_a_non_finite_value_is_reported_but_not_folded_in(self) -> None:
        out = smooth_series([1.0, math.nan, 3.0], None, EMA)
        self.assertTrue(math.isnan(out[1]))
        self.assertEqual(out[2], 2.0)

    def test_state_round_trip_continues_exactly(self) -> None:
        curve = [5.0, 1.0, 7.0, 2.0, 2.5, 9.0, 1.0]
        flags = [True, True, False, True, True, False, True]
        for spec in (EMA, {"type": "mean_of_last", "k": 3}, {"type": "median_of_last", "k": 2}):
            with self.subTest(spec=spec):
                whole = smooth_series(curve, flags, spec)
                first = Smoother.from_spec(spec)
                head = [first.update(v, e) for v, e in zip(curve[:3], flags[:3])]
                state = json.loads(json.dumps(first.state_dict()))  # as meta.json holds it
                second = Smoother.from_spec(spec)
                second.load_state_dict(state)
                tail = [second.update(v, e) for v, e in zip(curve[3:], flags[3:])]
                self.assertEqual(head + tail, whole)

    def test_rank_metric_key(self) -> None:
        self.assertEqual(rank_metric(METRIC, "none"), METRIC)
        self.assertEqual(rank_metric(METRIC, "median_of_last"), SMOOTHED)
        with self.assertRaises(ValueError):
            Smoother("ema", alpha=0.0)


class SmootherInTheCheckpoint(unittest.TestCase):
    """The trainable's checkpoint carries the smoother; a resume and a PBT clone continue it."""

    def test_own_resume_and_donor_exploit_continue_the_smoother(self) -> None:
        tmp = Path(tempfile.mkdtemp(prefix="lt-smooth-ckpt-"))
        self.addCleanup(shutil.rmtree, tmp, ignore_errors=True)
        suite = ensure_demo_suite("tiny")  # the cache the tiny searches use too
        cfg = load_config(
            ROOT / "trainables" / "eed_staggered_tiny.yaml",
            [f"data.suite={suite}", *(f"{k}={v}" for k, v in tiny_overrides(3).items())],
        )
        donor = Trainer(cfg, None, "cpu")
        smoother = Smoother.from_spec({"type": "median_of_last", "k": 2})
        for _ in range(2):
            smooth_report(donor.train_epoch(), METRIC, smoother)
        smoother.update(0.123)  # a state no fresh smoother has
        ckpt = tmp / "ckpt"
        ckpt.mkdir()
        params = {"training.learning_rate": 1e-3}
        _write_checkpoint(donor, ckpt, params, 2, "donor", smoother=smoother)
        self.assertEqual(
            json.loads((ckpt / "meta.json").read_text())[SMOOTHER_KEY], smoother.state_dict()
        )
        for trial_id in ("donor", "clone"):  # a resume of its own; a PBT exploit of another
            with self.subTest(trial_id=trial_id):
                trial_dir = tmp / trial_id
                trial_dir.mkdir()
                fresh = Smoother.from_spec({"type": "median_of_last", "k": 2})
                target = Trainer(cfg, None, "cpu")
                _restore(
                    target,
                    Checkpoint.from_directory(ckpt),
                    trial_dir,
                    params,
                    trial_id,
                    smoother=fresh,
                )
                self.assertEqual(fresh.state_dict(), smoother.state_dict())
                self.assertEqual(target.epoch, 2)


def _report(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = report_main(argv)
    return rc, out.getvalue(), err.getvalue()


class ReportReadsObjectiveAndVerification(unittest.TestCase):
    """`report` on synthetic exported experiments (no Ray)."""

    def setUp(self) -> None:
        self.exp = Path(tempfile.mkdtemp(prefix="lt-smooth-rep-")) / "exp"
        self.exp.mkdir(parents=True)
        self.addCleanup(shutil.rmtree, self.exp.parent, ignore_errors=True)
        # raw best favours t1 (one lucky epoch), the smoothed objective favours t2
        pd.DataFrame(
            {
                "rank": [1, 2, 3],
                "trial_id": ["t1", "t2", "t3"],
                "status": ["completed"] * 3,
                "epochs": [6, 6, 6],
                f"final_{METRIC}": [0.9, 0.35, 0.5],
                f"best_{METRIC}": [0.2, 0.3, 0.4],
                "best_epoch": [3, 5, 6],
                f"final_{SMOOTHED}": [0.8, 0.33, 0.5],
                f"best_{SMOOTHED}": [0.6, 0.33, 0.45],
                "training.learning_rate": [1e-3, 2e-3, 3e-3],
            }
        ).to_parquet(self.exp / "trials.parquet")

    def _order(self, out: str) -> list[str]:
        return [line.split()[1] for line in out.splitlines()[1:4]]

    def test_without_objective_json_the_old_guess_ranks_raw(self) -> None:
        rc, out, err = _report([str(self.exp)])
        self.assertEqual(rc, 0, err)
        self.assertEqual(self._order(out), ["t1", "t2", "t3"])

    def test_objective_json_names_the_rank_metric(self) -> None:
        record = {"metric": METRIC, "mode": "min", "rank_metric": SMOOTHED, "smoothing": EMA}
        (self.exp / "objective.json").write_text(json.dumps(record))
        rc, out, err = _report([str(self.exp)])
        self.assertEqual(rc, 0, err)
        self.assertEqual(self._order(out), ["t2", "t3", "t1"])
        header = out.splitlines()[0].split()
        self.assertLess(header.index(f"best_{SMOOTHED}"), header.index(f"best_{METRIC}"))
        # a recorded mode max ranks the other way round
        (self.exp / "objective.json").write_text(json.dumps({**record, "mode": "max"}))
        _, out, _ = _report([str(self.exp)])
        self.assertEqual(self._order(out), ["t1", "t3", "t2"])

    def test_broken_objective_json_is_one_line_exit_2(self) -> None:
        (self.exp / "objective.json").write_text("{not json")
        rc, out, err = _report([str(self.exp)])
        self.assertEqual(rc, 2)
        self.assertEqual(len(err.strip().splitlines()), 1)
        self.assertIn("objective.json", err)

    def test_verified_columns_and_within_noise_marks(self) -> None:
        common = {"n": 3, "seeds": "0,1,2", "best_min": 0.0, "best_max": 1.0, "metric": METRIC}
        rows = [
            ("base", "base", None, 0.50, 0.05, 0.0, 0.0, 0.0, False, 4),
            ("t2", "candidate", 1, 0.31, 0.02, -0.19, -0.25, -0.13, True, 1),
            ("t1", "candidate", 2, 0.33, 0.04, -0.17, -0.24, -0.10, True, 2),
            ("t3", "candidate", 3, 0.45, 0.03, -0.05, -0.09, -0.01, False, 3),
        ]
        cols = ["trial_id", "role", "search_rank", "best_mean", "best_sd"]
        cols += ["diff_mean", "diff_lo", "diff_hi", "within_noise", "verified_rank"]
        ver = pd.DataFrame([dict(zip(cols, r)) for r in rows]).assign(**common)
        ver["final_mean"] = ver["best_mean"]
        ver.to_parquet(self.exp / "verified.parquet")
        rc, out, err = _report([str(self.exp)])
        self.assertEqual(rc, 0, err)
        lines = out.splitlines()
        header = lines[0].split()
        for col in ("verified", "v_noise", "v_rank"):
            self.assertIn(col, header)
        by_id = {line.split()[1]: line for line in lines[1:4]}
        self.assertIn("0.31+-0.02(n=3)", by_id["t2"])
        self.assertIn("-0.19[-0.25,-0.13]", by_id["t2"])
        self.assertRegex(by_id["t1"], r"\s~\s+2\s*$")
        self.assertRegex(by_id["t2"], r"\s~\s+1\s*$")
        self.assertNotIn(" ~ ", by_id["t3"])
        self.assertTrue(any(line.startswith("base (reference recipe)") for line in lines))
        self.assertTrue(any("within noise of the verified winner" in line for line in lines))

    def test_verified_without_a_required_column_is_refused(self) -> None:
        pd.DataFrame({"trial_id": ["t1"], "role": ["candidate"]}).to_parquet(
            self.exp / "verified.parquet"
        )
        rc, _, err = _report([str(self.exp)])
        self.assertEqual(rc, 2)
        self.assertIn("verified.parquet", err)


class ReportHtmlAtTheEnd(unittest.TestCase):
    """The search's report.html hook: a page ranked like the tables, or one warning line."""

    def setUp(self) -> None:
        self.exp = Path(tempfile.mkdtemp(prefix="lt-smooth-html-")) / "exp"
        self.exp.mkdir(parents=True)
        self.addCleanup(shutil.rmtree, self.exp.parent, ignore_errors=True)

    def _run(self, objective: Objective) -> str:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            write_html(self.exp, objective)
        return out.getvalue()

    def test_page_written_and_ranked_by_the_rank_metric(self) -> None:
        rows = []
        for i, tid in enumerate(("t1", "t2", "t3")):
            raw = [0.5, 0.2 + 0.1 * i, 0.9 - 0.2 * i, 0.4]  # t1: lucky dip, t3: steady
            flags = [True] * 4
            sm = smooth_series(raw, flags, EMA)
            for e in range(4):
                rows.append(
                    {
                        "trial_id": tid,
                        "epoch": e + 1,
                        METRIC: raw[e],
                        SMOOTHED: sm[e],
                        "evaluated": True,
                        "training.learning_rate": 1e-3 * (i + 1),
                    }
                )
        pd.DataFrame(rows).to_parquet(self.exp / "results.parquet")
        objective = Objective(metric=METRIC, smoothing=EMA)
        out = self._run(objective)
        page = (self.exp / "report.html").read_text()
        self.assertIn("report.html", out)
        self.assertIn(f"best_{SMOOTHED}", page)

    def test_a_failing_report_is_one_warning_line(self) -> None:
        out = self._run(Objective(metric=METRIC))  # empty dir: nothing to report
        self.assertFalse((self.exp / "report.html").exists())
        lines = out.strip().splitlines()
        self.assertEqual(len(lines), 1)
        self.assertTrue(lines[0].startswith("warning: report.html not written"))


class SmoothedAshaSearch(unittest.TestCase):
    """One tiny ASHA search with ema smoothing on a real local Ray."""

    tmp: Path
    exp: Path
    out: str

    @classmethod
    def setUpClass(cls) -> None:
        os.environ.update(QUIET)
        cls.tmp = Path(tempfile.mkdtemp(prefix="lt-smooth-"))
        start_local_ray(num_cpus=2, include_dashboard=False)
        space = tiny_space(
            "smooth",
            tiny_overrides(3, {"evaluation.every": 3, "evaluation.divergence_threshold": 100.0}),
            objective={"metric": METRIC, "mode": "min", "smoothing": EMA},
            scheduler={"type": "asha", "grace_period": 1, "reduction_factor": 2},
            trials={"num_samples": 3, "max_concurrent": 2},
            resources={"cpu": 1},
        )
        path = write_space(cls.tmp, space)
        rc, cls.out = run_search([str(path), "--storage", str(cls.tmp / "res"), "--name", "e"])
        assert rc == 0, cls.out
        cls.exp = cls.tmp / "res" / "e"

    @classmethod
    def tearDownClass(cls) -> None:
        ray.shutdown()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def test_objective_json_names_the_rank_metric(self) -> None:
        rec = json.loads((self.exp / "objective.json").read_text())
        self.assertEqual(rec["metric"], METRIC)
        self.assertEqual(rec["rank_metric"], SMOOTHED)
        self.assertEqual(rec["smoothing"]["type"], "ema")
        self.assertFalse((self.exp / "report.html").exists())  # tiny_space turns it off

    def test_results_hold_both_keys_and_the_smoothed_one_is_the_ema(self) -> None:
        results = pd.read_parquet(self.exp / "results.parquet")
        self.assertIn(METRIC, results.columns)
        self.assertIn(SMOOTHED, results.columns)
        self.assertFalse(results["evaluated"].all())  # evaluation.every 3: epoch 2 is not
        for tid, unsorted in results.groupby("trial_id"):
            rows = unsorted.sort_values("epoch")
            want = smooth_series(list(rows[METRIC]), list(rows["evaluated"]), EMA)
            for got, exp in zip(rows[SMOOTHED], want):
                self.assertAlmostEqual(got, exp, places=6, msg=tid)

    def test_trials_ranked_by_the_smoothed_best(self) -> None:
        trials = pd.read_parquet(self.exp / "trials.parquet")
        for col in (METRIC, SMOOTHED):
            self.assertIn(f"best_{col}", trials.columns)
            self.assertIn(f"final_{col}", trials.columns)
        ranked = list(trials[f"best_{SMOOTHED}"])
        self.assertEqual(ranked, sorted(ranked))
        summary = json.loads((self.exp / "best" / "summary.json").read_text())
        self.assertEqual(summary["rank_metric"], SMOOTHED)
        self.assertEqual(summary["trial_id"], trials.iloc[0]["trial_id"])
        self.assertIn(f"best_{SMOOTHED}", self.out)  # the console table shows the ranking key

    def test_checkpoint_keeps_the_smoother_and_tensorboard_has_the_scalar(self) -> None:
        results = pd.read_parquet(self.exp / "results.parquet")
        trials = pd.read_parquet(self.exp / "trials.parquet")
        path = Path(trials.iloc[0]["path"])
        metas = sorted(path.glob("checkpoint_*/meta.json"))
        self.assertTrue(metas)
        meta = json.loads(metas[-1].read_text())
        rows = results[results["trial_id"] == trials.iloc[0]["trial_id"]]
        at = rows[rows["epoch"] == meta["epoch"]].iloc[0]
        self.assertAlmostEqual(meta[SMOOTHER_KEY]["ema"], at[SMOOTHED], places=6)
        events = sorted(path.glob("events.out.tfevents.*"))
        tags = set()
        for e in events:
            acc = EventAccumulator(str(e))
            acc.Reload()
            tags |= set(acc.Tags().get("scalars", []))
        self.assertIn(f"Objective/{SMOOTHED}", tags)
        self.assertIn(f"Objective/{METRIC}", tags)


if __name__ == "__main__":
    unittest.main()
