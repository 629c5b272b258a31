"""Import dense recordings from plain arrays (.npy, .npz, HDF5) into a latent_tune dataset.

Why: other labs keep activity as one matrix per session (suite2p's `F.npy` and CaImAn's `C` are
(neurons, time); simulations often (time, neurons)) and the stimulus as a second array. The
time axis is taken from `layout` or, when not given, from the axis whose length the stimulus
shares; a guess that could go either way is refused. Rows are streamed `chunk_steps` at a time
into the DatasetWriter (.npy is memory-mapped, HDF5 read by slices; a .npz member is read
whole, so very large recordings belong in .npy or HDF5). Only densely sampled recordings fit:
staggered observation is applied later, by the acquisition of each run.

h5py is an optional extra, imported only when an HDF5 file is given.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from latent_tune.data.format import QUANTITY_RE, RESERVED_NAMES
from latent_tune.data.writer import DatasetWriter
from latent_tune.errors import UserInputError

__all__ = [
    "HDF5_HINT",
    "ArraySource",
    "ImportSummary",
    "import_arrays",
    "load_edges",
    "parse_source",
]

HDF5_HINT = "needs the hdf5 extra: pip install 'latent-tune[hdf5]'"
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".he5")
LAYOUTS = ("tn", "nt")
# Per-neuron std outside this band: the divergence threshold (an MSE of 1.0 in raw units)
# cannot tell a diverged rollout from a good one.
SCALE_BAND = (0.01, 10.0)


@dataclass(frozen=True)
class ArraySource:
    """One array: a file and, for .npz/HDF5 holding several, the key (member or dataset path)."""

    path: Path
    key: str | None = None

    @property
    def label(self) -> str:
        return self.key or "-"


@dataclass
class ImportSummary:
    """What import_arrays wrote, and the warnings the command prints."""

    path: Path
    n_steps: int
    n_neurons: int
    n_stimulus: int
    layout: str
    n_edges: int
    warnings: list[str] = field(default_factory=list)


def parse_source(text: str) -> ArraySource:
    """`FILE` or `FILE:KEY` (a path that exists as given is never split)."""
    if Path(text).exists() or ":" not in text:
        return ArraySource(Path(text))
    path, _, key = text.rpartition(":")
    return ArraySource(Path(path), key or None)


def _hdf5_module() -> Any:
    try:
        import h5py  # optional extra, only on this path
    except ImportError as e:
        raise UserInputError(None, "import-arrays", HDF5_HINT) from e
    return h5py


def _pick(src: ArraySource, keys: list[str], what: str) -> str:
    if src.key is None:
        if len(keys) == 1:
            return keys[0]
        raise UserInputError(
            src.path, "-", f"holds {len(keys)} arrays {keys[:10]}; name the {what} as FILE:KEY"
        )
    if src.key not in keys:
        raise UserInputError(src.path, src.key, f"missing {what} array (has {keys[:20]})")
    return src.key


def _open(src: ArraySource, what: str, stack: contextlib.ExitStack) -> Any:
    """An array-like (shape, ndim, dtype, slicing) for `src`; files stay open in `stack`."""
    path = src.path
    if not path.is_file():
        raise UserInputError(path, src.label, f"missing {what} file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            if src.key is not None:
                raise UserInputError(path, src.key, "a .npy file holds one array: give no key")
            return np.load(path, mmap_mode="r", allow_pickle=False)
        if suffix == ".npz":
            npz = stack.enter_context(np.load(path, allow_pickle=False))
            return npz[_pick(src, list(npz.files), what)]
        if suffix in HDF5_SUFFIXES:
            h5py = _hdf5_module()
            f = stack.enter_context(h5py.File(path, "r"))
            names: list[str] = []
            f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
            return f[_pick(src, names, what)]
    except UserInputError:
        raise
    except (OSError, ValueError) as e:
        raise UserInputError(path, src.label, f"not a readable array file: {e}") from e
    raise UserInputError(
        path, src.label, f"unknown file type {suffix!r} (expected .npy, .npz or HDF5 .h5/.hdf5)"
    )


def _check_numeric(arr: Any, src: ArraySource, what: str) -> None:
    kind = np.dtype(arr.dtype).kind
    if kind not in "fiub":
        raise UserInputError(src.path, src.label, f"{what} has dtype {arr.dtype}, not numeric")


def _time_axis(shape: tuple[int, int], stim_shape: tuple[int, ...], layout: str | None) -> int:
    """Axis of the activity that is time: from `layout`, else the one the stimulus shares."""
    if layout is not None:
        return LAYOUTS.index(layout)
    matches = [ax for ax in (0, 1) if shape[ax] in stim_shape]
    if len(matches) == 1 and shape[0] != shape[1]:
        return matches[0]
    found = "both axes" if matches else "neither axis"
    raise UserInputError(
        None,
        "--layout",
        f"cannot tell time from neurons: activity is {shape}, stimulus {stim_shape}, and "
        f"{found} of the activity matches a stimulus axis; give --layout tn (time x neurons) "
        "or nt (neurons x time, as suite2p's F.npy and CaImAn's C)",
    )


def _stim_time_axis(
    stim_shape: tuple[int, ...], n_steps: int, explicit: str | None, fallback: str | None
) -> int:
    """Time axis of the stimulus: `explicit`, else the axis of length T (`fallback` if both)."""
    if len(stim_shape) == 1:
        axis = 0
    elif explicit is not None:
        axis = LAYOUTS.index(explicit)
    elif stim_shape[0] == n_steps and stim_shape[1] == n_steps:
        if fallback is None:
            raise UserInputError(
                None, "--stimulus-layout", f"stimulus is {stim_shape}: give tn or nt"
            )
        axis = LAYOUTS.index(fallback)
    else:
        axis = 0 if stim_shape[0] == n_steps else 1
    if stim_shape[axis] != n_steps:
        raise UserInputError(
            None,
            "--stimulus",
            f"stimulus {stim_shape} has no time axis of {n_steps} steps (the activity's T)",
        )
    return axis


def _rows(arr: Any, axis: int, t0: int, t1: int) -> np.ndarray:
    """Rows t0:t1 as a (t, width) float32 block whichever axis is time."""
    if arr.ndim == 1:
        return np.asarray(arr[t0:t1], dtype=np.float32).reshape(-1, 1)
    block = arr[t0:t1] if axis == 0 else arr[:, t0:t1]
    block = np.asarray(block, dtype=np.float32)
    return block if axis == 0 else np.ascontiguousarray(block.T)


def _check_finite(block: np.ndarray, src: ArraySource, t0: int, what: str) -> None:
    bad = ~np.isfinite(block)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise UserInputError(
            src.path, src.label, f"non-finite {what} value at time {t0 + int(r)}, column {int(c)}"
        )


def load_edges(path: Path, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Edge list pre, post[, weight] from .npy ((E, 2|3) or (2|3, E)) or .csv (header optional)."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(path, "-", "missing connectome file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            e = np.load(path, allow_pickle=False)
        elif suffix in (".csv", ".txt"):
            with open(path, encoding="utf-8") as f:
                first = f.readline()
            try:
                [float(v) for v in first.split(",") if v.strip()]
                skip = 0
            except ValueError:
                skip = 1  # a header line
            e = np.loadtxt(path, delimiter=",", skiprows=skip, ndmin=2, dtype=np.float64)
        else:
            raise UserInputError(path, "-", f"unknown edge-list type {suffix!r} (.npy or .csv)")
    except (OSError, ValueError) as err:
        raise UserInputError(path, "-", f"not a readable edge list: {err}") from err
    if e.ndim == 2 and e.shape[0] in (2, 3) and e.shape[1] not in (2, 3):
        e = e.T
    if e.ndim != 2 or e.shape[1] not in (2, 3):
        raise UserInputError(
            path, "shape", f"is {e.shape}, expected (E, 2) pre, post or (E, 3) with weight"
        )
    ends = e[:, :2]
    if e.size and (ends != np.round(ends)).any():
        raise UserInputError(path, "pre/post", "neuron indices must be integers")
    pre, post = ends[:, 0].astype(np.int64), ends[:, 1].astype(np.int64)
    for col, v in (("pre", pre), ("post", post)):
        bad = (v < 0) | (v >= n)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise UserInputError(path, col, f"edge {i} has {col} = {v[i]}, outside [0, {n})")
    w = e[:, 2].astype(np.float32) if e.shape[1] == 3 else np.ones(len(e), np.float32)
    if not np.isfinite(w).all():
        raise UserInputError(path, "weight", "non-finite weight")
    return pre, post, w


def _scale_warning(sums: np.ndarray, sq: np.ndarray, n_steps: int, src: ArraySource) -> str | None:
    mean = sums / n_steps
    std = np.sqrt(np.maximum(sq / n_steps - mean * mean, 0.0))
    med = float(np.median(std))
    lo, hi = SCALE_BAND
    if lo <= med <= hi:
        return None
    return (
        f"warning: {src.path}: {src.label}: median per-neuron std is {med:.3g}, far from 0.1-1: "
        "evaluation.divergence_threshold (1.0, an MSE in the data's raw units) will not tell "
        "diverged rollouts from good ones; rescale the recording (e.g. dF/F or z-scores) first "
        "or set the threshold for this scale"
    )


def import_arrays(
    activity: Sequence[tuple[str, ArraySource]],
    stimulus: ArraySource,
    out: Path,
    *,
    layout: str | None = None,
    stimulus_layout: str | None = None,
    connectome: Path | None = None,
    dt: float = 0.02,
    name: str | None = None,
    chunk_steps: int = 2000,
) -> ImportSummary:
    """Write the dataset `out` from (quantity, array) pairs and a stimulus array, streaming."""
    out = Path(out)
    if not activity:
        raise UserInputError(None, "--activity", "give at least one activity array")
    for opt, val in (("--layout", layout), ("--stimulus-layout", stimulus_layout)):
        if val is not None and val not in LAYOUTS:
            raise UserInputError(None, opt, f"{val!r} is not one of {list(LAYOUTS)}")
    if chunk_steps < 1:
        raise UserInputError(None, "chunk_steps", f"must be >= 1, got {chunk_steps}")
    if not (math.isfinite(dt) and dt > 0):
        raise UserInputError(None, "--dt", f"must be a finite number > 0, got {dt}")
    for q, _ in activity:
        if not QUANTITY_RE.match(q) or q in RESERVED_NAMES:
            raise UserInputError(
                None,
                "--activity",
                f"quantity name {q!r} must match {QUANTITY_RE.pattern} "
                f"and not be one of {sorted(RESERVED_NAMES)}",
            )
    with contextlib.ExitStack() as stack:
        arrays = []
        for q, src in activity:
            arr = _open(src, f"{q} activity", stack)
            _check_numeric(arr, src, "activity")
            if arr.ndim != 2:
                raise UserInputError(
                    src.path, src.label, f"activity is {tuple(arr.shape)}, expected 2-D"
                )
            arrays.append((q, src, arr))
        stim = _open(stimulus, "stimulus", stack)
        _check_numeric(stim, stimulus, "stimulus")
        if stim.ndim not in (1, 2):
            raise UserInputError(
                stimulus.path, stimulus.label, f"stimulus is {tuple(stim.shape)}, expected 1-D/2-D"
            )
        q0, src0, a0 = arrays[0]
        shape = tuple(int(v) for v in a0.shape)
        try:
            axis = _time_axis(shape, tuple(int(v) for v in stim.shape), layout)
        except UserInputError as e:
            raise UserInputError(src0.path, e.key, e.problem) from None
        n_steps, n = shape[axis], shape[1 - axis]
        for q, src, arr in arrays[1:]:
            if tuple(arr.shape) != shape:
                raise UserInputError(
                    src.path, src.label, f"{q} is {tuple(arr.shape)}, {q0} is {shape}"
                )
        try:
            s_axis = _stim_time_axis(tuple(stim.shape), n_steps, stimulus_layout, layout)
        except UserInputError as e:
            raise UserInputError(stimulus.path, stimulus.label, e.problem) from None
        n_stim = 1 if stim.ndim == 1 else int(stim.shape[1 - s_axis])
        if n_steps < 1 or n < 1:
            raise UserInputError(src0.path, src0.label, f"activity {shape} is empty")
        edges = (
            load_edges(connectome, n)
            if connectome is not None
            else (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))
        )
        provenance = {
            "importer": "latent_tune.data.importer_arrays",
            "activity": {q: f"{os.path.abspath(s.path)}:{s.label}" for q, s, _ in arrays},
            "stimulus": f"{os.path.abspath(stimulus.path)}:{stimulus.label}",
            "layout": LAYOUTS[axis],
            "connectome": None if connectome is None else os.path.abspath(connectome),
        }
        sums = {q: np.zeros(n) for q, _, _ in arrays}
        sqs = {q: np.zeros(n) for q, _, _ in arrays}
        with DatasetWriter(
            out,
            name=name or out.name or "imported",
            dt=dt,
            n_steps=n_steps,
            n_neurons=n,
            n_stimulus=n_stim,
            quantities=[q for q, _, _ in arrays],
            provenance=provenance,
        ) as w:
            w.set_connectome(*edges)
            for t0 in range(0, n_steps, chunk_steps):
                t1 = min(n_steps, t0 + chunk_steps)
                acts = {}
                for q, src, arr in arrays:
                    block = _rows(arr, axis, t0, t1)
                    _check_finite(block, src, t0, q)
                    sums[q] += block.sum(axis=0, dtype=np.float64)
                    sqs[q] += np.square(block, dtype=np.float64).sum(axis=0)
                    acts[q] = block
                sblock = _rows(stim, s_axis, t0, t1)
                _check_finite(sblock, stimulus, t0, "stimulus")
                w.append(acts, sblock)
    warnings = [
        msg
        for q, src, _ in arrays
        if (msg := _scale_warning(sums[q], sqs[q], n_steps, src)) is not None
    ]
    return ImportSummary(
        path=out,
        n_steps=n_steps,
        n_neurons=n,
        n_stimulus=n_stim,
        layout=LAYOUTS[axis],
        n_edges=int(edges[0].size),
        warnings=warnings,
    )
