"""Losing a worker node mid-search: the raylet of a local worker node is SIGKILLed while one of
its trials runs; Tune (FailureConfig) retries that trial from its last checkpoint on the head,
the search completes and every trial is accounted for exactly once.

Why real processes: node loss is detected by Ray's GCS health checks and surfaces in Tune as an
actor death; only a real two-node cluster shows that the checkpoint reached shared storage and
that the retry resumes training instead of restarting it. Bounded in time; stops exactly the
processes it started (its cluster's process groups and the search's), even on failure.
"""

from __future__ import annotations

import contextlib
import json
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

from tests.ray_cluster import ROOT, LocalCluster
from tests.tiny_search import tiny_overrides, tiny_space, write_space

WORKER_IP = "127.0.0.2"
EPOCHS = 10
SEARCH_TIMEOUT_S = 150.0
# quick node-death detection by the GCS (defaults take ~30 s): read by the head's gcs_server
FAST_HEALTH = {
    "RAY_health_check_initial_delay_ms": "1000",
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
}


def _rows(result_json: Path) -> list[dict]:
    """The rows of a trial's result.json written so far (a partial last line is skipped)."""
    rows = []
    with contextlib.suppress(OSError):
        for line in result_json.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                rows.append(json.loads(line))
    return rows


class NodeLoss(unittest.TestCase):
    def setUp(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="lt-nl-"))
        self.cluster = LocalCluster(self.tmp, head_cpus=1, worker_cpus=(1,), env=FAST_HEALTH)
        self.search: subprocess.Popen | None = None
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.addCleanup(self.cluster.stop)
        self.addCleanup(self._stop_search)
        self.cluster.start()

    def _stop_search(self) -> None:
        p = self.search
        if p is None or p.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait(timeout=30)

    def _space(self) -> Path:
        # ~1 s per epoch: the kill lands mid-trial
        overrides = tiny_overrides(EPOCHS, {"training.batches_per_chunk": 50})
        space = tiny_space(
            "nl",
            overrides,
            trials={"num_samples": 2, "max_failures": 2},
            checkpoint={"every": 1},
        )
        return write_space(self.tmp, space)

    def _wait_worker_checkpoint(self, exp: Path, deadline: float) -> Path:
        """The trial dir of a trial that ran on the worker and has a checkpoint in storage."""
        while time.time() < deadline:
            assert self.search is not None
            if self.search.poll() is not None:
                self.fail(f"search ended early: {self._log()}")
            for rj in exp.glob("*/result.json"):
                rows = _rows(rj)
                on_worker = rows and rows[-1].get("node_ip") == WORKER_IP
                if on_worker and any(rj.parent.glob("checkpoint_*")):
                    return rj.parent
            time.sleep(0.1)
        self.fail(f"no checkpoint from the worker node in time: {self._log()}")

    def _log(self) -> str:
        with contextlib.suppress(OSError):
            return (self.tmp / "search.log").read_text()[-3000:]
        return ""

    def test_worker_raylet_killed(self) -> None:
        deadline = time.time() + SEARCH_TIMEOUT_S
        storage = self.tmp / "shared_storage"
        exp = storage / "nl"
        with open(self.tmp / "search.log", "wb") as log:
            self.search = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "latent_tune.search",
                    str(self._space()),
                    "--address",
                    self.cluster.address,
                    "--storage",
                    str(storage),
                    "--name",
                    "nl",
                ],
                cwd=ROOT,
                env=self.cluster.env,
                start_new_session=True,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        victim = self._wait_worker_checkpoint(exp, deadline)
        killed_at_epoch = max(int(r.get("epoch", 0)) for r in _rows(victim / "result.json"))
        self.assertLess(killed_at_epoch, EPOCHS, "the worker's trial finished before the kill")
        self.cluster.kill_worker_raylet()
        try:
            rc = self.search.wait(timeout=max(deadline - time.time(), 1.0))
        except subprocess.TimeoutExpired:
            self.fail(f"search did not finish within {SEARCH_TIMEOUT_S:.0f} s: {self._log()}")
        self.assertEqual(rc, 0, self._log())

        # the lost trial continued from its checkpoint on the head, not from epoch 1
        rows = _rows(victim / "result.json")
        before = [r for r in rows if r.get("node_ip") == WORKER_IP]
        after = [r for r in rows if r.get("node_ip") != WORKER_IP]
        self.assertTrue(before and after, f"trial not retried elsewhere: {rows}")
        self.assertGreater(min(int(r["epoch"]) for r in after), 1, after)
        self.assertGreater(min(int(r["training_iteration"]) for r in after), 1, after)
        self.assertEqual(max(int(r["epoch"]) for r in after), EPOCHS)
        restores = [json.loads(x) for x in (victim / "restores.jsonl").read_text().splitlines()]
        self.assertGreaterEqual(restores[-1]["epoch"], 1, restores)
        self.assertEqual(restores[-1]["from_trial"], rows[0]["trial_id"], restores)

        # every trial accounted for once, finished, with all its epochs
        trials = pd.read_parquet(exp / "trials.parquet")
        self.assertEqual(len(trials), 2, trials)
        self.assertEqual(trials["trial_id"].nunique(), 2)
        self.assertEqual(set(trials["status"]), {"completed"}, trials)
        results = pd.read_parquet(exp / "results.parquet")
        per_trial = results.groupby("trial_id")["epoch"].agg(["nunique", "max", "count"])
        self.assertTrue((per_trial["max"] == EPOCHS).all(), per_trial)
        self.assertTrue((per_trial["nunique"] == per_trial["count"]).all(), per_trial)


if __name__ == "__main__":
    unittest.main()
