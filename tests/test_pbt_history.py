"""pbt_history.parquet: exploit steps by trial id with the target's old, donor and new values."""

from __future__ import annotations

import json
import shutil
import tempfile
import unittest
from pathlib import Path

from latent_tune.tune.pbt_history import pbt_history

LR = "training.learning_rate"


class PbtHistoryTest(unittest.TestCase):
    def setUp(self) -> None:
        self.exp = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, self.exp, ignore_errors=True)

    def test_ids_and_old_donor_new(self) -> None:
        start = {f"ab12c_0000{i}": {LR: 0.001 * (i + 1)} for i in range(3)}
        # Ray's line: target tag, donor tag, target iter, donor iter, donor config, new config
        lines = [
            ["2_lr=0.003", "0_lr=0.001", 2, 2, {LR: 0.001}, {LR: 0.0012}],
            ["2_lr=0.003", "1_lr=0.002", 4, 4, {LR: 0.002}, {LR: 0.0016}],
            ["0_lr=0.001", "2_lr=0.003", 4, 4, {LR: 0.0016}, {LR: 0.002}],
        ]
        (self.exp / "pbt_global.txt").write_text("".join(json.dumps(x) + "\n" for x in lines))
        h = pbt_history(self.exp, [LR], start)
        self.assertEqual(list(h["trial_id"]), ["ab12c_00002", "ab12c_00002", "ab12c_00000"])
        self.assertEqual(list(h["donor_trial_id"]), ["ab12c_00000", "ab12c_00001", "ab12c_00002"])
        self.assertEqual(list(h["target_iteration"]), [2, 4, 4])
        # before its first step the target had its sampled value, then its previous new one
        self.assertEqual(list(h[f"{LR}.old"]), [0.003, 0.0012, 0.001])
        self.assertEqual(list(h[f"{LR}.donor"]), [0.001, 0.002, 0.0016])
        self.assertEqual(list(h[f"{LR}.new"]), [0.0012, 0.0016, 0.002])

    def test_no_log_no_table(self) -> None:
        self.assertTrue(pbt_history(self.exp, [LR], {}).empty)


if __name__ == "__main__":
    unittest.main()
