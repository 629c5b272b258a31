"""Checkpoint retention that never deletes a checkpoint a trial is about to restore from.

Why not Ray's `CheckpointConfig(num_to_keep=...)`: when PBT exploits, the cloned trial is
paused and later restored from the donor's checkpoint, while the donor keeps training and Ray
deletes its old checkpoints by count. On a busy cluster the clone's restore can come after
that deletion and the trial fails ("checkpoint does not exist on storage anymore"). This
callback runs in the driver's event loop (the same thread as the scheduler), so when it prunes
it sees every trial's pending restore and keeps those; otherwise it keeps each trial's newest
`keep` checkpoints. PBT trials checkpoint only on perturbation boundaries, so the checkpoint
PBT would hand to a clone is always the donor's newest one.
"""

from __future__ import annotations

import logging
import posixpath
from collections.abc import Iterable
from typing import Any

import pyarrow.fs as pafs
from ray import tune

__all__ = ["CHECKPOINT_PREFIX", "CheckpointPruner", "prune_trial_checkpoints"]

CHECKPOINT_PREFIX = "checkpoint_"  # Tune's checkpoint_000123 directories in a trial dir
_log = logging.getLogger(__name__)


def _pending(trials: Iterable[Any]) -> set[str]:
    """Paths some trial would restore from next (after an exploit: the donor's checkpoint)."""
    return {t.checkpoint.path for t in trials if t.checkpoint is not None}


def prune_trial_checkpoints(
    fs: pafs.FileSystem, trial_dir: str, keep: int, protected: set[str]
) -> list[str]:
    """Delete all but the newest `keep` checkpoint dirs of one trial, sparing `protected`."""
    infos = fs.get_file_info(pafs.FileSelector(trial_dir, allow_not_found=True))
    found = sorted(
        i.path
        for i in infos
        if i.type == pafs.FileType.Directory and i.base_name.startswith(CHECKPOINT_PREFIX)
    )
    deleted = []
    for path in found[: max(0, len(found) - keep)]:
        if path in protected:
            continue
        try:
            fs.delete_dir(path)
        except FileNotFoundError:
            continue
        deleted.append(path)
    return deleted


class CheckpointPruner(tune.Callback):
    """Keep each trial's newest `keep` checkpoints and every checkpoint a trial will restore."""

    def __init__(self, keep: int) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.keep = keep
        self._fs: pafs.FileSystem | None = None  # the storage's, learnt from a checkpoint

    def _prune(self, fs: pafs.FileSystem, trial_dir: str, protected: set[str]) -> None:
        try:
            prune_trial_checkpoints(fs, trial_dir, self.keep, protected)
        except OSError as exc:  # storage hiccup: keeping too much is harmless, crashing is not
            _log.warning("could not prune checkpoints in %s: %s", trial_dir, exc)

    def on_checkpoint(
        self,
        iteration: int,
        trials: list[Any],
        trial: Any,
        checkpoint: tune.Checkpoint,
        **info: Any,
    ) -> None:
        # called before Tune registers `checkpoint` as the trial's latest: protect it too
        self._fs = checkpoint.filesystem
        self._prune(self._fs, _trial_dir(checkpoint), _pending(trials) | {checkpoint.path})

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        """Drop what was kept only for a restore that has since happened.

        Every trial's own dir is swept, not only the dir of its latest checkpoint: after an
        exploit that latest one is the donor's, and the clone's own dir may still hold a
        checkpoint Tune never registered (persisted on the result PBT paused it on).
        """
        if self._fs is None:
            return  # no checkpoint this run: nothing of ours to prune
        protected = _pending(trials)
        dirs = {t.path for t in trials if t.path} | {
            _trial_dir(t.checkpoint) for t in trials if t.checkpoint is not None
        }
        for trial_dir in sorted(dirs):
            self._prune(self._fs, trial_dir, protected)


def _trial_dir(checkpoint: tune.Checkpoint) -> str:
    return posixpath.dirname(checkpoint.path.rstrip("/"))
