"""DatasetWriter: build a dataset directory from chunks, with RAM and disk bounded.

Each Arrow file is laid out once, up front, at its final size: pyarrow writes the one-batch
IPC file from a sparse all-zero memory map (which costs no disk), then the writer maps the
file's value buffer read-write and `append` fills rows in place. So RAM stays bounded whatever
T is (dirty pages go to the file, not to anonymous memory) and the disk holds each array once:
a lab-scale suite (about 120 GB at T = 1e6) no longer needs a second copy at close, as a staged
write would. The temporary directory is renamed into place at close; on any error nothing is
left at the final path.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from latent_tune.atomic import atomic_dir
from latent_tune.data.format import (
    CONNECTOME_FILE,
    CONNECTOME_SCHEMA,
    FORMAT_VERSION,
    HEADER_FILE,
    NEURONS_FILE,
    NEURONS_SCHEMA,
    STIMULUS,
    DatasetHeader,
    arrow_file,
    arrow_schema,
    write_header,
)

__all__ = ["DatasetWriter", "write_arrow_from_buffer"]

_ZEROS_SUFFIX = ".zeros"  # the sparse source of an Arrow file's initial layout


def write_arrow_from_buffer(path: Path, name: str, flat: np.ndarray, width: int) -> None:
    """Write a (rows*width,) float32 buffer as a one-batch FixedSizeList Arrow IPC file.

    `flat` may be a memory map: pyarrow wraps it without copying and streams it to the file.
    """
    if flat.dtype != np.float32 or flat.ndim != 1 or flat.size % max(width, 1):
        raise ValueError(f"{path}: need a flat float32 buffer of rows x {width} values")
    n_rows = flat.size // width if width else 0
    values = pa.Array.from_buffers(pa.float32(), flat.size, [None, pa.py_buffer(flat)])
    schema = arrow_schema(name, width)
    column = pa.Array.from_buffers(schema.field(0).type, n_rows, [None], children=[values])
    batch = pa.RecordBatch.from_arrays([column], schema=schema)
    assert batch.num_rows == n_rows
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
        writer.write_batch(batch)


def _plain(value: Any) -> Any:
    """Provenance as plain YAML types (numpy scalars/arrays, paths and tuples converted)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def _values_offset(path: Path) -> int:
    """Byte offset of the float values of a one-batch FixedSizeList Arrow file."""
    mm = pa.memory_map(str(path), "r")
    try:
        whole = mm.read_buffer(mm.size())
        mm.seek(0)
        values = pa.ipc.open_file(mm).get_batch(0).column(0).values
        return values.buffers()[1].address - whole.address
    finally:
        mm.close()


class _ArrowBody:
    """One Arrow file at its final size, its (rows, width) float32 values mapped read-write."""

    def __init__(self, path: Path, name: str, rows: int, width: int) -> None:
        self.path = path
        self.width = width
        self.map: np.memmap | None = None
        size = rows * width
        if not size:
            write_arrow_from_buffer(path, name, np.zeros(0, dtype=np.float32), width)
            return
        zeros_path = path.with_name(path.name + _ZEROS_SUFFIX)
        zeros = np.memmap(zeros_path, dtype=np.float32, mode="w+", shape=(size,))  # sparse
        try:
            write_arrow_from_buffer(path, name, zeros, width)
        finally:
            _close_map(zeros)
            zeros_path.unlink(missing_ok=True)
        self.map = np.memmap(
            path, dtype=np.float32, mode="r+", offset=_values_offset(path), shape=(size,)
        )

    def write(self, t0: int, block: np.ndarray) -> None:
        if self.map is not None and block.size:
            self.map[t0 * self.width : t0 * self.width + block.size] = block.reshape(-1)

    def release(self) -> None:
        if self.map is not None:
            self.map.flush()
            _close_map(self.map)
            self.map = None


def _close_map(m: np.memmap) -> None:
    mm = getattr(m, "_mmap", None)
    if mm is not None:
        with contextlib.suppress(BufferError, ValueError):
            mm.close()


class DatasetWriter:
    """Write a dataset directory chunk by chunk; the directory appears atomically at close."""

    def __init__(
        self,
        path: Path | str,
        *,
        name: str,
        dt: float,
        n_steps: int,
        n_neurons: int,
        n_stimulus: int,
        quantities: Sequence[str],
        provenance: Mapping[str, Any] | None = None,
    ) -> None:
        self.path = Path(path)
        self.header = DatasetHeader(
            format_version=FORMAT_VERSION,
            name=name,
            dt=dt,
            n_steps=n_steps,
            n_neurons=n_neurons,
            n_stimulus=n_stimulus,
            quantities=list(quantities),
            provenance=_plain(dict(provenance or {})),
        )
        yaml.safe_dump(self.header.model_dump(mode="json"))  # fail now, not after hours of work
        self._steps_written = 0
        self._neurons: pa.Table | None = None
        self._connectome: pa.Table | None = None
        self._closed = False
        self._ctx = atomic_dir(self.path)
        self._tmp = self._ctx.__enter__()
        try:
            self._bodies: dict[str, _ArrowBody] = {}
            for q in self.header.quantities:
                self._bodies[q] = _ArrowBody(self._tmp / arrow_file(q), q, n_steps, n_neurons)
            self._bodies[STIMULUS] = _ArrowBody(
                self._tmp / arrow_file(STIMULUS), STIMULUS, n_steps, n_stimulus
            )
        except BaseException:
            self.abort()
            raise

    # -- context manager -------------------------------------------------------------------
    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self.abort()
        else:
            self.close()

    @property
    def steps_written(self) -> int:
        """Rows appended so far."""
        return self._steps_written

    # -- content -----------------------------------------------------------------------------
    def append(self, activity: Mapping[str, np.ndarray], stimulus: np.ndarray) -> None:
        """Append t rows of every quantity (t, N) and of the stimulus (t, S)."""
        self._check_open()
        h = self.header
        if set(activity) != set(h.quantities):
            raise ValueError(
                f"append: got quantities {sorted(activity)}, expected {sorted(h.quantities)}"
            )
        stim = np.asarray(stimulus, dtype=np.float32)
        if stim.ndim != 2 or stim.shape[1] != h.n_stimulus:
            raise ValueError(f"append: stimulus shape {stim.shape}, expected (t, {h.n_stimulus})")
        t = stim.shape[0]
        blocks = {}
        for q in h.quantities:
            a = np.asarray(activity[q], dtype=np.float32)
            if a.shape != (t, h.n_neurons):
                raise ValueError(f"append: {q} shape {a.shape}, expected ({t}, {h.n_neurons})")
            blocks[q] = a
        if self._steps_written + t > h.n_steps:
            raise ValueError(
                f"append: {self._steps_written} + {t} rows exceed n_steps = {h.n_steps}"
            )
        t0 = self._steps_written
        for q, a in blocks.items():
            self._bodies[q].write(t0, a)
        self._bodies[STIMULUS].write(t0, stim)
        self._steps_written += t

    def set_neurons(  # noqa: PLR0917 (signature fixed by the contract)
        self,
        index: np.ndarray,
        x: np.ndarray,
        y: np.ndarray,
        group: np.ndarray,
        type_id: np.ndarray,
        type_name: Sequence[str] | np.ndarray,
    ) -> None:
        """Neuron metadata, N entries each (type_name: the name of each neuron's type)."""
        self._check_open()
        n = self.header.n_neurons
        cols = {
            "index": index,
            "x": x,
            "y": y,
            "group": group,
            "type_id": type_id,
            "type_name": [str(s) for s in type_name],
        }
        arrays = []
        for field in NEURONS_SCHEMA:
            values = cols[field.name]
            if len(values) != n:
                raise ValueError(f"set_neurons: {field.name} has {len(values)} entries, N = {n}")
            if field.name != "type_name":
                values = np.asarray(values).astype(field.type.to_pandas_dtype(), copy=False)
            arrays.append(pa.array(values, type=field.type))
        self._neurons = pa.Table.from_arrays(arrays, schema=NEURONS_SCHEMA)

    def set_connectome(self, pre: np.ndarray, post: np.ndarray, weight: np.ndarray) -> None:
        """Connectome edges pre -> post with signed weights (E entries each)."""
        self._check_open()
        pre = np.asarray(pre).astype(np.int64, copy=False).reshape(-1)
        post = np.asarray(post).astype(np.int64, copy=False).reshape(-1)
        weight = np.asarray(weight).astype(np.float32, copy=False).reshape(-1)
        if not pre.shape == post.shape == weight.shape:
            raise ValueError(
                f"set_connectome: pre {pre.shape}, post {post.shape}, weight {weight.shape} differ"
            )
        n = self.header.n_neurons
        if pre.size and (min(pre.min(), post.min()) < 0 or max(pre.max(), post.max()) >= n):
            raise ValueError(f"set_connectome: edge endpoints must be in [0, {n})")
        self._connectome = pa.Table.from_arrays(
            [pa.array(pre), pa.array(post), pa.array(weight)], schema=CONNECTOME_SCHEMA
        )

    # -- finish --------------------------------------------------------------------------------
    def close(self) -> Path:
        """Write the Arrow/Parquet/YAML files and rename the directory into place."""
        if self._closed:
            return self.path
        try:
            h = self.header
            if self._steps_written != h.n_steps:
                raise ValueError(
                    f"close: {self._steps_written} rows appended, n_steps = {h.n_steps}"
                )
            for body in self._bodies.values():
                body.release()
            neurons = self._neurons if self._neurons is not None else self._default_neurons()
            pq.write_table(neurons, self._tmp / NEURONS_FILE)
            connectome = self._connectome
            if connectome is None:
                connectome = CONNECTOME_SCHEMA.empty_table()
            pq.write_table(connectome, self._tmp / CONNECTOME_FILE)
            write_header(self._tmp, h)
            assert (self._tmp / HEADER_FILE).is_file()
            for p in self._tmp.iterdir():  # durable before the rename publishes it
                with open(p, "rb") as f:
                    os.fsync(f.fileno())
        except BaseException:
            self.abort()
            raise
        self._closed = True
        self._ctx.__exit__(None, None, None)
        return self.path

    def abort(self) -> None:
        """Drop everything written so far; nothing appears at the final path."""
        if self._closed:
            return
        self._closed = True
        for body in getattr(self, "_bodies", {}).values():
            with contextlib.suppress(Exception):
                body.release()
        err = RuntimeError("DatasetWriter aborted")
        with contextlib.suppress(RuntimeError):
            self._ctx.__exit__(RuntimeError, err, None)
        shutil.rmtree(self._tmp, ignore_errors=True)

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"DatasetWriter for {self.path} is closed")

    def _default_neurons(self) -> pa.Table:
        """Placeholder metadata (one type) when the source has none."""
        n = self.header.n_neurons
        return pa.Table.from_arrays(
            [
                pa.array(np.arange(n, dtype=np.int64)),
                pa.array(np.zeros(n, np.float32)),
                pa.array(np.zeros(n, np.float32)),
                pa.array(np.zeros(n, np.int32)),
                pa.array(np.zeros(n, np.int32)),
                pa.array(["unknown"] * n, type=pa.string()),
            ],
            schema=NEURONS_SCHEMA,
        )
