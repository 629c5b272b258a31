"""The performance benchmarks run and write sound JSON (on CPU, at their smallest sizes).

Why: `bench/gpu_checks.sh` runs these on a GPU machine that is lent rarely and briefly; a bench
broken by a refactor would waste that lease. The numbers themselves are not asserted (timings
are benchmarks, not tests), only what must hold whatever the machine.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


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
        res = run_bench("bench_bf16.py", *args, "--threads", "1", cache=self.cache)
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
