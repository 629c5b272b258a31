"""Import the lab's zarr layout (`x_list_0/`) into a latent_tune dataset, streaming in time.

Why: the lab's simulations are zarr v2 stores of up to ~50 GB per quantity; converting them once
gives zero-copy memory-mapped reads for every trial.

Layout read: `x_list_0/metadata.zarr` (N, 5) columns INDEX, XPOS, YPOS, GROUP_TYPE, TYPE and
`x_list_0/timeseries.zarr` (T, N, 4) columns VOLTAGE, STIMULUS, CALCIUM, FLUORESCENCE, chunked
(2000, N, 1) so one column is read without the others. The stimulus is the STIMULUS column of
the first S neurons, the photoreceptors; S is read from the metadata (the leading block of
photoreceptor types) so that a wrong `--n-stimulus` cannot silently import other neurons as
stimulus. The connectome, when present, lies beside `x_list_0/` as `edge_index.pt` (2, E) (row 0
presynaptic, row 1 postsynaptic) and `weights.pt` (E,).

This module imports zarr at top level: it is an optional extra, imported lazily by the CLI.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr

from latent_tune.atomic import atomic_dir
from latent_tune.data.format import SuiteManifest, write_manifest
from latent_tune.data.network import LAB_TYPE_NAMES
from latent_tune.data.suite import Suite
from latent_tune.data.suite_builder import TRAIN_DIR, CrossvalSource, plan_manifest
from latent_tune.data.writer import DatasetWriter
from latent_tune.errors import UserInputError

__all__ = [
    "COLUMNS",
    "LAB_INPUT_TYPES",
    "META_COLUMNS",
    "QUANTITY_COLUMNS",
    "StoreInfo",
    "import_zarr",
    "import_zarr_suite",
    "inspect_store",
    "read_type_names",
]

COLUMNS = ("VOLTAGE", "STIMULUS", "CALCIUM", "FLUORESCENCE")
META_COLUMNS = ("INDEX", "XPOS", "YPOS", "GROUP_TYPE", "TYPE")
QUANTITY_COLUMNS = {"voltage": 0, "calcium": 2, "fluorescence": 3}
_STIMULUS_COLUMN = 1
_DIR = "x_list_0"
# The photoreceptors R1-R8 in the lab's type table: the model's stimulus inputs.
LAB_INPUT_TYPES = tuple(i for i, name in enumerate(LAB_TYPE_NAMES) if name[0] == "R")


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


@dataclass(frozen=True)
class StoreInfo:
    """A lab store's shape, read from its metadata alone (cheap: no time series values)."""

    root: Path
    n_steps: int
    n_neurons: int
    n_stimulus: int
    n_types: int


def read_type_names(path: Path) -> list[str]:
    """One type name per line (line i names type id i); blank lines at the end are dropped."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UserInputError(path, "--type-names", f"not a readable text file: {e}") from e
    while lines and not lines[-1].strip():
        lines.pop()
    names = [line.strip() for line in lines]
    if not names or any(not n for n in names):
        raise UserInputError(path, "--type-names", "needs one non-empty name per line")
    return names


def _stimulus_count(
    meta_path: Path, type_id: np.ndarray, n_stimulus: int | None, input_types: Sequence[int]
) -> int:
    """S: the leading block of input-type neurons, checked against --n-stimulus if given."""
    is_input = np.isin(type_id, np.asarray(list(input_types), dtype=np.int64))
    total = int(is_input.sum())
    lead = int(np.argmin(is_input)) if not is_input.all() else is_input.size
    ids = f"type ids {_id_list(input_types)}"
    if total == 0:
        if n_stimulus is None:
            raise UserInputError(
                meta_path,
                "TYPE",
                f"no neuron has an input (photoreceptor) type ({ids}), so the stimulus "
                "width cannot be read from the metadata: give --n-stimulus (and --input-types)",
            )
        return n_stimulus
    if lead != total:
        stray = int(np.flatnonzero(is_input[lead:])[0]) + lead
        raise UserInputError(
            meta_path,
            "TYPE",
            f"the stimulus is the STIMULUS column of the first S neurons, but the input "
            f"(photoreceptor) neurons ({ids}) are not one leading block: neurons 0..{lead - 1} "
            f"are inputs, neuron {lead} is not, neuron {stray} is again (give --input-types)",
        )
    if n_stimulus is not None and n_stimulus != lead:
        raise UserInputError(
            meta_path,
            "--n-stimulus",
            f"{n_stimulus} stimulus columns asked for, but the metadata has {lead} input "
            f"(photoreceptor) neurons ({ids}) first and neuron {lead} is type "
            f"{int(type_id[lead]) if lead < type_id.size else '-'}: give --n-stimulus {lead} "
            "(or leave it out)",
        )
    return lead


def _id_list(ids: Sequence[int]) -> str:
    ids = sorted(int(i) for i in ids)
    if ids and ids == list(range(ids[0], ids[-1] + 1)) and len(ids) > 2:
        return f"{ids[0]}-{ids[-1]}"
    return ",".join(str(i) for i in ids) or "none"


def _read_meta(meta_path: Path, meta_arr: Any) -> tuple[np.ndarray, np.ndarray]:
    meta = np.asarray(meta_arr[...], dtype=np.float64)
    if not np.isfinite(meta).all():
        row, col = np.argwhere(~np.isfinite(meta))[0]
        raise UserInputError(meta_path, META_COLUMNS[col], f"non-finite value at row {row}")
    ids = meta[:, 4]
    if (ids < 0).any() or (ids != np.round(ids)).any():
        raise UserInputError(meta_path, "TYPE", "type ids must be non-negative integers")
    return meta, ids.astype(np.int64)


def _open_store(src: Path) -> tuple[Path, Any, Any]:
    root = _find_root(Path(src))
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
    if int(ts.shape[0]) < 1:
        raise UserInputError(ts_path, "shape", "has no time steps")
    return root, meta_arr, ts


def inspect_store(
    src: Path, *, n_stimulus: int | None = None, input_types: Sequence[int] = LAB_INPUT_TYPES
) -> StoreInfo:
    """T, N, S and the number of type ids of a store, with the stimulus width checked."""
    root, meta_arr, ts = _open_store(src)
    n = int(meta_arr.shape[0])
    if n_stimulus is not None and not 0 <= n_stimulus <= n:
        raise UserInputError(None, "n_stimulus", f"{n_stimulus} is outside [0, N={n}]")
    _, type_id = _read_meta(root / "metadata.zarr", meta_arr)
    s = _stimulus_count(root / "metadata.zarr", type_id, n_stimulus, input_types)
    return StoreInfo(root, int(ts.shape[0]), n, s, int(type_id.max()) + 1)


def _names(k: int, type_names: Sequence[str] | None, lab_types: bool, meta_path: Path) -> list[str]:
    if type_names is not None and lab_types:
        raise UserInputError(None, "--type-names", "give either --type-names or --lab-types")
    if lab_types:
        names = list(LAB_TYPE_NAMES)
        key = "--lab-types"
    elif type_names is not None:
        names = list(type_names)
        key = "--type-names"
    else:
        return [f"type_{i}" for i in range(k)]
    if len(names) < k:
        raise UserInputError(
            meta_path, key, f"{len(names)} type names, but TYPE holds ids up to {k - 1}"
        )
    return names


def import_zarr(
    src: Path,
    out: Path,
    *,
    n_stimulus: int | None = None,
    quantities: Sequence[str] = ("voltage", "calcium"),
    chunk_steps: int = 2000,
    dt: float = 0.02,
    type_names: Sequence[str] | None = None,
    lab_types: bool = False,
    input_types: Sequence[int] = LAB_INPUT_TYPES,
) -> Path:
    """Convert a lab store (`src` = `x_list_0/` or its parent) into the dataset dir `out`.

    Reads `chunk_steps` time steps at a time (RAM bounded whatever T is); the dataset appears
    atomically. The stimulus width S is the leading block of input-type neurons (checked
    against `n_stimulus` when given). Type names are `type_<id>` unless `type_names` or
    `lab_types` (the lab's 65 names) say otherwise: ids alone do not prove the lab's table."""
    src, out = Path(src), Path(out)
    quantities = list(quantities)
    if not quantities:
        raise UserInputError(None, "quantities", "give at least one quantity")
    for q in quantities:
        if q not in QUANTITY_COLUMNS:
            raise UserInputError(
                None, "quantities", f"unknown quantity {q!r} (one of {sorted(QUANTITY_COLUMNS)})"
            )
    if len(set(quantities)) != len(quantities):
        raise UserInputError(None, "quantities", f"{quantities} contain duplicates")
    if chunk_steps < 1:
        raise UserInputError(None, "chunk_steps", f"must be >= 1, got {chunk_steps}")
    if not (math.isfinite(dt) and dt > 0):
        raise UserInputError(None, "dt", f"must be a finite number > 0, got {dt}")
    root, meta_arr, ts = _open_store(src)
    meta_path = root / "metadata.zarr"
    n, n_steps = int(meta_arr.shape[0]), int(ts.shape[0])
    if n_stimulus is not None and not 0 <= n_stimulus <= n:
        raise UserInputError(None, "n_stimulus", f"{n_stimulus} is outside [0, N={n}]")
    meta, type_id = _read_meta(meta_path, meta_arr)
    n_stimulus = _stimulus_count(meta_path, type_id, n_stimulus, input_types)
    names = _names(int(type_id.max()) + 1, type_names, lab_types, meta_path)
    pre, post, weight, conn_info = _connectome(root, n)

    provenance = {
        "importer": "latent_tune.data.importer_zarr",
        "source": os.fspath(root.resolve()),
        "columns": {q: COLUMNS[QUANTITY_COLUMNS[q]] for q in quantities},
        "stimulus": f"STIMULUS of the first {n_stimulus} neurons",
        "type_names": "lab" if lab_types else "file" if type_names is not None else "ids",
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


def import_zarr_suite(
    train: Path,
    crossval: Sequence[CrossvalSource],
    out: Path,
    *,
    train_range: tuple[int, int] | None = None,
    val_range: tuple[int, int] | None = None,
    rollout_steps: int,
    margin: int,
    n_stimulus: int | None = None,
    input_types: Sequence[int] = LAB_INPUT_TYPES,
    **kw: Any,
) -> tuple[Path, SuiteManifest, dict[str, Path]]:
    """Import several stores (one per stimulus family) as one suite, atomically.

    Shapes and ranges are checked from the stores' metadata before any time series is read."""
    out = Path(out)
    infos = {TRAIN_DIR: inspect_store(train, n_stimulus=n_stimulus, input_types=input_types)}
    t = infos[TRAIN_DIR]
    for c in crossval:
        info = inspect_store(c.path, n_stimulus=n_stimulus, input_types=input_types)
        for attr, what in (("n_neurons", "neurons"), ("n_stimulus", "stimulus inputs")):
            if getattr(info, attr) != getattr(t, attr):
                raise UserInputError(
                    c.path,
                    f"--crossval {c.name}",
                    f"has {getattr(info, attr)} {what}, the training store {train} has "
                    f"{getattr(t, attr)} (a suite's stores must record the same network)",
                )
        infos[c.name] = info
    manifest = plan_manifest(
        out.name or "suite",
        t.n_steps,
        [(c.name, infos[c.name].n_steps, c.range) for c in crossval],
        train_range=train_range,
        val_range=val_range,
        rollout_steps=rollout_steps,
        margin=margin,
        train_file=Path(train),
        crossval_files=[c.path for c in crossval],
    )
    sources = {TRAIN_DIR: Path(train), **{c.name: c.path for c in crossval}}
    with atomic_dir(out) as tmp:
        for sub, src in sources.items():
            import_zarr(
                src,
                tmp / sub,
                n_stimulus=infos[sub].n_stimulus,
                input_types=input_types,
                **kw,
            )
        write_manifest(tmp, manifest)
        Suite.open(tmp)
    return out, manifest, sources
