"""A local multi-node Ray cluster for tests and benchmarks (the pattern of test_multinode.py).

Why a helper: node-loss and load tests need the same careful setup: every node started by
`ray start --block` in its own session with its own environment (never the single-node loopback
switch RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER, which makes Ray refuse a multi-node cluster), loopback
addresses, a private temp dir, and a teardown that stops exactly the process groups started here
(never the machine-wide Ray stop command). Not a test module (no `test_` prefix), so pytest
does not collect it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RAY = shutil.which("ray", path=str(Path(sys.executable).parent)) or "ray"
# quiet, token-free local Ray for tests (docs/tuning_notes.md, section 7); each test module
# applies it in setUpClass
QUIET = {
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AIR_NEW_OUTPUT": "0",
    "LATENT_TUNE_DASHBOARD": "0",
}

__all__ = ["RAY", "ROOT", "LocalCluster", "cluster_env", "descendants", "free_port"]


def free_port() -> int:
    """A free TCP port on loopback (for the head's GCS)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cluster_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of every node and of a driver joining it: no loopback-only switch."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_ADDRESS")
    }
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", PYTHONPATH=str(ROOT))
    env.update(extra or {})
    return env


def _ppid_map() -> dict[int, int]:
    out: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = (d / "stat").read_text()
            # "pid (comm) state ppid ...": comm may contain spaces, split after the last ')'
            out[int(d.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    return out


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (children, grandchildren, ...)."""
    ppids = _ppid_map()
    children: dict[int, list[int]] = {}
    for child, parent in ppids.items():
        children.setdefault(parent, []).append(child)
    out: list[int] = []
    todo = list(children.get(pid, []))
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def comm(pid: int) -> str:
    """The process name, or '' when it is gone."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


class LocalCluster:
    """Head (127.0.0.1) + worker nodes (127.0.0.2, ...) on this machine, all started here."""

    def __init__(
        self,
        tmp: Path,
        *,
        head_cpus: int = 1,
        worker_cpus: tuple[int, ...] = (1,),
        env: dict[str, str] | None = None,
    ) -> None:
        self.tmp = tmp
        self.head_cpus = head_cpus
        self.worker_cpus = worker_cpus
        self.env = cluster_env(env)
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.head: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []

    def _start(self, args: list[str]) -> subprocess.Popen:
        return subprocess.Popen(
            [RAY, "start", "--block", "--disable-usage-stats", *args],
            env=self.env,
            start_new_session=True,  # its own process group: teardown stops exactly it
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def start(self, timeout: float = 90) -> None:
        """Start the head, then the workers, and wait until every node has registered."""
        deadline = time.time() + timeout
        self.head = self._start(
            [
                "--head",
                f"--port={self.port}",
                "--node-ip-address=127.0.0.1",
                "--include-dashboard=false",
                f"--temp-dir={self.tmp / 'ray'}",
                f"--num-cpus={self.head_cpus}",
            ]
        )
        while True:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 1),
            ):
                break
            if time.time() > deadline or self.head.poll() is not None:
                raise RuntimeError("Ray head did not start")
            time.sleep(0.5)
        for i, cpus in enumerate(self.worker_cpus):
            self.workers.append(
                self._start(
                    [
                        f"--address={self.address}",
                        f"--node-ip-address=127.0.0.{i + 2}",
                        f"--num-cpus={cpus}",
                    ]
                )
            )
        self.wait_nodes(1 + len(self.worker_cpus), deadline - time.time())

    def alive_nodes(self) -> int:
        """Nodes the head reports as alive (`ray status`, bounded in time)."""
        out = subprocess.run(
            [RAY, "status", f"--address={self.address}"],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        active = out.stdout.split("Pending:")[0]
        return active.count("node_")

    def wait_nodes(self, n: int, timeout: float) -> None:
        """Block until `n` nodes are alive (raises after `timeout` s)."""
        deadline = time.time() + max(timeout, 1.0)
        while self.alive_nodes() < n:
            if time.time() > deadline:
                raise RuntimeError(f"fewer than {n} Ray nodes registered in time")
            time.sleep(1)

    def raylet_pids(self, worker: int = 0) -> list[int]:
        """The raylet of worker node `worker`: found among that `ray start` process's
        descendants only, so nothing of another node (or another user's Ray) is touched."""
        return [p for p in descendants(self.workers[worker].pid) if comm(p) == "raylet"]

    def kill_worker_raylet(self, worker: int = 0) -> list[int]:
        """SIGKILL the raylet of one worker node (the node is lost; its workers follow)."""
        pids = self.raylet_pids(worker)
        if not pids:
            raise RuntimeError("worker raylet not found")
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return pids

    def stop(self) -> None:
        """Stop exactly the process groups started here: workers first, then the head."""
        procs = [*reversed(self.workers), *([self.head] if self.head else [])]
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=10)
