"""Checkpoint retention (no Ray cluster): newest `keep` per trial, never a pending restore.

Why: with Ray's own num_to_keep a PBT clone could find its donor's checkpoint deleted before it
restored ("does not exist on storage anymore"), failing the trial on a busy machine.
"""

from __future__ import annotations

import shutil
import tempfile
import unittest
from dataclasses import dataclass
from pathlib import Path

from ray import tune

from latent_tune.tune.checkpoints import CheckpointPruner


@dataclass
class _Trial:
    """What the pruner reads from a Tune Trial: the checkpoint it restores next, its dir."""

    checkpoint: tune.Checkpoint | None
    path: str | None = None


class CheckpointPrunerTest(unittest.TestCase):
    def setUp(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="lt-prune-"))
        self.addCleanup(shutil.rmtree, self.tmp, ignore_errors=True)

    def _trial_dir(self, name: str, n: int) -> list[tune.Checkpoint]:
        d = self.tmp / name
        out = []
        for i in range(n):
            c = d / f"checkpoint_{i:06d}"
            c.mkdir(parents=True)
            (c / "trainer.pt").write_bytes(b"x")
            out.append(tune.Checkpoint.from_directory(str(c)))
        (d / "result.json").write_text("{}")  # other trial files are never touched
        return out

    @staticmethod
    def _left(d: Path) -> list[str]:
        return sorted(p.name for p in d.iterdir())

    def test_keeps_newest_and_pending_restore(self) -> None:
        donor = self._trial_dir("donor", 5)
        clone = _Trial(donor[1])  # exploited: will restore from the donor's checkpoint 1
        pruner = CheckpointPruner(keep=2)
        pruner.on_checkpoint(0, [_Trial(donor[3]), clone], _Trial(donor[3]), donor[4])
        self.assertEqual(
            self._left(self.tmp / "donor"),
            ["checkpoint_000001", "checkpoint_000003", "checkpoint_000004", "result.json"],
        )
        # the clone restored and checkpointed on its own: the spared one goes at the end
        clone.checkpoint = self._trial_dir("clone", 1)[0]
        pruner.on_experiment_end([_Trial(donor[4]), clone])
        self.assertEqual(
            self._left(self.tmp / "donor"),
            ["checkpoint_000003", "checkpoint_000004", "result.json"],
        )
        self.assertEqual(self._left(self.tmp / "clone"), ["checkpoint_000000", "result.json"])

    def test_end_prunes_a_trial_whose_latest_checkpoint_is_its_donors(self) -> None:
        donor = self._trial_dir("donor", 2)
        own = self._trial_dir("clone", 3)  # checkpoints Tune never saw through the pruner
        clone = _Trial(donor[1], path=str(self.tmp / "clone"))
        pruner = CheckpointPruner(keep=1)
        pruner.on_checkpoint(0, [_Trial(donor[0]), clone], _Trial(donor[0]), donor[1])
        pruner.on_experiment_end([_Trial(donor[1], path=str(self.tmp / "donor")), clone])
        self.assertEqual(self._left(self.tmp / "donor"), ["checkpoint_000001", "result.json"])
        self.assertEqual(self._left(self.tmp / "clone"), ["checkpoint_000002", "result.json"])
        self.assertTrue(Path(own[2].path).is_dir())

    def test_new_checkpoint_counts_and_is_never_deleted(self) -> None:
        ckpts = self._trial_dir("t", 3)
        CheckpointPruner(keep=1).on_checkpoint(0, [_Trial(ckpts[1])], _Trial(ckpts[1]), ckpts[2])
        # ckpts[1] is still the trial's registered latest until Tune processes ckpts[2]
        self.assertEqual(
            self._left(self.tmp / "t"), ["checkpoint_000001", "checkpoint_000002", "result.json"]
        )

    def test_already_deleted_is_not_an_error(self) -> None:
        ckpts = self._trial_dir("t", 3)
        shutil.rmtree(ckpts[0].path)
        CheckpointPruner(keep=1).on_checkpoint(0, [], _Trial(None), ckpts[2])
        self.assertEqual(self._left(self.tmp / "t"), ["checkpoint_000002", "result.json"])

    def test_keep_must_be_positive(self) -> None:
        with self.assertRaises(ValueError):
            CheckpointPruner(keep=0)


if __name__ == "__main__":
    unittest.main()
