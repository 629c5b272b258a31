"""The performance benchmarks run and write sound JSON (on CPU, at their smallest sizes).

Why: `bench/gpu_checks.sh` runs these on a GPU machine that is lent rarely and briefly; a bench
broken by a refactor would waste that lease. The numbers themselves are not asserted (timings
are benchmarks, not tests), only what must hold whatever the machine.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import math
import os
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "trainables" / "eed_staggered_tiny.yaml"
# A training bench at its smallest: tiny epochs and rollouts (the numbers mean nothing).
SMALL_RUN = (
    "--set", "training.chunks_per_epoch=1",
    "--set", "training.batches_per_chunk=3",
    "--set", "training.chunk_steps=1024",
    "--set", "evaluation.rollout_steps=60",
    "--set", "evaluation.starts=2",
)  # fmt: skip


def load_bench(name: str) -> ModuleType:
    """A bench script as a module (bench/ is no package; its scripts import their siblings)."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while it executes
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(ROOT / "bench"))


def run_bench(script: str, *args: str, cache: Path) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.json"
        path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
        env = {**os.environ, "LATENT_TUNE_DATA": str(cache), "PYTHONPATH": path}
        proc = subprocess.run(
            [sys.executable, str(ROOT / "bench" / script), *args, "--out", str(out)],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
            check=False,
        )
        if proc.returncode != 0:
            raise AssertionError(f"{script} failed:\n{proc.stderr[-3000:]}")
        return json.loads(out.read_text(encoding="utf-8"))


class TestBenchSmoke(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        cls._tmp = tempfile.TemporaryDirectory()
        cls.cache = Path(cls._tmp.name)

    @classmethod
    def tearDownClass(cls) -> None:
        cls._tmp.cleanup()

    def test_masked_decode_bench(self) -> None:
        args = ("--device", "cpu", "--sizes", "demo", "--steps", "1", "--rollout", "60", "--bf16")
        res = run_bench("bench_masked_decode.py", *args, "--threads", "1", cache=self.cache)
        self.assertEqual((res["bench"], res["device"]), ("masked_decode", "cpu"))
        demo = res["sizes"]["demo"]
        step = demo["train_step"]
        self.assertGreater(step["dense_step_s"], 0.0)
        self.assertGreater(step["masked_step_s"], 0.0)
        self.assertAlmostEqual(step["speedup"], step["dense_step_s"] / step["masked_step_s"], 1)
        roll = demo["rollout"]
        self.assertEqual(roll["rollout_steps"], 60)
        # On a CPU the fast rollout is the plain computation: the same objective to the bit.
        self.assertEqual(roll["mse_overall_fast"], roll["mse_overall_plain"])
        # --bf16 (the GPU checks pass it) times the bf16 step and rollout too.
        self.assertTrue(demo["train_step_bf16"]["bf16"])
        self.assertGreater(demo["train_step_bf16"]["masked_step_s"], 0.0)
        self.assertNotEqual(roll["mse_overall_fast_bf16"], roll["mse_overall_fast"])

    def test_bf16_bench(self) -> None:
        args = ("--device", "cpu", "--config", "tiny", "--epochs", "1", "--seeds", "0,1")
        res = run_bench("bench_bf16.py", *args, *SMALL_RUN, "--threads", "1", cache=self.cache)
        self.assertIn("training.batches_per_chunk=3", res["overrides"])
        head = (res["bench"], res["config"], res["epochs"])
        self.assertEqual(head, ("bf16_objective", "tiny", 1))
        self.assertEqual([r["seed"] for r in res["runs"]], [0, 1])
        for r in res["runs"]:
            for prec in ("float32", "bf16"):
                self.assertEqual(len(r[prec]["objective_by_epoch"]), 1)
                self.assertTrue(math.isfinite(r[prec]["final"]))
            # bf16 really acts on a CPU: the same seeded run ends somewhere else.
            self.assertNotEqual(r["bf16"]["final"], r["float32"]["final"])
            self.assertAlmostEqual(
                r["final_rel_diff"], r["bf16"]["final"] / r["float32"]["final"] - 1, 4
            )
        # Seeds 0 and 1 differ, so the yardstick is a real distance.
        self.assertGreater(res["summary"]["float32_seed_pair_final_rel_diff_mean_abs"], 0.0)

    def test_trial_memory_bench(self) -> None:
        args = ("--device", "cpu", "--preset", "tiny", "--batches", "1")
        res = run_bench("bench_trial_memory.py", *args, "--threads", "1", cache=self.cache)
        self.assertEqual((res["bench"], res["preset"]), ("trial_memory", "tiny"))
        self.assertEqual(res["suite"], "simulated (temporary)")
        self.assertTrue(math.isfinite(res["crossval_rollout_mse"]))
        # A CPU peak is the process's peak RSS: at least what it held before the trial.
        measured = res["measured"]
        self.assertGreaterEqual(measured["peak_gb"], measured["before_gb"])
        self.assertGreater(measured["before_gb"], 0.0)

    def test_stability_bench(self) -> None:
        args = (str(TINY), "--seeds", "2", "--epochs", "1", *SMALL_RUN, "--label", "smoke")
        keep = self.cache / "stability-runs"
        res = run_bench("bench_stability.py", *args, "--keep", str(keep), cache=self.cache)
        self.assertEqual((res["bench"], res["label"], res["epochs"]), ("stability", "smoke", 1))
        self.assertEqual(res["seeds"], [234, 235])  # the config's training.seed + i
        self.assertIn("evaluation.figures_every=0", res["overrides"])
        self.assertIn("training.epochs=1", res["overrides"])
        self.assertEqual([r["seed"] for r in res["runs"]], [234, 235])
        for r in res["runs"]:
            self.assertEqual(len(r["objective_by_epoch"]), 1)
            self.assertEqual(r["evaluated"], [True])
            self.assertEqual(r["final"], r["objective_by_epoch"][-1])
            self.assertEqual(r["best"], r["final"])  # one evaluation is its own best
            self.assertAlmostEqual(r["final_rel"], r["final"] / r["constant_rollout_mse"])
            self.assertIsNone(r["volatility"])  # needs two evaluations
        # Evaluation windows do not depend on the training seed: one constant baseline.
        consts = {r["constant_rollout_mse"] for r in res["runs"]}
        self.assertEqual(len(consts), 1)
        # ... while the seeds train different models.
        self.assertNotEqual(res["runs"][0]["final"], res["runs"][1]["final"])
        s = res["summary"]
        self.assertEqual((s["runs"], s["failed_runs"]), (2, 0))
        finals = [r["final_rel"] for r in res["runs"]]
        self.assertAlmostEqual(s["final_rel"]["mean"], sum(finals) / 2)
        self.assertAlmostEqual(s["final_rel"]["sd"], abs(finals[0] - finals[1]) / math.sqrt(2))
        checks = ("penalised_after_epoch_2", "cv_final", "final_over_best", "mean_best_rel")
        self.assertEqual(set(s["criteria"]), {*checks, "mean_final_rel"})
        self.assertTrue(all(isinstance(v, bool) for v in s["criteria"].values()))
        # The kept run dirs summarise to the same numbers without training again.
        again = run_bench("bench_stability.py", *args, "--from-runs", str(keep), cache=self.cache)
        strip = [{k: v for k, v in r.items() if k != "wall_s"} for r in res["runs"]]
        self.assertEqual(again["runs"], strip)
        self.assertEqual(again["summary"], s)

    def test_stability_bench_bad_override_is_one_line(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "out.json"
            proc = subprocess.run(
                [sys.executable, str(ROOT / "bench" / "bench_stability.py"), str(TINY)]
                + ["--seeds", "2", "--set", "training.nope=1", "--out", str(out)],
                capture_output=True,
                text=True,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
                timeout=120,
                check=False,
            )
            self.assertEqual(proc.returncode, 2)
            self.assertEqual(proc.stderr.strip(), proc.stderr.strip().splitlines()[0])
            self.assertTrue(proc.stderr.startswith(f"{TINY}: training.nope: "), proc.stderr)
            self.assertFalse(out.exists())


class TestStabilityMeasures(unittest.TestCase):
    """The stability bench's per-run numbers, from made-up history rows (no training)."""

    @classmethod
    def setUpClass(cls) -> None:
        cls.bench = load_bench("bench_stability")

    @staticmethod
    def row(epoch: int, x: float, *, evaluated: bool = True, penalised: bool = False) -> dict:
        return {
            "epoch": epoch,
            "crossval_rollout_mse": x,
            "evaluated": evaluated,
            "penalised": penalised,
            "constant_rollout_mse": 2.0,
            "best_crossval_rollout_mse": 0.5,
            "best_epoch": 2,
            "epoch_duration": 1.0,
        }

    def test_volatility_is_the_median_log_step_of_evaluated_epochs(self) -> None:
        rows = [
            self.row(1, 1.0),
            self.row(2, 0.5),
            self.row(3, 0.5, evaluated=False),  # carried forward, not a step
            self.row(4, 20.0, penalised=True),
            self.row(5, 1.0),
        ]
        run = self.bench.summarise_run(7, rows)
        steps = sorted([math.log(2), math.log(40), math.log(20)])
        self.assertAlmostEqual(run["volatility"], steps[1])
        self.assertEqual(run["last_penalised_epoch"], 4)
        self.assertEqual(run["last_worse_than_constant_epoch"], 4)  # 1.0 < const 2.0 at 5
        self.assertEqual((run["best_rel"], run["final_rel"]), (0.25, 0.5))
        self.assertEqual(run["final_over_best"], 2.0)
        self.assertEqual(run["penalised"], [False, False, False, True, False])

    def test_summary_counts_late_penalties_and_checks_the_criteria(self) -> None:
        early = self.bench.summarise_run(1, [self.row(1, 20.0, penalised=True), self.row(2, 0.6)])
        late = self.bench.summarise_run(2, [self.row(1, 0.5), self.row(3, 20.0, penalised=True)])
        s = self.bench.summarise([early, late, {"seed": 3, "error": "boom"}])
        self.assertEqual((s["runs"], s["failed_runs"]), (3, 1))
        self.assertEqual(s["runs_penalised_after_epoch_2"], 1)
        self.assertEqual(s["runs_worse_than_constant_after_epoch_2"], 1)
        self.assertEqual(s["max_final_over_best"], 40.0)
        self.assertFalse(s["criteria"]["penalised_after_epoch_2"])
        self.assertFalse(s["criteria"]["final_over_best"])
        self.assertTrue(s["criteria"]["mean_best_rel"])  # both best 0.5 / const 2.0 = 0.25

    def test_a_run_still_training_is_listed_but_not_summarised(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            run_dir = Path(tmp) / "seed-5"
            run_dir.mkdir()
            rows = [self.row(1, 1.0), self.row(2, 0.8)]
            (run_dir / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
            running = self.bench.from_run_dir(run_dir, 5, epochs=6)
            done = self.bench.from_run_dir(run_dir, 5, epochs=2)
            missing = self.bench.from_run_dir(Path(tmp) / "seed-6", 6, epochs=6)
        self.assertEqual((running["complete"], done["complete"]), (False, True))
        self.assertIn("no epoch written", missing["error"])
        s = self.bench.summarise([running, done, missing])
        self.assertEqual((s["failed_runs"], s["incomplete_runs"]), (1, 1))
        self.assertEqual(s["final"]["mean"], 0.8)  # the finished run only


class TestStabilityMerge(unittest.TestCase):
    """`--merge`: earlier measurements of one recipe summarised as one (no training)."""

    @classmethod
    def setUpClass(cls) -> None:
        cls.bench = load_bench("bench_stability")

    def setUp(self) -> None:
        self._tmp = tempfile.TemporaryDirectory()
        self.tmp = Path(self._tmp.name)

    def tearDown(self) -> None:
        self._tmp.cleanup()

    def measurement(self, name: str, seeds: list[int], finals: list[float], **extra) -> Path:
        row = TestStabilityMeasures.row
        runs = [
            self.bench.summarise_run(s, [row(1, 1.0), row(2, f)])
            for s, f in zip(seeds, finals, strict=True)
        ]
        part = {
            "bench": "stability",
            "config": "trainables/x.yaml",
            "overrides": ["evaluation.figures_every=0", "training.epochs=2"],
            "epochs": 2,
            "device": "cpu",
            "seeds": seeds,
            "runs": runs,
            **extra,
        }
        path = self.tmp / f"{name}.json"
        path.write_text(json.dumps(part), encoding="utf-8")
        return path

    def run_merge(self, *paths: Path, extra: tuple[str, ...] = ()) -> tuple[int, str, Path]:
        out = self.tmp / "merged.json"
        argv = [a for p in paths for a in ("--merge", str(p))] + ["--out", str(out), *extra]
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            rc = self.bench.main(argv)
        return rc, err.getvalue(), out

    def test_merged_summary_is_the_summary_of_all_runs(self) -> None:
        a = self.measurement("a", [1, 2], [0.4, 0.6])
        b = self.measurement("b", [3, 4, 5], [0.5, 0.7, 0.3])
        rc, _, out = self.run_merge(a, b, extra=("--label", "ten"))
        self.assertEqual(rc, 0)
        merged = json.loads(out.read_text(encoding="utf-8"))
        self.assertEqual((merged["label"], merged["seeds"]), ("ten", [1, 2, 3, 4, 5]))
        finals = [0.4, 0.6, 0.5, 0.7, 0.3]
        rel = [f / 2.0 for f in finals]  # the rows' constant baseline is 2.0
        stats = merged["summary"]["final_rel"]
        mean = sum(rel) / 5
        sd = math.sqrt(sum((x - mean) ** 2 for x in rel) / 4)
        self.assertAlmostEqual(stats["mean"], mean)
        self.assertAlmostEqual(stats["sd"], sd)
        self.assertAlmostEqual(stats["cv"], sd / mean)
        self.assertEqual(merged["summary"]["runs"], 5)
        self.assertEqual(merged["merged_from"], [str(a), str(b)])

    def test_different_recipes_or_repeated_seeds_are_refused_in_one_line(self) -> None:
        a = self.measurement("a", [1, 2], [0.4, 0.6])
        cases = {
            "overrides": self.measurement(
                "lr", [3], [0.5], overrides=["training.learning_rate=1e-4"]
            ),
            "epochs": self.measurement("ep", [3], [0.5], epochs=6),
            "seeds": self.measurement("dup", [2, 3], [0.5, 0.5]),
        }
        for key, other in cases.items():
            with self.subTest(key=key):
                rc, err, out = self.run_merge(a, other)
                self.assertEqual(rc, 2)
                self.assertEqual(len(err.strip().splitlines()), 1, err)
                self.assertTrue(err.startswith(f"{other}: {key}: "), err)
                self.assertFalse(out.exists())

    def test_merge_takes_nothing_else(self) -> None:
        a = self.measurement("a", [1], [0.4])
        rc, err, _ = self.run_merge(a, extra=("--set", "training.epochs=3"))
        self.assertEqual(rc, 2)
        self.assertIn("--merge", err)


class TestGpuChecksScript(unittest.TestCase):
    """The GPU check script's own logic, with `echo` standing in for Python (no GPU needed)."""

    def run_script(self, **env: str) -> tuple[subprocess.CompletedProcess, str]:
        with tempfile.TemporaryDirectory() as tmp:
            proc = subprocess.run(
                ["bash", str(ROOT / "bench" / "gpu_checks.sh")],
                env={**os.environ, "PY": "echo", "OUT": tmp, **env},
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            log = (Path(tmp) / "checks.log").read_text(encoding="utf-8")
        return proc, log

    def test_every_check_runs_and_writes_json_into_out(self) -> None:
        proc, log = self.run_script()
        self.assertEqual(proc.returncode, 0, proc.stderr)
        names = [line.split(":")[0][3:] for line in log.splitlines() if line.startswith("== ")]
        self.assertEqual(
            names, ["pytest_cuda", "masked_decode", "memory", "memory_tu50", "bf16", "trial_memory"]
        )
        commands = [line for line in log.splitlines() if line.startswith("== ")]
        benches = [c for c in commands if " bench/" in c]
        self.assertEqual(len(benches), 5)
        for c in benches:  # every bench on the GPU, its JSON into $OUT
            self.assertIn("--device cuda", c)
            self.assertRegex(c, r"--out \S+/\w+_cuda\.json")

    def test_steps_selects_checks(self) -> None:
        proc, log = self.run_script(STEPS="memory trial_memory")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        names = [line.split(":")[0][3:] for line in log.splitlines() if line.startswith("== ")]
        self.assertEqual(names, ["memory", "trial_memory"])

    def test_a_failing_check_fails_the_script_but_not_the_others(self) -> None:
        proc, log = self.run_script(PY="false")
        self.assertEqual(proc.returncode, 1)
        self.assertEqual(log.count("FAILED: "), 6)


if __name__ == "__main__":
    unittest.main()
