"""Dataset: open a dataset directory, validate it, hand out zero-copy views of the memory maps.

Opening checks everything that is cheap (header, every file present and readable, Arrow shapes
and dtypes against the header, Parquet schemas, edges in range) so a bad dataset fails at once
with one line naming the file; the NaN/inf scan of the big arrays is `check()`, run on demand
(`info --check`), since reading 50 GB on every open would be absurd.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from latent_tune.data.format import (
    CONNECTOME_FILE,
    CONNECTOME_SCHEMA,
    HEADER_FILE,
    NEURONS_FILE,
    NEURONS_SCHEMA,
    STIMULUS,
    SUITE_FILE,
    DatasetHeader,
    arrow_file,
    parse_header,
)
from latent_tune.errors import UserInputError

__all__ = ["Dataset", "open_arrow_rows"]

# Rows per block of the NaN/inf scan: about 64 MB of float32 at a time.
_SCAN_BYTES = 64 << 20


def open_arrow_rows(path: Path, key: str, n_rows: int, width: int) -> np.ndarray:
    """Map an activity/stimulus Arrow file and return its (n_rows, width) read-only view.

    The array's memory is the memory map itself (no copy); every layout rule of
    the format (docs/method.md, section 1) is checked; a violation raises UserInputError.
    """
    if not path.is_file():
        raise UserInputError(path, key, "missing file")
    try:
        source = pa.memory_map(str(path), "r")
        reader = pa.ipc.open_file(source)
        n_batches = reader.num_record_batches
        schema = reader.schema
    except (pa.ArrowException, OSError) as e:
        raise UserInputError(
            path, key, f"not a readable Arrow IPC file (truncated or corrupt?): {e}"
        ) from e
    if len(schema) != 1:
        raise UserInputError(path, key, f"has {len(schema)} columns, expected 1")
    typ = schema.field(0).type
    if not pa.types.is_fixed_size_list(typ) or typ.value_type != pa.float32():
        raise UserInputError(
            path, key, f"column type is {typ}, expected fixed_size_list<float32>[{width}]"
        )
    if typ.list_size != width:
        raise UserInputError(path, key, f"rows have width {typ.list_size}, expected {width}")
    if n_batches != 1:
        raise UserInputError(
            path,
            key,
            f"has {n_batches} record batches, expected exactly 1 (rewrite with "
            "latent_tune's DatasetWriter)",
        )
    try:
        batch = reader.get_batch(0)
    except (pa.ArrowException, OSError) as e:
        raise UserInputError(path, key, f"record batch unreadable (truncated?): {e}") from e
    if width == 0:  # Arrow does not keep the row count of zero-width lists: nothing to map
        empty = np.zeros((n_rows, 0), dtype=np.float32)
        empty.flags.writeable = False
        return empty
    if batch.num_rows != n_rows:
        raise UserInputError(path, key, f"has {batch.num_rows} rows, expected {n_rows}")
    column = batch.column(0)
    if column.null_count or column.values.null_count:
        raise UserInputError(path, key, "contains nulls")
    values = column.values.slice(column.offset * width, n_rows * width)
    flat = values.to_numpy(zero_copy_only=True)
    if flat.size:
        whole = source.size()
        start = flat.ctypes.data - _map_address(source)
        if not 0 <= start <= whole - flat.nbytes:
            raise UserInputError(
                path,
                key,
                "values are not in the memory map (compressed Arrow file?); "
                "expected one uncompressed record batch",
            )
    view = flat.reshape(n_rows, width)
    view.flags.writeable = False
    return view


def _map_address(source: pa.MemoryMappedFile) -> int:
    """Start address of a memory-mapped file (zero-copy buffer of its whole contents)."""
    pos = source.tell()
    source.seek(0)
    buf = source.read_buffer(source.size())
    source.seek(pos)
    return buf.address


class Dataset:
    """A validated dataset directory whose arrays are zero-copy views of memory maps."""

    def __init__(
        self,
        path: Path,
        header: DatasetHeader,
        arrays: dict[str, np.ndarray],
        neurons: pa.Table,
        connectome: pa.Table,
    ) -> None:
        self._path = path
        self._header = header
        self._arrays = arrays
        self._neurons = neurons
        self._connectome = connectome

    # -- opening ---------------------------------------------------------------------------
    @classmethod
    def open(cls, path: Path | str) -> Dataset:
        """Open and validate a dataset directory (cheap: no full data scan)."""
        path = Path(path)
        if not path.is_dir():
            raise UserInputError(path, None, "not a dataset directory (does not exist)")
        if not (path / HEADER_FILE).is_file() and (path / SUITE_FILE).is_file():
            raise UserInputError(
                path,
                None,
                f"is a suite ({SUITE_FILE}: a training dataset plus cross-validation datasets), "
                f"but a single dataset directory ({HEADER_FILE}) is expected here; give one of "
                "the suite's dataset directories",
            )
        header = parse_header(path / HEADER_FILE)
        hfile = path / HEADER_FILE
        for q in header.quantities:
            if not (path / arrow_file(q)).is_file():
                raise UserInputError(
                    path / arrow_file(q), q, f"missing file (quantity {q!r} is listed in {hfile})"
                )
        arrays = {
            q: open_arrow_rows(path / arrow_file(q), q, header.n_steps, header.n_neurons)
            for q in header.quantities
        }
        arrays[STIMULUS] = open_arrow_rows(
            path / arrow_file(STIMULUS), STIMULUS, header.n_steps, header.n_stimulus
        )
        neurons = _read_neurons(path / NEURONS_FILE, header.n_neurons)
        connectome = _read_connectome(path / CONNECTOME_FILE, header.n_neurons)
        return cls(path, header, arrays, neurons, connectome)

    def __reduce__(self):  # ship by path: each process maps the files itself
        return (type(self).open, (os.fspath(self._path),))

    def __repr__(self) -> str:
        h = self._header
        return (
            f"Dataset({os.fspath(self._path)!r}, T={h.n_steps}, N={h.n_neurons}, "
            f"S={h.n_stimulus}, quantities={h.quantities})"
        )

    # -- properties ------------------------------------------------------------------------
    @property
    def path(self) -> Path:
        return self._path

    @property
    def header(self) -> DatasetHeader:
        return self._header

    @property
    def n_steps(self) -> int:
        return self._header.n_steps

    @property
    def n_neurons(self) -> int:
        return self._header.n_neurons

    @property
    def n_stimulus(self) -> int:
        return self._header.n_stimulus

    @property
    def quantities(self) -> list[str]:
        return list(self._header.quantities)

    @property
    def dt(self) -> float:
        return self._header.dt

    # -- data ------------------------------------------------------------------------------
    def activity(self, quantity: str) -> np.ndarray:
        """(T, N) float32 read-only zero-copy view; slice it (t0:t1) for a chunk."""
        if quantity not in self._header.quantities:
            raise UserInputError(
                self._path / HEADER_FILE,
                "quantities",
                f"dataset has no quantity {quantity!r} (has {self._header.quantities})",
            )
        return self._arrays[quantity]

    def stimulus(self) -> np.ndarray:
        """(T, S) float32 read-only zero-copy view."""
        return self._arrays[STIMULUS]

    def neurons(self) -> pa.Table:
        """Neuron metadata table (index, x, y, group, type_id, type_name), N rows."""
        return self._neurons

    def cell_types(self) -> np.ndarray:
        """(N,) int64 cell type id of every neuron."""
        return self._neurons.column("type_id").to_numpy().astype(np.int64)

    def type_names(self) -> list[str]:
        """Name of every type id 0..K-1 (`type_<id>` for an id no neuron has)."""
        ids = self._neurons.column("type_id").to_numpy()
        names = self._neurons.column("type_name").to_pylist()
        k = int(ids.max()) + 1 if ids.size else 0
        out = [f"type_{i}" for i in range(k)]
        uniq, first = np.unique(ids, return_index=True)
        for i, j in zip(uniq.tolist(), first.tolist()):
            out[i] = names[j]
        return out

    def connectome(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Edges (pre int64, post int64, weight float32), each (E,)."""
        t = self._connectome
        return (
            t.column("pre").to_numpy().astype(np.int64, copy=False),
            t.column("post").to_numpy().astype(np.int64, copy=False),
            t.column("weight").to_numpy().astype(np.float32, copy=False),
        )

    def check(self) -> None:
        """Scan every array for NaN/inf in time blocks; raise naming the first bad row."""
        for key, arr in self._arrays.items():
            if arr.size == 0:
                continue
            rows = max(1, _SCAN_BYTES // (arr.shape[1] * arr.itemsize))
            for t0 in range(0, arr.shape[0], rows):
                block = arr[t0 : t0 + rows]
                bad = ~np.isfinite(block)
                if bad.any():
                    r, c = np.argwhere(bad)[0]
                    what = "neuron" if key != STIMULUS else "column"
                    raise UserInputError(
                        self._path / arrow_file(key),
                        key,
                        f"non-finite value {block[r, c]} at row {t0 + int(r)}, {what} {int(c)}",
                    )
        for col in ("x", "y"):
            v = self._neurons.column(col).to_numpy()
            if not np.isfinite(v).all():
                i = int(np.flatnonzero(~np.isfinite(v))[0])
                raise UserInputError(self._path / NEURONS_FILE, col, f"non-finite at row {i}")


def _read_parquet(path: Path, schema: pa.Schema) -> pa.Table:
    """Read a Parquet table whose columns must have exactly the schema's types."""
    if not path.is_file():
        raise UserInputError(path, None, "missing file")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        raise UserInputError(path, None, f"not a readable Parquet file: {e}") from e
    for field in schema:
        if field.name not in table.column_names:
            raise UserInputError(path, field.name, "missing column")
        typ = table.schema.field(field.name).type
        if typ != field.type:
            raise UserInputError(path, field.name, f"column type is {typ}, expected {field.type}")
        if table.column(field.name).null_count:
            raise UserInputError(path, field.name, "contains nulls")
    return table.select(schema.names)


def _read_neurons(path: Path, n_neurons: int) -> pa.Table:
    table = _read_parquet(path, NEURONS_SCHEMA)
    if table.num_rows != n_neurons:
        raise UserInputError(
            path, None, f"has {table.num_rows} rows, expected n_neurons = {n_neurons}"
        )
    ids = table.column("type_id").to_numpy()
    if ids.size and ids.min() < 0:
        raise UserInputError(path, "type_id", f"negative type id {int(ids.min())}")
    per_id = table.group_by("type_id").aggregate([("type_name", "count_distinct")])
    multi = per_id.filter(pc.greater(per_id.column("type_name_count_distinct"), 1))
    if multi.num_rows:
        tid = multi.column("type_id")[0].as_py()
        raise UserInputError(path, "type_name", f"type id {tid} has several names")
    return table


def _read_connectome(path: Path, n_neurons: int) -> pa.Table:
    table = _read_parquet(path, CONNECTOME_SCHEMA)
    for col in ("pre", "post"):
        v = table.column(col).to_numpy()
        bad = (v < 0) | (v >= n_neurons)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise UserInputError(
                path, col, f"edge {i} has {col} = {int(v[i])}, outside [0, {n_neurons})"
            )
    w = table.column("weight").to_numpy()
    if not np.isfinite(w).all():
        i = int(np.flatnonzero(~np.isfinite(w))[0])
        raise UserInputError(path, "weight", f"edge {i} has non-finite weight {w[i]}")
    return table
