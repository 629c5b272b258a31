"""A local two-node Ray cluster (head + worker started by this test, own environment, loopback
addresses, one shared storage dir): a search joins it with --address and places trials on both
nodes. Only the processes this test started are stopped (their own process groups)."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import unittest
from pathlib import Path

import pandas as pd
import ray

from latent_tune.search import main as search_main
from tests.tiny_search import tiny_overrides, tiny_space, write_space

ROOT = Path(__file__).resolve().parents[1]
RAY = shutil.which("ray", path=str(Path(os.sys.executable).parent)) or "ray"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MultiNode(unittest.TestCase):
    procs: list[subprocess.Popen]

    @classmethod
    def setUpClass(cls) -> None:
        cls.tmp = Path(tempfile.mkdtemp(prefix="lt-mn-"))
        cls.port = _free_port()
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_ADDRESS")
        }
        env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", PYTHONPATH=str(ROOT))
        cls.env = env
        common = ["--block", "--num-cpus=1", "--disable-usage-stats"]
        cls.procs = []
        cls.procs.append(
            subprocess.Popen(
                [
                    RAY,
                    "start",
                    "--head",
                    f"--port={cls.port}",
                    "--node-ip-address=127.0.0.1",
                    "--include-dashboard=false",
                    f"--temp-dir={cls.tmp / 'ray'}",
                    *common,
                ],
                env=env,
                start_new_session=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        cls._wait_port(cls.port)
        cls.procs.append(
            subprocess.Popen(
                [
                    RAY,
                    "start",
                    f"--address=127.0.0.1:{cls.port}",
                    "--node-ip-address=127.0.0.2",
                    *common,
                ],
                env=env,
                start_new_session=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )

    @staticmethod
    def _wait_port(port: int, timeout: float = 60) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                return
            time.sleep(0.5)
        raise RuntimeError("head did not start")

    @classmethod
    def tearDownClass(cls) -> None:
        if ray.is_initialized():
            ray.shutdown()
        for p in reversed(cls.procs):  # exactly the process groups this test started
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        for p in cls.procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)

    def test_trials_on_both_nodes(self) -> None:
        space = tiny_space("mn", tiny_overrides(3), trials={"num_samples": 4, "max_concurrent": 2})
        path = write_space(self.tmp, space)
        shared = self.tmp / "shared_storage"
        old = {k: os.environ.pop(k, None) for k in ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER",)}
        os.environ.update(RAY_AUTH_MODE="disabled")
        deadline = time.time() + 60
        while True:  # wait for the worker node to register
            out = subprocess.run(
                [RAY, "status", f"--address=127.0.0.1:{self.port}"],
                env=self.env,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            if out.stdout.count("node_") >= 2 or time.time() > deadline:
                break
            time.sleep(1)
        # no shared storage on a multi-node cluster: refused before any trial
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            rc = search_main([str(path), "--address", f"127.0.0.1:{self.port}"])
        self.assertEqual(rc, 2, err.getvalue())
        self.assertIn("--storage", err.getvalue())
        with contextlib.redirect_stdout(io.StringIO()) as out:
            rc = search_main(
                [
                    str(path),
                    "--address",
                    f"127.0.0.1:{self.port}",
                    "--storage",
                    str(shared),
                    "--name",
                    "mn",
                ]
            )
        for k, v in old.items():
            if v is not None:
                os.environ[k] = v
        self.assertEqual(rc, 0, out.getvalue())
        results = pd.read_parquet(shared / "mn" / "results.parquet")
        self.assertEqual(results["trial_id"].nunique(), 4)
        # the worker node is 127.0.0.2; Ray may rewrite the head's 127.0.0.1 to the host address
        self.assertEqual(results["node_ip"].nunique(), 2, set(results["node_ip"]))
        self.assertIn("127.0.0.2", set(results["node_ip"]))
        self.assertTrue((shared / "mn" / "best" / "config.yaml").is_file())


if __name__ == "__main__":
    unittest.main()
