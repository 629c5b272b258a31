"""The trial's own event file (HParams record + `hparam/` scalars), flushed for real.

Why not tensorboardX's SummaryWriter: its flush() writes out only what its background thread
has already taken from the queue, so an event added just before flush() can still be in
memory when Ray uploads the trial dir to storage; a trial stopped right after (ASHA) then showed
the previous epoch's objective in the storage copy. TensorBoard's own writer waits in flush()
until every queued event is written.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter

__all__ = ["TrialEventWriter"]


class TrialEventWriter:
    """The part of the SummaryWriter interface the HParams writer uses (`add_scalar`,
    `_get_file_writer().add_summary`, `flush`), with a flush that returns only once every event
    added so far is in the file."""

    def __init__(self, logdir: str | Path, filename_suffix: str = "") -> None:
        self._writer = EventFileWriter(str(logdir), filename_suffix=filename_suffix)

    def _get_file_writer(self) -> TrialEventWriter:
        return self

    def add_summary(self, summary: Any, global_step: int | None = None) -> None:
        """Add a Summary proto (tensorboardX's or TensorBoard's: same wire format)."""
        event = event_pb2.Event(
            wall_time=time.time(),
            summary=summary_pb2.Summary.FromString(summary.SerializeToString()),
        )
        if global_step is not None:
            event.step = int(global_step)
        self._writer.add_event(event)

    def add_scalar(self, tag: str, value: float, global_step: int | None = None) -> None:
        value_pb = summary_pb2.Summary.Value(tag=tag, simple_value=float(value))
        self.add_summary(summary_pb2.Summary(value=[value_pb]), global_step)

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
