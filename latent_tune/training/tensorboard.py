"""TensorBoard logging under the lab's tag names (tensorboardX, written into the run dir).

The lab compares runs by eye in TensorBoard; keeping its tag names (`Loss/train_<term>`,
`Time/...`, `Val/<metric>`, `CrossVal/<name>/<metric>`, `StimulusAE/recon`, `ReconWarmup/<term>`)
lets those habits carry over. Only this module touches tensorboardX, so writers are opened and
closed in one place (important with Ray's reuse_actors: no writer may outlive its trial).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib.figure
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from tensorboardX import SummaryWriter
from tensorboardX.summary import hparams as hparams_summary

__all__ = ["HPARAM_METRIC_PREFIX", "TBLogger", "figure_to_array", "hparam_value", "write_hparams"]

HPARAM_METRIC_PREFIX = "hparam/"


def figure_to_array(fig: matplotlib.figure.Figure) -> np.ndarray:
    """Render a figure to an (H, W, 3) uint8 array (Agg), so no display is ever needed."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    return np.ascontiguousarray(rgba[..., :3])


def hparam_value(value: Any) -> bool | str | float | int:
    """Coerce a config leaf to a type the HParams plugin accepts (None/lists become text)."""
    if isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value
    if value is None:
        return "null"
    return str(value)


def write_hparams(
    writer: SummaryWriter,
    hparams: Mapping[str, Any],
    metrics: Mapping[str, float],
    step: int | None = None,
) -> None:
    """Write one HParams session (flattened config + metric values) into `writer`'s event file.

    Unlike SummaryWriter.add_hparams this writes into the writer's own directory (no timestamped
    sub-run), so a trial's scalars, figures and hparams sit together. Metric tags are prefixed
    with `hparam/` so they never collide with the training scalars of the same name.
    """
    hp = {str(k): hparam_value(v) for k, v in hparams.items()}
    tagged = {
        (k if k.startswith(HPARAM_METRIC_PREFIX) else HPARAM_METRIC_PREFIX + k): float(v)
        for k, v in metrics.items()
    }
    exp, ssi, sei = hparams_summary(hp, tagged)
    fw = writer._get_file_writer()  # the public add_hparams would open a sub-run
    fw.add_summary(exp)
    fw.add_summary(ssi)
    fw.add_summary(sei)
    for tag, value in tagged.items():
        if math.isfinite(value):
            writer.add_scalar(tag, value, step)
    writer.flush()


class TBLogger:
    """A thin writer over one run dir; a None run dir makes every call a no-op (tests, benches)."""

    def __init__(self, run_dir: Path | None, *, flush_secs: int = 30) -> None:
        self.run_dir = None if run_dir is None else Path(run_dir)
        self._writer: SummaryWriter | None = None
        if self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._writer = SummaryWriter(logdir=str(self.run_dir), flush_secs=flush_secs)

    @property
    def enabled(self) -> bool:
        """Whether anything is written (False without a run dir or after close)."""
        return self._writer is not None

    def scalar(self, tag: str, value: float, step: int) -> None:
        """One scalar; a NaN/inf value is skipped (a gap in the curve).

        Why skip: TensorBoard cannot plot them, and tensorboardX warns "NaN or Inf found in
        input tensor" for each (e.g. three times an epoch for the intervening MSE at tu = 1);
        the reports and results.parquet keep the value.
        """
        value = float(value)
        if self._writer is not None and math.isfinite(value):
            self._writer.add_scalar(tag, value, int(step))

    def scalars(self, prefix: str, values: Mapping[str, float], step: int) -> None:
        """Many scalars under `prefix` + name (e.g. `Loss/train_` + `total`)."""
        for name, value in values.items():
            self.scalar(f"{prefix}{name}", value, step)

    def train_losses(self, losses: Mapping[str, float], step: int) -> None:
        """`Loss/train_<term>` for every loss term (zero-valued terms included, as the lab)."""
        self.scalars("Loss/train_", losses, step)

    def times(self, step: int, **durations: float) -> None:
        """`Time/<name>` for epoch_duration, total_elapsed, diagnostics_duration."""
        self.scalars("Time/", durations, step)

    def eval_metrics(self, dataset: str | None, metrics: Mapping[str, float], step: int) -> None:
        """`Val/<metric>` (dataset None) or `CrossVal/<name>/<metric>`."""
        self.scalars(self.eval_prefix(dataset), metrics, step)

    @staticmethod
    def eval_prefix(dataset: str | None) -> str:
        """Tag prefix of a validation (None) or cross-validation dataset."""
        return "Val/" if dataset is None else f"CrossVal/{dataset}/"

    def figure(self, tag: str, fig: matplotlib.figure.Figure, step: int) -> None:
        """A figure as an image (rendered with Agg; the caller closes the figure)."""
        if self._writer is not None:
            self._writer.add_image(tag, figure_to_array(fig), int(step), dataformats="HWC")

    def hparams(
        self, hparams: Mapping[str, Any], metrics: Mapping[str, float], step: int | None = None
    ) -> None:
        """One HParams record of this run (see write_hparams)."""
        if self._writer is not None:
            write_hparams(self._writer, hparams, metrics, step)

    def flush(self) -> None:
        """Push pending events to disk (before a checkpoint is reported)."""
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        """Close the writer; safe to call twice."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
