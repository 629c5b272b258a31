"""Import the lab's zarr layout (`x_list_0/`) into a latent_tune dataset, streaming in time.

Why: the lab's existing simulations (METHOD.md section 1) are zarr v2 stores of up to ~50 GB
per quantity; converting them once gives zero-copy memory-mapped reads for every trial.

Layout read: `x_list_0/metadata.zarr` (N, 5) columns INDEX, XPOS, YPOS, GROUP_TYPE, TYPE and
`x_list_0/timeseries.zarr` (T, N, 4) columns VOLTAGE, STIMULUS, CALCIUM, FLUORESCENCE, chunked
(2000, N, 1) so one column is read without the others. The stimulus is the STIMULUS column of
the first S neurons (the photoreceptors). The connectome, when present, lies beside `x_list_0/`
as `edge_index.pt` (2, E) (row 0 presynaptic, row 1 postsynaptic) and `weights.pt` (E,).

This module imports zarr at top level: it is an optional extra, imported lazily by the CLI.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr

from latent_tune.data.network import LAB_TYPE_NAMES
from latent_tune.data.writer import DatasetWriter
from latent_tune.errors import UserInputError

__all__ = ["COLUMNS", "META_COLUMNS", "QUANTITY_COLUMNS", "import_zarr"]

COLUMNS = ("VOLTAGE", "STIMULUS", "CALCIUM", "FLUORESCENCE")
META_COLUMNS = ("INDEX", "XPOS", "YPOS", "GROUP_TYPE", "TYPE")
QUANTITY_COLUMNS = {"voltage": 0, "calcium": 2, "fluorescence": 3}
_STIMULUS_COLUMN = 1
_DIR = "x_list_0"


def _find_root(src: Path) -> Path:
    """The directory holding metadata.zarr and timeseries.zarr: `src` or `src/x_list_0`."""
    if (src / "timeseries.zarr").exists():
        return src
    if (src / _DIR / "timeseries.zarr").exists():
        return src / _DIR
    if not src.exists():
        raise UserInputError(src, None, "no such directory")
    raise UserInputError(src, "timeseries.zarr", f"missing (looked in {src} and {src / _DIR})")


def _open(path: Path) -> Any:
    if not path.exists():
        raise UserInputError(path, None, "missing zarr array")
    try:
        return zarr.open_array(store=str(path), mode="r")
    except Exception as e:  # zarr raises many types for a broken store
        raise UserInputError(path, None, f"not a readable zarr array: {e}") from e


def _load_tensor(path: Path) -> np.ndarray:
    try:
        t = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a bad file
        raise UserInputError(path, None, f"not a readable tensor file: {e}") from e
    if not isinstance(t, torch.Tensor):
        raise UserInputError(path, None, f"holds a {type(t).__name__}, expected a tensor")
    return t.numpy()


def _connectome(root: Path, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """Edges from edge_index.pt / weights.pt beside x_list_0 (or inside it), if present."""
    for d in (root.parent, root):
        ei_path = d / "edge_index.pt"
        if ei_path.is_file():
            break
    else:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0, dtype=np.float32), {"connectome": None}
    ei = _load_tensor(ei_path)
    if ei.ndim != 2 or ei.shape[0] != 2:
        raise UserInputError(ei_path, "shape", f"is {tuple(ei.shape)}, expected (2, E)")
    if not np.issubdtype(ei.dtype, np.integer):
        raise UserInputError(ei_path, "dtype", f"is {ei.dtype}, expected an integer type")
    bad = (ei < 0) | (ei >= n)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise UserInputError(
            ei_path, "values", f"edge {col} row {row} = {ei[row, col]} outside [0, {n})"
        )
    w_path = ei_path.parent / "weights.pt"
    info: dict[str, Any] = {"connectome": str(ei_path.resolve())}
    if w_path.is_file():
        w = _load_tensor(w_path).astype(np.float32).reshape(-1)
        if w.shape[0] != ei.shape[1]:
            raise UserInputError(
                w_path, "shape", f"has {w.shape[0]} weights for {ei.shape[1]} edges"
            )
        if not np.isfinite(w).all():
            raise UserInputError(w_path, "values", "non-finite weight")
        info["weights"] = str(w_path.resolve())
    else:
        w = np.ones(ei.shape[1], dtype=np.float32)
        info["weights"] = None  # pattern only (all 1.0), as the lab's AUG loss uses it
    return ei[0].astype(np.int64), ei[1].astype(np.int64), w, info


def import_zarr(
    src: Path,
    out: Path,
    *,
    n_stimulus: int = 1736,
    quantities: Sequence[str] = ("voltage", "calcium"),
    chunk_steps: int = 2000,
    dt: float = 0.02,
    type_names: Sequence[str] | None = None,
) -> Path:
    """Convert a lab store (`src` = `x_list_0/` or its parent) into the dataset dir `out`.

    Reads `chunk_steps` time steps at a time (RAM bounded whatever T is); the dataset appears
    atomically. Type names default to the lab's 65 names when every TYPE id fits them."""
    src, out = Path(src), Path(out)
    root = _find_root(src)
    quantities = list(quantities)
    for q in quantities:
        if q not in QUANTITY_COLUMNS:
            raise UserInputError(
                None, "quantities", f"unknown quantity {q!r} (one of {sorted(QUANTITY_COLUMNS)})"
            )
    if chunk_steps < 1:
        raise UserInputError(None, "chunk_steps", f"must be >= 1, got {chunk_steps}")
    meta_path, ts_path = root / "metadata.zarr", root / "timeseries.zarr"
    meta_arr, ts = _open(meta_path), _open(ts_path)
    if len(meta_arr.shape) != 2 or meta_arr.shape[1] != len(META_COLUMNS):
        raise UserInputError(
            meta_path, "shape", f"is {tuple(meta_arr.shape)}, expected (N, 5) {META_COLUMNS}"
        )
    n = int(meta_arr.shape[0])
    if len(ts.shape) != 3 or ts.shape[1] != n or ts.shape[2] != len(COLUMNS):
        raise UserInputError(
            ts_path, "shape", f"is {tuple(ts.shape)}, expected (T, N={n}, 4) {COLUMNS}"
        )
    n_steps = int(ts.shape[0])
    if n_steps < 1:
        raise UserInputError(ts_path, "shape", "has no time steps")
    if not 0 <= n_stimulus <= n:
        raise UserInputError(None, "n_stimulus", f"{n_stimulus} is outside [0, N={n}]")

    meta = np.asarray(meta_arr[...], dtype=np.float64)
    if not np.isfinite(meta).all():
        row, col = np.argwhere(~np.isfinite(meta))[0]
        raise UserInputError(meta_path, META_COLUMNS[col], f"non-finite value at row {row}")
    ids = meta[:, 4]
    if (ids < 0).any() or (ids != np.round(ids)).any():
        raise UserInputError(meta_path, "TYPE", "type ids must be non-negative integers")
    type_id = ids.astype(np.int64)
    k = int(type_id.max()) + 1
    if type_names is None:
        names = list(LAB_TYPE_NAMES) if k <= len(LAB_TYPE_NAMES) else None
        names = names or [f"type_{i}" for i in range(k)]
    else:
        names = list(type_names)
        if len(names) < k:
            raise UserInputError(None, "type_names", f"{len(names)} names for type ids 0..{k - 1}")
    pre, post, weight, conn_info = _connectome(root, n)

    provenance = {
        "importer": "latent_tune.data.importer_zarr",
        "source": os.fspath(root.resolve()),
        "columns": {q: COLUMNS[QUANTITY_COLUMNS[q]] for q in quantities},
        "stimulus": f"STIMULUS of the first {n_stimulus} neurons",
        **conn_info,
    }
    name = root.parent.name if root.name == _DIR else root.name
    with DatasetWriter(
        out,
        name=name or "imported",
        dt=dt,
        n_steps=n_steps,
        n_neurons=n,
        n_stimulus=n_stimulus,
        quantities=quantities,
        provenance=provenance,
    ) as w:
        w.set_neurons(
            np.round(meta[:, 0]).astype(np.int64),
            meta[:, 1],
            meta[:, 2],
            np.round(meta[:, 3]).astype(np.int32),
            type_id,
            np.asarray(names, dtype=object)[type_id],
        )
        w.set_connectome(pre, post, weight)
        for t0 in range(0, n_steps, chunk_steps):
            t1 = min(n_steps, t0 + chunk_steps)
            acts = {
                q: np.asarray(ts[t0:t1, :, QUANTITY_COLUMNS[q]], dtype=np.float32)
                for q in quantities
            }
            stim = np.asarray(ts[t0:t1, :n_stimulus, _STIMULUS_COLUMN], dtype=np.float32)
            w.append(acts, stim.reshape(t1 - t0, n_stimulus))
    return out
