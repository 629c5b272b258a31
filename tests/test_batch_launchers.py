"""The batch launchers clusters/lsf.sh and clusters/slurm.sbatch, run here without LSF or Slurm.

Why this way: the launchers only talk to the scheduler through its allocation variables and
its task launcher (`blaunch HOST cmd`, `srun -w HOST cmd`, `scontrol show hostnames`). Shims of
those on PATH run the command on this machine, and the allocation names two "hosts" on
loopback (127.0.0.1, 127.0.0.2), so a real two-node Ray starts through the launcher and a tiny
real search runs on it. HOME is a temp dir, so a token Ray read from (or wrote to) ~/.ray would
show. Every process the launcher starts inherits a marker variable: after the launcher exits,
none may be left.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest
import uuid
from pathlib import Path

import pandas as pd

from tests.tiny_search import tiny_overrides, tiny_space, write_space

ROOT = Path(__file__).resolve().parents[1]
LAUNCHERS = {"lsf": ROOT / "clusters" / "lsf.sh", "slurm": ROOT / "clusters" / "slurm.sbatch"}
RUN_TIMEOUT_S = 900  # a bound, not a timing: a tiny two-trial search on 2 busy cores

SHIMS = {
    # blaunch HOST COMMAND...
    "blaunch": 'echo "blaunch $*" >>"$SHIM_LOG"\nshift\nexec "$@"\n',
    # srun [options] COMMAND...: options end at the first word that is not one
    "srun": (
        'echo "srun $*" >>"$SHIM_LOG"\n'
        "while (($#)) && [[ $1 == -* ]]; do\n"
        "    case $1 in -w | -N | -n | -c) shift 2 ;; *) shift ;; esac\n"
        "done\n"
        'exec "$@"\n'
    ),
    # scontrol show hostnames A,B
    "scontrol": '[[ $1 == show && $2 == hostnames ]] || exit 1\ntr , "\\n" <<<"$3"\n',
}

# run by the search command before the search: the dashboard refuses a request without the
# token and accepts one with the token from the file the launcher names
DASHBOARD_CHECK = """
import os, pathlib, time, urllib.error, urllib.request
url = os.environ["RAY_BATCH_DASHBOARD_URL"] + "/nodes?view=summary"
token = pathlib.Path(os.environ["RAY_AUTH_TOKEN_PATH"]).read_text().strip()
def status(headers):
    deadline = time.time() + 120
    while True:
        try:
            req = urllib.request.Request(url, headers=headers)
            return urllib.request.urlopen(req, timeout=30).status
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            if time.time() > deadline:
                return 0
            time.sleep(2)
print("dashboard-auth", status({}), status({"Authorization": "Bearer " + token}), flush=True)
"""


def _marked(marker: str) -> list[str]:
    """Live (non-zombie) processes whose environment holds the marker: 'pid comm'."""
    found = []
    needle = f"LT_BATCH_MARK={marker}".encode()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if needle not in (d / "environ").read_bytes().split(b"\0"):
                continue
            state = (d / "stat").read_text().rsplit(")", 1)[1].split()[0]
            comm = (d / "comm").read_text().strip()
        except OSError:
            continue
        if state != "Z":
            found.append(f"{d.name} {comm}")
    return found


class BatchLaunchers(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        cls.tmp = Path(tempfile.mkdtemp(prefix="lt-batch-"))
        cls.shims = cls.tmp / "shims"
        cls.shims.mkdir()
        for name, body in SHIMS.items():
            path = cls.shims / name
            path.write_text("#!/usr/bin/env bash\nset -euo pipefail\n" + body)
            path.chmod(0o755)
        cls.home = cls.tmp / "home"
        cls.home.mkdir()
        cls.token = cls.tmp / "token"
        cls.token.write_text(uuid.uuid4().hex + uuid.uuid4().hex)
        cls.token.chmod(0o600)
        (cls.tmp / "check_dashboard.py").write_text(DASHBOARD_CHECK)
        space = tiny_space("batch", tiny_overrides(2), trials={"num_samples": 2})
        cls.space = write_space(cls.tmp, space)

    @classmethod
    def tearDownClass(cls) -> None:
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def _env(self, kind: str, marker: str, job: str, **extra: str) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("RAY_", "LSB_", "SLURM_")) and k != "PYTHONPATH"
        }
        env.update(
            HOME=str(self.home),
            TMPDIR=str(self.tmp),
            PATH=os.pathsep.join([str(self.shims), str(Path(sys.executable).parent), env["PATH"]]),
            PYTHONPATH=str(ROOT),
            RAY_USAGE_STATS_ENABLED="0",
            RAY_BATCH_JOB_DIR=str(self.tmp / f"job-{kind}"),
            SHIM_LOG=str(self.tmp / f"shim-{kind}.log"),
            LT_BATCH_MARK=marker,
        )
        if kind == "lsf":
            env.update(LSB_JOBID=job, LSB_MCPU_HOSTS="127.0.0.1 1 127.0.0.2 1")
        else:
            env.update(
                SLURM_JOB_ID=job,
                SLURM_JOB_NODELIST="127.0.0.1,127.0.0.2",
                SLURM_JOB_CPUS_PER_NODE="1(x2)",
                SLURM_SUBMIT_DIR=str(ROOT),
            )
        env.update(extra)
        return env

    def _launch(
        self, kind: str, argv: list[str], env: dict[str, str], timeout: float = 60
    ) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(LAUNCHERS[kind]), *argv],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def test_bad_input_is_refused_before_anything_starts(self) -> None:
        search = [sys.executable, "-m", "latent_tune.search", str(self.space)]
        for kind, launcher in LAUNCHERS.items():
            name = f"clusters/{launcher.name}"
            with self.subTest(kind=kind, case="no storage on two hosts"):
                env = self._env(kind, "bad", "11", RAY_AUTH_TOKEN_PATH=str(self.token))
                out = self._launch(kind, search, env)
                self.assertEqual(out.returncode, 2, out.stderr)
                self.assertTrue(out.stderr.startswith(f"{name}: --storage: 2 hosts"), out.stderr)
                self.assertEqual(len(out.stderr.splitlines()), 1)
                self.assertFalse((self.tmp / f"job-{kind}").exists())
            with self.subTest(kind=kind, case="missing token file"):
                env = self._env(kind, "bad", "12", RAY_AUTH_TOKEN_PATH=str(self.tmp / "nope"))
                out = self._launch(kind, [*search, "--storage", str(self.tmp)], env)
                self.assertEqual(out.returncode, 2, out.stderr)
                self.assertTrue(out.stderr.startswith(f"{name}: RAY_AUTH_TOKEN_PATH: "))
                self.assertFalse((self.tmp / f"job-{kind}").exists())
            with self.subTest(kind=kind, case="no command"):
                out = self._launch(kind, [], self._env(kind, "bad", "13"))
                self.assertEqual(out.returncode, 2, out.stderr)
                self.assertTrue(out.stderr.startswith(f"{name}: command: missing"))
            with self.subTest(kind=kind, case="outside the scheduler"):
                env = {
                    k: v
                    for k, v in self._env(kind, "bad", "14").items()
                    if not k.startswith(("LSB_", "SLURM_"))
                }
                out = self._launch(kind, search, env)
                self.assertEqual(out.returncode, 2, out.stderr)
                self.assertIn("submit this script with", out.stderr)
        self.assertEqual(_marked("bad"), [])

    def _real_run(self, kind: str, job: str, token_from_env: bool) -> None:
        marker = uuid.uuid4().hex
        extra = {"RAY_AUTH_TOKEN_PATH": str(self.token)} if token_from_env else {}
        env = self._env(kind, marker, job, **extra)
        storage = self.tmp / f"shared-{kind}"
        command = [
            "bash",
            "-c",
            f'{sys.executable} {self.tmp / "check_dashboard.py"} && exec "$@"',
            "search",
            sys.executable,
            "-m",
            "latent_tune.search",
            str(self.space),
            "--storage",
            str(storage),
            "--name",
            kind,
        ]
        out = self._launch(kind, command, env, timeout=RUN_TIMEOUT_S)
        log = out.stdout + out.stderr
        self.assertEqual(out.returncode, 0, log[-4000:])
        # both nodes joined, the worker through the scheduler's launcher with its CPUs
        self.assertIn("ray_batch: 2 of 2 nodes joined", out.stdout)
        shim_log = (self.tmp / f"shim-{kind}.log").read_text()
        if kind == "lsf":
            self.assertIn("blaunch 127.0.0.2 ", shim_log)
        else:
            self.assertIn("srun --nodes=1 --ntasks=1 -w 127.0.0.2 --cpus-per-task=1 ", shim_log)
        # the search finished on both nodes
        exp = storage / kind
        trials = pd.read_parquet(exp / "trials.parquet")
        self.assertEqual(len(trials), 2)
        self.assertEqual(set(trials["status"]), {"completed"})
        results = pd.read_parquet(exp / "results.parquet")
        self.assertIn("127.0.0.2", set(results["node_ip"]))
        self.assertEqual(results["node_ip"].nunique(), 2, set(results["node_ip"]))
        # token auth with the job's token file, never ~/.ray, never printed
        token_path = self.token if token_from_env else self.tmp / f"job-{kind}" / "auth_token"
        self.assertIn("dashboard-auth 401 200", out.stdout)
        self.assertIn(f"RAY_AUTH_TOKEN_PATH={token_path} ray get-auth-token", out.stdout)
        self.assertRegex(out.stdout, r"ssh -L 8265:127\.0\.0\.1:\d+ ")
        self.assertFalse((self.home / ".ray").exists())
        if token_from_env:
            self.assertNotIn(self.token.read_text(), log)
        else:
            self.assertFalse(token_path.exists(), "the generated token outlived the job")
        # nothing the launcher started survives; the per-node temp dirs are gone
        self.assertEqual(_marked(marker), [])
        self.assertEqual(sorted(self.tmp.glob(f"rb{job}-*")), [])

    def test_killed_job_interrupts_the_search_and_stops_its_ray(self) -> None:
        """One host (no shared storage needed): SIGTERM to the job script, as the scheduler
        sends it, reaches the search as Ctrl+C, and every Ray process of the job ends."""
        marker, job = uuid.uuid4().hex, f"{os.getpid()}3"
        env = self._env("lsf", marker, job, LSB_MCPU_HOSTS="127.0.0.1 1")
        state = self.tmp / "search_state"
        search = (
            "import pathlib, sys, time\n"
            "p = pathlib.Path(sys.argv[1]); p.write_text('running')\n"
            "try:\n    time.sleep(600)\n"
            "except KeyboardInterrupt:\n    p.write_text('interrupted'); sys.exit(130)\n"
        )
        proc = subprocess.Popen(
            [str(LAUNCHERS["lsf"]), sys.executable, "-c", search, str(state)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            deadline = time.time() + RUN_TIMEOUT_S
            while not state.exists() and proc.poll() is None and time.time() < deadline:
                time.sleep(1)
            self.assertTrue(state.exists(), "the search command never started")
            self.assertNotEqual(_marked(marker), [])  # the job's Ray is running
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        self.assertEqual(proc.returncode, 143, out[-3000:])
        self.assertIn("ray_batch: 1 of 1 nodes joined", out)
        self.assertEqual(state.read_text(), "interrupted")
        self.assertEqual(_marked(marker), [])
        self.assertEqual(sorted(self.tmp.glob(f"rb{job}-*")), [])
        self.assertFalse((self.tmp / "job-lsf" / "auth_token").exists())

    def test_lsf_two_hosts(self) -> None:
        self._real_run("lsf", f"{os.getpid()}1", token_from_env=True)

    def test_slurm_two_nodes(self) -> None:
        self._real_run("slurm", f"{os.getpid()}2", token_from_env=False)


if __name__ == "__main__":
    unittest.main()
