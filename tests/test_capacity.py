"""A trial that no node can hold is refused up front (own Ray) or warned about (a cluster).

Why: Tune itself never fails on it; it waits for ever, warning once a minute. A search space
that asks for a GPU on a CPU-only machine is the common case (`stag.yaml` on a laptop).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

from latent_tune.errors import UserInputError
from latent_tune.tune.capacity import check_capacity, node_capacities
from tests.tiny_search import tiny_overrides, tiny_space, write_space

ROOT = Path(__file__).resolve().parents[1]
SPACE = "space.yaml"


def node(cpu: float, gpu: float | None = None, alive: bool = True) -> dict:
    res = {"CPU": cpu, "memory": 1e9}
    if gpu is not None:
        res["GPU"] = gpu
    return {"Alive": alive, "Resources": res}


class CapacityTest(unittest.TestCase):
    def test_node_capacities_skip_dead_nodes_and_default_to_zero_gpus(self) -> None:
        caps = node_capacities([node(4), node(8, 2, alive=False), node(16, 1)])
        self.assertEqual(caps, [(4.0, 0.0), (16.0, 1.0)])

    def test_fits_on_one_node(self) -> None:
        caps = [(2.0, 0.0), (12.0, 1.0)]
        for cpu, gpu in ((1, 0), (2, 0), (3, 0.25), (12, 1)):
            for fixed in (True, False):
                with self.subTest(cpu=cpu, gpu=gpu, fixed=fixed):
                    self.assertIsNone(check_capacity(caps, cpu, gpu, file=SPACE, fixed=fixed))

    def test_gpu_on_a_cpu_only_machine_names_the_key_and_the_cpu_way_out(self) -> None:
        with self.assertRaises(UserInputError) as cm:
            check_capacity([(2.0, 0.0)], 1, 0.25, file=SPACE, fixed=True)
        err = cm.exception
        self.assertEqual((err.file, err.key), (SPACE, "resources.gpu"))
        self.assertIn("0.25 GPU per trial, but this machine has 0 GPUs", err.problem)
        self.assertIn("resources.gpu: 0", err.problem)
        self.assertNotIn("\n", str(err))

    def test_too_many_gpus_or_cpus(self) -> None:
        with self.assertRaises(UserInputError) as cm:
            check_capacity([(16.0, 1.0)], 1, 2, file=SPACE, fixed=True)
        self.assertEqual(cm.exception.key, "resources.gpu")
        self.assertIn("2 GPU per trial, but this machine has 1 GPUs", cm.exception.problem)
        self.assertNotIn("resources.gpu: 0", cm.exception.problem)
        with self.assertRaises(UserInputError) as cm:
            check_capacity([(2.0, 0.0)], 3, 0, file=SPACE, fixed=True)
        self.assertEqual(cm.exception.key, "resources.cpu")
        self.assertIn("3 CPUs per trial, but this machine has 2 CPUs", cm.exception.problem)

    def test_cpu_and_gpu_on_different_nodes(self) -> None:
        with self.assertRaises(UserInputError) as cm:
            check_capacity([(16.0, 0.0), (2.0, 1.0)], 4, 1, file=SPACE, fixed=True)
        self.assertEqual(cm.exception.key, "resources")

    def test_a_cluster_gets_a_warning_not_an_error(self) -> None:
        warning = check_capacity([(8.0, 0.0)], 3, 0.25, file=SPACE, fixed=False)
        assert warning is not None
        self.assertTrue(warning.startswith("warning: resources.gpu: "))
        self.assertIn("the largest node has 0 GPUs", warning)
        self.assertIn("autoscaler", warning)


class SearchCommandTest(unittest.TestCase):
    """The real command on a real local Ray: exit 2, one line, no experiment dir."""

    def setUp(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="lt-capacity-"))

    def tearDown(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    def test_more_gpus_than_the_machine_has(self) -> None:
        space = write_space(self.tmp, tiny_space("cap", tiny_overrides(1)))
        storage = self.tmp / "res"
        env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_DEDUP_LOGS": "0"}
        env.pop("RAY_ADDRESS", None)
        argv = [str(space), "--storage", str(storage), "--set", "resources.gpu=64"]
        proc = subprocess.run(
            [sys.executable, "-m", "latent_tune.search", *argv],
            cwd=self.tmp,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        self.assertEqual(proc.returncode, 2, proc.stdout + proc.stderr)
        last = proc.stderr.strip().splitlines()[-1]
        self.assertTrue(last.startswith(f"{space}: resources.gpu: 64 GPU per trial, "), last)
        self.assertNotIn("Traceback", proc.stderr)
        self.assertFalse(storage.exists(), "nothing may be written")


if __name__ == "__main__":
    unittest.main()
