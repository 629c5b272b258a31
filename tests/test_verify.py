"""Seed verification end to end on a real local Ray (one Ray and one tiny search per module).

A tiny FIFO search leaves the records verification needs; `verify --top 2 --seeds 2` re-trains
the two best configurations and the base with the same two new seeds, writes the table, exports
the winner's typical run as best/ (the search's own as best_search/), and resumes after Ctrl+C
without rerunning finished runs. Bad input is one line, status 2, nothing written.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest
from pathlib import Path

import pandas as pd
import ray
import yaml
from scipy import stats

from latent_tune.search import main as search_main
from latent_tune.train import main as train_main
from latent_tune.training.config_loading import load_config
from latent_tune.training.trainer import Trainer
from latent_tune.tune.cli import start_local_ray
from latent_tune.tune.space import load_space
from latent_tune.tune.verify_stats import paired_interval
from latent_tune.tune.verify_table import COLUMNS, RunResult, format_verified, verified_table
from latent_tune.verify import main as verify_main
from tests.ray_cluster import QUIET
from tests.tiny_search import FIRST_FINISH_S, run_search, tiny_overrides, tiny_space, write_space

ROOT = Path(__file__).resolve().parents[1]
LR = "training.learning_rate"


def _run(main, argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


def _listing(d: Path) -> list[str]:
    return sorted(str(p.relative_to(d)) for p in d.rglob("*")) if d.exists() else []


def _runs(verify_dir: Path) -> dict[tuple[str, int], tuple[Path, list[dict]]]:
    """(config id, seed) -> (run dir, its per-epoch reports) of a verification's Tune dir."""
    out = {}
    for f in verify_dir.glob("*/result.json"):
        rows = [json.loads(x) for x in f.read_text().splitlines() if x.strip()]
        if rows:
            cfg = rows[-1]["config"]
            out[(cfg["config_id"], int(cfg["training.seed"]))] = (f.parent, rows)
    return out


def _best(rows: list[dict]) -> float:
    """A run's best objective, unpenalised epochs preferred (as the search ranks)."""
    ok = [r for r in rows if not r["penalised"]] or rows
    return min(r["crossval_rollout_mse"] for r in ok)


class VerifyE2E(unittest.TestCase):
    tmp: Path
    exp: Path
    space: Path

    @classmethod
    def setUpClass(cls) -> None:
        os.environ.update(QUIET)
        cls.tmp = Path(tempfile.mkdtemp(prefix="lt-verify-"))
        start_local_ray(num_cpus=2, include_dashboard=False)
        cls.space = write_space(
            cls.tmp,
            tiny_space(
                "vsearch",
                tiny_overrides(2),
                trials={"num_samples": 3, "max_concurrent": 2},
            ),
        )
        rc, out = run_search([str(cls.space), "--storage", str(cls.tmp / "res"), "--name", "s"])
        assert rc == 0, out
        cls.exp = cls.tmp / "res" / "s"

    @classmethod
    def tearDownClass(cls) -> None:
        ray.shutdown()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def test_search_records(self) -> None:
        space = load_space(self.exp / "space.yaml")
        self.assertEqual(space.model_dump(), load_space(self.space).model_dump())
        base = load_config(self.exp / "base_config.yaml")
        self.assertEqual(base.training.epochs, 2)
        self.assertEqual(base.evaluation.rollout_steps, 150)
        windows = json.loads((self.exp / "eval_windows.json").read_text())
        ev = base.evaluation
        self.assertEqual(
            (windows["seed"], windows["start_margin"], windows["rollout_steps"]),
            (ev.seed, ev.start_margin, ev.rollout_steps),
        )
        trainer = Trainer(base, None, "cpu")  # the windows a trial is really scored on
        scored = {es.name: es.starts.tolist() for es in [trainer.val, *trainer.crossval]}
        self.assertEqual(windows["starts"], scored)
        self.assertEqual(
            windows["test_starts"], {es.name: es.starts.tolist() for es in trainer.test}
        )
        self.assertTrue(windows["test_starts"])  # 150-step rollouts fit the tiny test thirds
        for name, starts in windows["starts"].items():
            self.assertGreaterEqual(min(starts), ev.start_margin, name)
        trainer.close()

    def test_verify_interrupted_then_resumed(self) -> None:
        """Ctrl+C after the first run finished, resume: finished runs are not rerun; then the
        table, the exports and a retrain of best/ (one verification: the CPU budget)."""
        exp = self.exp
        search_best = json.loads((exp / "best" / "summary.json").read_text())
        env = {**os.environ, **QUIET, "PYTHONPATH": str(ROOT)}
        env.pop("RAY_ADDRESS", None)
        argv = [str(exp), "--top", "2", "--seeds", "2"]
        proc = subprocess.Popen(
            [sys.executable, "-m", "latent_tune.verify", *argv],
            cwd=self.tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
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
        self.assertIn("latent_tune.verify", text.split("resume with:")[-1])
        self.assertFalse((exp / "verified.parquet").exists())
        done = {
            k: (d / "result.json").read_bytes()
            for k, (d, rows) in _runs(exp / "verify").items()
            if rows[-1]["epoch"] == 2
        }
        self.assertTrue(done, text)
        # a resume must ask for the same plan
        rc, _, err = _run(verify_main, [str(exp), "--top", "2", "--seeds", "3"])
        self.assertEqual(rc, 2)
        self.assertIn("--seeds 2", err)
        rc, out, err = _run(verify_main, [str(exp)])  # the recorded --top 2 --seeds 2
        self.assertEqual(rc, 0, out + err)
        self.assertIn("resuming", out)
        runs = _runs(exp / "verify")
        self.assertEqual(len(runs), 6)
        for k, before in done.items():
            self.assertEqual((runs[k][0] / "result.json").read_bytes(), before, k)
        self._check_verified(out, search_best)

    def _check_verified(self, out: str, search_best: dict) -> None:
        """verified.parquet, best/ and best_search/ of a finished --top 2 --seeds 2."""
        trials = pd.read_parquet(self.exp / "trials.parquet")
        df = pd.read_parquet(self.exp / "verified.parquet")
        self.assertEqual(list(df.columns), [*COLUMNS, LR])
        self.assertEqual(len(df), 3)
        self.assertEqual(sorted(df["role"]), ["base", "candidate", "candidate"])
        top2 = trials.sort_values("rank").head(2)
        self.assertEqual(set(df[df["role"] == "candidate"]["trial_id"]), set(top2["trial_id"]))
        seeds = [list(s) for s in df["seeds"]]
        self.assertEqual(len(seeds[0]), 2)
        self.assertTrue(all(s == seeds[0] for s in seeds), seeds)  # paired: the same seeds
        self.assertNotIn(234, seeds[0])  # new seeds (the tiny base trains with 234)
        self.assertTrue((df["n"] == 2).all())
        self.assertTrue((df["best_sd"] > 0).all(), df[["trial_id", "best_sd"]])
        self.assertTrue((df["best_min"] <= df["best_mean"]).all())
        self.assertEqual(sorted(df["verified_rank"]), [1, 2, 3])
        base = df[df["role"] == "base"].iloc[0]
        self.assertEqual(base["trial_id"], "base")
        self.assertTrue(pd.isna(base["search_rank"]) and math.isnan(base["search_value"]))
        self.assertAlmostEqual(base["diff_mean"], 0.0)
        self.assertAlmostEqual(base[LR], 1e-3)  # the base's own value of the tuned key
        for _, row in df[df["role"] == "candidate"].iterrows():
            t = trials[trials["trial_id"] == row["trial_id"]].iloc[0]
            self.assertEqual(row["search_rank"], t["rank"])
            self.assertAlmostEqual(row["search_value"], t["best_crossval_rollout_mse"])
            self.assertAlmostEqual(row[LR], t[LR])
            self.assertLessEqual(row["diff_lo"], row["diff_mean"])
            self.assertLessEqual(row["diff_mean"], row["diff_hi"])
        self.assertFalse(bool(df.iloc[0]["within_noise"]))  # the winner
        # per run: the table agrees with the runs' own reports; paired diffs by seed
        runs = _runs(self.exp / "verify")
        self.assertEqual(len(runs), 6)
        best = {k: _best(rows) for k, (_, rows) in runs.items()}
        for _, row in df.iterrows():
            vals = [best[(row["trial_id"], s)] for s in seeds[0]]
            self.assertAlmostEqual(row["best_mean"], sum(vals) / 2)
            diffs = [best[(row["trial_id"], s)] - best[("base", s)] for s in seeds[0]]
            self.assertAlmostEqual(row["diff_mean"], sum(diffs) / 2)
        # best/: the winner's typical run; best_search/: the search's own export
        winner = df.iloc[0]
        summary = json.loads((self.exp / "best" / "summary.json").read_text())
        self.assertTrue(summary["verified"])
        self.assertEqual(summary["trial_id"], winner["trial_id"])
        closest = min(
            seeds[0], key=lambda s: abs(best[(winner["trial_id"], s)] - winner["best_mean"])
        )
        self.assertEqual(summary["seed"], closest)
        self.assertIn("typical run", summary["exported_run"])
        self.assertIn("typical run", out)
        self.assertEqual(load_config(self.exp / "best" / "config.yaml").training.seed, closest)
        moved = json.loads((self.exp / "best_search" / "summary.json").read_text())
        self.assertEqual(moved, search_best)
        self.assertIn("Spearman", out)
        rc, tout, terr = _run(
            train_main,
            [str(self.exp / "best" / "config.yaml"), "--set", "training.epochs=1",
             "--out", str(self.tmp / "retrain")],
        )  # fmt: skip
        self.assertEqual(rc, 0, tout + terr)


class VerifyInputErrors(unittest.TestCase):
    """One line, status 2, nothing written: checked before Ray (none is started here)."""

    def setUp(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="lt-verify-err-"))
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def _experiment(self, **sections) -> Path:
        """A hand-made experiment dir: what a search records, and a two-trial table."""
        exp = self.tmp / "exp"
        exp.mkdir()
        space = tiny_space("hand", tiny_overrides(2), **sections)
        sp = load_space(write_space(self.tmp, space))
        (exp / "space.yaml").write_text(yaml.safe_dump(sp.model_dump(mode="json")))
        base = load_config(ROOT / "trainables" / "eed_staggered_tiny.yaml")
        (exp / "base_config.yaml").write_text(base.to_yaml())
        pd.DataFrame(
            {"rank": [1, 2], "trial_id": ["a_00000", "a_00001"],
             "best_crossval_rollout_mse": [0.1, 0.2], LR: [1e-3, 2e-3]}
        ).to_parquet(exp / "trials.parquet")  # fmt: skip
        return exp

    def _refused(self, argv: list[str], *expected: str) -> None:
        before = _listing(self.tmp)
        rc, out, err = _run(verify_main, argv)
        self.assertEqual(rc, 2, out + err)
        self.assertEqual(len(err.strip().splitlines()), 1, err)
        for e in expected:
            self.assertIn(e, err)
        self.assertEqual(_listing(self.tmp), before)

    def test_bad_counts(self) -> None:
        exp = self._experiment()
        self._refused([str(exp), "--top", "0"], "--top", "between 1 and 2")
        self._refused([str(exp), "--top", "3"], "--top", "between 1 and 2")
        self._refused([str(exp), "--seeds", "0"], "--seeds", "at least 1")
        self._refused([str(exp), "--top", "x"], "--top")
        trials = pd.read_parquet(exp / "trials.parquet")
        trials.loc[1, LR] = float("nan")
        trials.to_parquet(exp / "trials.parquet")
        self._refused(
            [str(exp), "--top", "2"], "trials.parquet: training.learning_rate:", "a_00001"
        )

    def test_missing(self) -> None:
        self._refused([str(self.tmp / "nope")], "no such experiment directory")
        exp = self._experiment()
        (exp / "space.yaml").unlink()
        self._refused([str(exp)], "no space.yaml")
        (exp / "trials.parquet").unlink()
        self._refused([str(exp)], "no trials.parquet")

    def test_population_based_refused(self) -> None:
        exp = self._experiment(
            scheduler={"type": "pbt", "perturbation_interval": 1},
            searcher={"type": "random", "seed": 0},
        )
        self._refused([str(exp)], "space.yaml: scheduler.type:", "PBT replay is future work")

    def test_search_refuses_tuned_evaluation_and_bad_verify(self) -> None:
        space = tiny_space("ev", tiny_overrides(2))
        space["space"] = {**space["space"], "evaluation.seed": {"choice": [0, 1]}}
        path = write_space(self.tmp, space)
        rc, out, err = _run(search_main, [str(path), "--dry-run"])
        self.assertEqual(rc, 2, out + err)
        self.assertIn(f"{path}: space.evaluation.seed:", err)
        ok = write_space(self.tmp, tiny_space("ok", tiny_overrides(2)))
        rc, out, err = _run(search_main, [str(ok), "--dry-run", "--verify", "0"])
        self.assertEqual(rc, 2, out + err)
        self.assertIn("--verify", err)


class VerifyTable(unittest.TestCase):
    """The table's statistics on hand-made runs (no Ray)."""

    def test_paired_interval_is_the_paired_t_interval(self) -> None:
        a = {1: 1.0, 2: 2.0, 3: 4.0, 4: 9.0}
        b = {1: 0.5, 2: 1.0, 3: 3.0, 5: 1.0}  # seeds 4 and 5 have no partner: left out
        mean, lo, hi, n = paired_interval(a, b)
        ci = stats.ttest_rel([1.0, 2.0, 4.0], [0.5, 1.0, 3.0]).confidence_interval(0.95)
        self.assertEqual(n, 3)
        self.assertAlmostEqual(mean, 2.5 / 3)
        self.assertAlmostEqual(lo, ci.low)
        self.assertAlmostEqual(hi, ci.high)
        self.assertTrue(math.isnan(paired_interval({1: 1.0}, {1: 0.0})[1]))

    def test_ranks_noise_and_unfinished_runs(self) -> None:
        def run(cid: str, seed: int, best: float, complete: bool = True) -> RunResult:
            return RunResult(cid, seed, complete, best, 1, best, math.nan, f"{cid}{seed}", None)

        runs = [run("base", s, 1.0 + 0.1 * s) for s in (1, 2, 3)]
        runs += [run("a", s, 2.0 + 0.1 * s + 0.01 * (s == 2)) for s in (1, 2, 3)]
        runs += [run("b", s, 2.0 + 0.1 * s) for s in (1, 2)] + [run("b", 3, 9.0, False)]
        configs = {"base": {LR: 1e-3}, "a": {LR: 2e-3}, "b": {LR: 3e-3}}
        df = verified_table(
            runs, configs=configs, search_rank={"a": 1, "b": 2},
            search_value={"a": 2.5, "b": 2.6}, params=[LR], metric="m", mode="max",
        )  # fmt: skip
        self.assertEqual(list(df["trial_id"]), ["a", "b", "base"])  # mode max: largest first
        self.assertEqual(list(df["verified_rank"]), [1, 2, 3])
        b = df.set_index("trial_id").loc["b"]
        self.assertEqual((b["n"], list(b["seeds"])), (2, [1, 2]))  # the unfinished run is out
        self.assertAlmostEqual(b["diff_mean"], 1.0)  # paired with the base on seeds 1 and 2
        # b - a on seeds 1, 2: [0, -0.01]: the interval covers 0; the base is far below
        self.assertEqual(list(df["within_noise"]), [False, True, False])
        self.assertIn("Spearman", format_verified(df, [LR], "max"))


if __name__ == "__main__":
    unittest.main()
