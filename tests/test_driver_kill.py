"""Driver killed (issue 5, item 1): SIGKILL of the `search` process, then `--resume` finishes.

Why: on a shared cluster the driver can be OOM-killed or its node rebooted; Ctrl+C is covered in
test_search_e2e.py. After a SIGKILL only Tune's last experiment snapshot exists (the search sets
its period to 3 s): finished trials must keep their results and not rerun, running trials must
continue from their last checkpoint, and every trial must end up completed.
"""

from __future__ import annotations

import contextlib
import io
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
import ray

from latent_tune.search import main as search_main
from latent_tune.tune.cli import LOOPBACK_SWITCH, start_local_ray
from tests.ray_cluster import QUIET
from tests.test_security import _descendants, _is_loopback, _listeners
from tests.tiny_search import FIRST_FINISH_S, tiny_overrides, tiny_space, write_space

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 10  # long enough that trials are mid-run when the driver dies
TINY = tiny_overrides(  # about 1 s per epoch on one CPU
    EPOCHS, {"training.batches_per_chunk": 25, "evaluation.divergence_threshold": 100.0}
)


def _results(exp: Path) -> dict[str, tuple[Path, list[dict]]]:
    """trial id -> (trial dir, result.json rows)."""
    out = {}
    for p in exp.iterdir():
        f = p / "result.json"
        rows = [json.loads(x) for x in f.read_text().splitlines() if x] if f.is_file() else []
        if rows:
            out[rows[0]["trial_id"]] = (p, rows)
    return out


def _snapshot_holds_running_checkpoint(exp: Path) -> bool:
    """A trial far from done has a checkpoint, and Tune saved its experiment state since.

    Why mtimes and not the snapshot's content: its format is Ray's internal business. The
    checkpoint dir is written before the driver registers it, so a snapshot written over a
    second later includes it. Killing then makes "resumed from a checkpoint" a certainty
    instead of a race with the 3 s snapshot period on a loaded machine.
    """
    snaps = [p.stat().st_mtime for p in exp.glob("experiment_state-*.json")]
    if not snaps:
        return False
    for d, rows in _results(exp).values():
        if rows[-1]["epoch"] > EPOCHS - 4:  # would likely finish before the kill lands
            continue
        ckpts = [c.stat().st_mtime for c in d.glob("checkpoint_*")]
        if ckpts and max(snaps) > min(ckpts) + 1.0:
            return True
    return False


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its reaper counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")[:120]
    except OSError:
        return f"pid {pid} (gone)"


class DriverKilled(unittest.TestCase):
    def setUp(self) -> None:
        os.environ.update(QUIET)
        self.tmp = Path(tempfile.mkdtemp(prefix="lt-kill-"))

    def tearDown(self) -> None:
        if ray.is_initialized():
            ray.shutdown()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def test_sigkill_then_resume(self) -> None:
        space = write_space(
            self.tmp, tiny_space("kill", TINY, trials={"num_samples": 3, "max_concurrent": 2})
        )
        storage = self.tmp / "res"
        exp = storage / "kill"
        env = {**os.environ, **QUIET, "PYTHONPATH": str(ROOT)}
        env.pop("RAY_ADDRESS", None)
        env.pop(LOOPBACK_SWITCH, None)  # as a user runs it: the command restarts itself with it
        argv = [str(space), "--storage", str(storage), "--name", "kill"]
        proc = subprocess.Popen(
            [sys.executable, "-m", "latent_tune.search", *argv],
            cwd=self.tmp,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        started: set[int] = set()
        lines: list[str] = []
        try:
            deadline = time.time() + FIRST_FINISH_S
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append(line)
                started |= _descendants(proc.pid)
                if "finished at epoch" in line or time.time() > deadline:
                    break
            while time.time() < deadline and not _snapshot_holds_running_checkpoint(exp):
                time.sleep(0.2)
            started |= _descendants(proc.pid)
            listeners = _listeners(started)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
            gone_by = time.time() + 30  # Ray, then the watchdog, stop what outlived the driver
            orphans = []
            while time.time() < gone_by:
                orphans = sorted(p for p in started - {proc.pid} if _alive(p))
                if not orphans:
                    break
                time.sleep(0.5)
            names = [_cmdline(p) for p in orphans]
            for pid in orphans:  # only processes this test started, by PID
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        text = "".join(lines)
        self.assertEqual(proc.returncode, -signal.SIGKILL, text)
        self.assertGreaterEqual(len(listeners), 3, listeners)  # GCS, raylet, workers...
        public = [(ip, port) for ip, port in listeners if not _is_loopback(ip)]
        self.assertEqual(public, [], f"the search's Ray listens beyond loopback: {public}")
        before = _results(exp)
        finished = {
            tid: (d / "result.json").read_bytes()
            for tid, (d, rows) in before.items()
            if rows[-1]["epoch"] == EPOCHS
        }
        running = {
            tid: rows[-1]["epoch"] for tid, (d, rows) in before.items() if tid not in finished
        }
        self.assertTrue(finished, text)

        start_local_ray(num_cpus=2, include_dashboard=False)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            rc = search_main([*argv, "--resume"])
        self.assertEqual(rc, 0, out.getvalue())
        trials = pd.read_parquet(exp / "trials.parquet")
        self.assertEqual(len(trials), 3, trials)
        self.assertTrue((trials["status"] == "completed").all(), trials)
        after = _results(exp)
        for tid, data in finished.items():  # finished trials kept, not rerun
            self.assertEqual((after[tid][0] / "result.json").read_bytes(), data)
        resumed = 0
        for tid, epoch in running.items():  # continued from a checkpoint, not from scratch
            restores = after[tid][0] / "restores.jsonl"
            rows = after[tid][1]
            if restores.is_file():
                recs = [json.loads(x) for x in restores.read_text().splitlines() if x]
                self.assertGreaterEqual(recs[0]["from_epoch"], 1, recs)
                resumed += 1
            print(
                f"running at kill: {tid} epoch {epoch}; restored: {restores.is_file()}; "
                f"epochs after: {[r['epoch'] for r in rows]}",
                file=sys.stderr,
            )
        results = pd.read_parquet(exp / "results.parquet")
        self.assertFalse(results.duplicated(["trial_id", "epoch"]).any())
        # Ray 2.60 leaves its DashboardAgent and RuntimeEnvAgent behind a SIGKILLed driver
        # (docs/tuning_notes.md, section 10); the search's watchdog stops them, so nothing may
        # outlive the driver.
        self.assertEqual(names, [], "Ray processes outlived the killed driver")
        self.assertTrue(
            running,
            f"{text}\n{ {t: [r['epoch'] for r in rows] for t, (_, rows) in before.items()} }",
        )
        self.assertGreater(resumed, 0, "no running trial continued from its checkpoint")


if __name__ == "__main__":
    unittest.main()
