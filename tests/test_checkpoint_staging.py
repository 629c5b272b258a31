"""Checkpoint staging dirs of killed trials are swept by the next trial on the node.

Why: a trial killed while it reports (node loss, OOM kill, a SIGKILLed driver's actors) leaves
its `lt-ckpt-<pid>-*` dir in the node's temp dir, about 300 MB at lab scale, every time.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import unittest
from pathlib import Path

from latent_tune.tune.trainable import CKPT_TMP_PREFIX, sweep_orphaned_checkpoint_dirs


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


class SweepTest(unittest.TestCase):
    def setUp(self) -> None:
        self._tmp = tempfile.TemporaryDirectory()
        self.root = Path(self._tmp.name)

    def tearDown(self) -> None:
        self._tmp.cleanup()

    def staging(self, name: str, age_s: float) -> Path:
        d = self.root / name
        d.mkdir()
        (d / "trainer.pt").write_bytes(b"x" * 1024)
        old = time.time() - age_s
        os.utime(d, (old, old))
        return d

    def test_only_old_dirs_of_dead_processes_go(self) -> None:
        gone = dead_pid()
        orphan = self.staging(f"{CKPT_TMP_PREFIX}{gone}-abc123", 3600)
        fresh = self.staging(f"{CKPT_TMP_PREFIX}{gone}-def456", 5)  # just made: maybe in use
        mine = self.staging(f"{CKPT_TMP_PREFIX}{os.getpid()}-ghi789", 3600)  # owner alive
        legacy = self.staging(f"{CKPT_TMP_PREFIX}k2j4h5g6", 3600)  # no pid in the name
        other = self.staging("lt-bench-x", 3600)
        removed = sweep_orphaned_checkpoint_dirs(self.root, max_age_s=600)
        self.assertEqual(removed, [orphan])
        self.assertFalse(orphan.exists())
        for kept in (fresh, mine, legacy, other):
            self.assertTrue(kept.is_dir(), kept)

    def test_an_empty_or_missing_root_is_fine(self) -> None:
        self.assertEqual(sweep_orphaned_checkpoint_dirs(self.root), [])
        self.assertEqual(sweep_orphaned_checkpoint_dirs(self.root / "nope"), [])


if __name__ == "__main__":
    unittest.main()
