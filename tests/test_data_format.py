"""Dataset format: writer/reader round trip, zero-copy memory maps, bounded RAM, validation,
NaN scan, suites and the locked demo-suite cache."""

from __future__ import annotations

import contextlib
import os
import pickle
import shutil
import tempfile
import threading
import time
import unittest
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from latent_tune.data import reader as reader_mod
from latent_tune.data import suite as suite_mod
from latent_tune.data.format import (
    CONNECTOME_FILE,
    FORMAT_VERSION,
    HEADER_FILE,
    NEURONS_FILE,
    SUITE_FILE,
    SuiteManifest,
    write_manifest,
)
from latent_tune.data.reader import Dataset
from latent_tune.data.suite import Suite, demo_suite_dir, ensure_demo_suite
from latent_tune.data.writer import DatasetWriter
from latent_tune.errors import UserInputError

QUANTITIES = ("voltage", "calcium")


def make_arrays(t: int, n: int, s: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random activity/stimulus arrays (float32) keyed by quantity and 'stimulus'."""
    rng = np.random.default_rng(seed)
    out = {q: rng.standard_normal((t, n)).astype(np.float32) for q in QUANTITIES}
    out["stimulus"] = rng.standard_normal((t, s)).astype(np.float32)
    return out


def make_dataset(
    path: Path,
    t: int = 20,
    n: int = 6,
    s: int = 3,
    chunks: tuple[int, ...] = (7, 1, 12),
    seed: int = 0,
    name: str = "tiny",
) -> dict[str, np.ndarray]:
    """Write a small dataset in uneven chunks; return what was written."""
    arrays = make_arrays(t, n, s, seed)
    assert sum(chunks) == t
    with DatasetWriter(
        path,
        name=name,
        dt=0.02,
        n_steps=t,
        n_neurons=n,
        n_stimulus=s,
        quantities=list(QUANTITIES),
        provenance={"source": "test", "seed": seed},
    ) as w:
        t0 = 0
        for c in chunks:
            w.append(
                {q: arrays[q][t0 : t0 + c] for q in QUANTITIES}, arrays["stimulus"][t0 : t0 + c]
            )
            t0 += c
        types = np.arange(n) % 3
        w.set_neurons(
            np.arange(n),
            np.linspace(0, 1, n),
            np.linspace(1, 2, n),
            np.arange(n) // 2,
            types,
            [f"T{k}" for k in types],
        )
        w.set_connectome(
            np.array([0, 1, n - 1]), np.array([n - 1, 2, 0]), np.array([0.5, -1.0, 2.0])
        )
    return arrays


def disk_bytes(root: Path) -> int:
    """Blocks allocated on disk below root (sparse files count what they really use)."""
    total = 0
    for dirpath, _, files in os.walk(root):
        for f in files:
            with contextlib.suppress(FileNotFoundError):
                total += os.stat(os.path.join(dirpath, f)).st_blocks * 512
    return total


def rss_anon() -> int:
    """Anonymous resident memory in bytes (file-backed map pages are not counted)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no RssAnon in /proc/self/status")


def file_mappings(path: Path) -> list[tuple[int, int]]:
    """Address ranges at which `path` is memory-mapped in this process."""
    target = str(path.resolve())
    ranges = []
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split(maxsplit=5)
            if len(parts) == 6 and parts[5].strip() == target:
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                ranges.append((lo, hi))
    return ranges


def write_arrow(
    path: Path, values: np.ndarray, *, batches: int = 1, compression=None, name: str = "x"
) -> None:
    """Hand-write an Arrow file (to make malformed ones)."""
    width = values.shape[1]
    typ = pa.list_(pa.from_numpy_dtype(values.dtype), width)
    schema = pa.schema([pa.field(name, typ)])
    opts = pa.ipc.IpcWriteOptions(compression=compression)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, schema, options=opts) as w:
        for part in np.array_split(values, batches):
            col = pa.FixedSizeListArray.from_arrays(pa.array(part.reshape(-1)), width)
            w.write_batch(pa.RecordBatch.from_arrays([col], schema=schema))


class TmpDirTest(unittest.TestCase):
    def setUp(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="lt-format-"))
        self.addCleanup(shutil.rmtree, self.tmp, ignore_errors=True)


class RoundTripTest(TmpDirTest):
    def test_round_trip(self) -> None:
        arrays = make_dataset(self.tmp / "ds")
        ds = Dataset.open(self.tmp / "ds")
        self.assertEqual((ds.n_steps, ds.n_neurons, ds.n_stimulus), (20, 6, 3))
        self.assertEqual(ds.quantities, list(QUANTITIES))
        self.assertEqual(ds.header.format_version, FORMAT_VERSION)
        self.assertEqual(ds.header.name, "tiny")
        self.assertEqual(ds.header.dt, 0.02)
        self.assertEqual(ds.header.provenance, {"source": "test", "seed": 0})
        for q in QUANTITIES:
            a = ds.activity(q)
            self.assertEqual((a.shape, a.dtype), ((20, 6), np.float32))
            np.testing.assert_array_equal(a, arrays[q])
        np.testing.assert_array_equal(ds.stimulus(), arrays["stimulus"])
        np.testing.assert_array_equal(ds.cell_types(), np.arange(6) % 3)
        self.assertEqual(ds.cell_types().dtype, np.int64)
        self.assertEqual(ds.type_names(), ["T0", "T1", "T2"])
        pre, post, w = ds.connectome()
        np.testing.assert_array_equal(pre, [0, 1, 5])
        np.testing.assert_array_equal(post, [5, 2, 0])
        np.testing.assert_array_equal(w, np.array([0.5, -1.0, 2.0], np.float32))
        self.assertEqual((pre.dtype, post.dtype, w.dtype), (np.int64, np.int64, np.float32))
        nt = ds.neurons()
        self.assertEqual(nt.num_rows, 6)
        self.assertEqual(nt.column_names, ["index", "x", "y", "group", "type_id", "type_name"])
        ds.check()  # clean data passes the scan

    def test_header_is_plain_yaml(self) -> None:
        make_dataset(self.tmp / "ds")
        header = yaml.safe_load((self.tmp / "ds" / HEADER_FILE).read_text())
        self.assertEqual(header["n_neurons"], 6)
        self.assertEqual(header["quantities"], list(QUANTITIES))
        self.assertEqual(
            sorted(p.name for p in (self.tmp / "ds").iterdir()),
            [
                "calcium.arrow",
                "connectome.parquet",
                "dataset.yaml",
                "neurons.parquet",
                "stimulus.arrow",
                "voltage.arrow",
            ],
        )  # staging files are gone

    def test_arrow_layout_is_one_batch_fixed_size_list(self) -> None:
        make_dataset(self.tmp / "ds")
        with pa.memory_map(str(self.tmp / "ds" / "voltage.arrow")) as src:
            r = pa.ipc.open_file(src)
            self.assertEqual(r.num_record_batches, 1)
            self.assertEqual(r.schema.field(0).type, pa.list_(pa.float32(), 6))

    def test_defaults_without_neurons_or_connectome(self) -> None:
        with DatasetWriter(
            self.tmp / "ds",
            name="x",
            dt=1.0,
            n_steps=4,
            n_neurons=2,
            n_stimulus=0,
            quantities=["voltage"],
        ) as w:
            w.append({"voltage": np.ones((4, 2))}, np.zeros((4, 0)))
        ds = Dataset.open(self.tmp / "ds")
        self.assertEqual(ds.stimulus().shape, (4, 0))
        self.assertEqual(ds.connectome()[0].size, 0)
        self.assertEqual(ds.type_names(), ["unknown"])
        self.assertEqual(ds.activity("voltage").dtype, np.float32)  # float64 input cast

    def test_pickle_reopens_by_path(self) -> None:
        make_dataset(self.tmp / "ds")
        ds = pickle.loads(pickle.dumps(Dataset.open(self.tmp / "ds")))
        self.assertEqual(ds.n_neurons, 6)

    def test_unknown_quantity(self) -> None:
        make_dataset(self.tmp / "ds")
        with self.assertRaisesRegex(UserInputError, "no quantity 'fluorescence'"):
            Dataset.open(self.tmp / "ds").activity("fluorescence")


class WriterErrorsTest(TmpDirTest):
    def writer(self) -> DatasetWriter:
        return DatasetWriter(
            self.tmp / "ds",
            name="x",
            dt=0.1,
            n_steps=10,
            n_neurons=3,
            n_stimulus=2,
            quantities=["voltage"],
        )

    def assert_nothing_left(self) -> None:
        self.assertEqual(list(self.tmp.iterdir()), [])

    def test_exception_inside_with_leaves_nothing(self) -> None:
        with self.assertRaises(RuntimeError), self.writer() as w:
            w.append({"voltage": np.ones((5, 3))}, np.ones((5, 2)))
            raise RuntimeError("simulation failed")
        self.assert_nothing_left()

    def test_short_dataset_fails_at_close_and_leaves_nothing(self) -> None:
        w = self.writer()
        w.append({"voltage": np.ones((5, 3))}, np.ones((5, 2)))
        with self.assertRaisesRegex(ValueError, "5 rows appended, n_steps = 10"):
            w.close()
        self.assert_nothing_left()

    def test_bad_appends(self) -> None:
        with self.assertRaises(ValueError), self.writer() as w:
            cases: list[Callable[[], None]] = [
                lambda: w.append({"voltage": np.ones((5, 4))}, np.ones((5, 2))),
                lambda: w.append({"voltage": np.ones((5, 3))}, np.ones((4, 2))),
                lambda: w.append({"calcium": np.ones((5, 3))}, np.ones((5, 2))),
                lambda: w.append({"voltage": np.ones((11, 3))}, np.ones((11, 2))),
                lambda: w.set_connectome([0], [3], [1.0]),
                lambda: w.set_neurons([0], [0], [0], [0], [0], ["a"]),
            ]
            for case in cases:
                with self.assertRaises(ValueError):
                    case()
            self.assertEqual(w.steps_written, 0)
            raise ValueError("abandon")
        self.assert_nothing_left()

    def test_provenance_is_plain_yaml_and_checked_up_front(self) -> None:
        prov = {"gain": np.float32(1.5), "n": np.int64(3), "dims": (1, 2), "src": Path("/a")}
        with DatasetWriter(
            self.tmp / "ds",
            name="x",
            dt=0.1,
            n_steps=1,
            n_neurons=1,
            n_stimulus=0,
            quantities=["voltage"],
            provenance=prov,
        ) as w:
            w.append({"voltage": np.zeros((1, 1))}, np.zeros((1, 0)))
        self.assertEqual(
            Dataset.open(self.tmp / "ds").header.provenance,
            {"gain": 1.5, "n": 3, "dims": [1, 2], "src": "/a"},
        )
        shutil.rmtree(self.tmp / "ds")
        with self.assertRaises(ValueError):
            DatasetWriter(
                self.tmp / "ds",
                name="x",
                dt=0.1,
                n_steps=1,
                n_neurons=1,
                n_stimulus=0,
                quantities=["voltage"],
                provenance={"f": object()},
            )
        with self.assertRaises(ValueError):  # pydantic validates the header up front
            DatasetWriter(
                self.tmp / "ds",
                name="x",
                dt=0.0,
                n_steps=1,
                n_neurons=1,
                n_stimulus=0,
                quantities=["voltage"],
            )
        self.assert_nothing_left()

    def test_replaces_existing_dataset_atomically(self) -> None:
        make_dataset(self.tmp / "ds", seed=1)
        arrays = make_dataset(self.tmp / "ds", seed=2)
        np.testing.assert_array_equal(
            Dataset.open(self.tmp / "ds").activity("voltage"), arrays["voltage"]
        )
        self.assertEqual([p.name for p in self.tmp.iterdir()], ["ds"])


class ZeroCopyTest(TmpDirTest):
    def test_slices_are_views_of_the_memory_map(self) -> None:
        make_dataset(self.tmp / "ds")
        ds = Dataset.open(self.tmp / "ds")
        for key, arr in [("voltage", ds.activity("voltage")), ("stimulus", ds.stimulus())]:
            ranges = file_mappings(self.tmp / "ds" / f"{key}.arrow")
            self.assertTrue(ranges, f"{key}.arrow is not memory-mapped")
            chunk = arr[5:12]
            self.assertTrue(np.shares_memory(chunk, arr))
            self.assertTrue(chunk.flags.c_contiguous)
            lo = chunk.ctypes.data
            hi = lo + chunk.nbytes
            self.assertTrue(
                any(a <= lo and hi <= b for a, b in ranges),
                f"{key} slice memory is not inside the file's mapping",
            )
            self.assertFalse(arr.flags.writeable)
            with self.assertRaises(ValueError):
                chunk[0, 0] = 1.0

    def test_large_file_bounded_write_and_zero_copy_read(self) -> None:
        """200 MB written in 2k-row chunks: RssAnon stays far below the size on both sides,
        and the disk never holds the data twice (a lab suite is ~120 GB)."""
        # Warm up one-time costs (Parquet/Arrow thread pools) so only per-size costs remain.
        make_dataset(self.tmp / "warm")
        disk_base = disk_bytes(self.tmp)
        t, n, c = 50_000, 1000, 1000
        size = t * n * 4
        peak = [0]
        disk_peak = [0]
        stop = threading.Event()
        base = rss_anon()

        def monitor() -> None:
            tick = 0
            while not stop.is_set():
                peak[0] = max(peak[0], rss_anon() - base)
                if tick % 10 == 0:
                    disk_peak[0] = max(disk_peak[0], disk_bytes(self.tmp) - disk_base)
                tick += 1
                time.sleep(0.002)

        thread = threading.Thread(target=monitor, daemon=True)
        thread.start()
        cols = np.arange(n, dtype=np.float32)
        stim = np.zeros((c, 2), np.float32)
        try:
            with DatasetWriter(
                self.tmp / "big",
                name="big",
                dt=0.02,
                n_steps=t,
                n_neurons=n,
                n_stimulus=2,
                quantities=["voltage"],
            ) as w:
                for t0 in range(0, t, c):
                    block = np.arange(t0, t0 + c, dtype=np.float32)[:, None] * 1e-3 + cols
                    w.append({"voltage": block}, stim)
                del block
        finally:
            stop.set()
            thread.join()
        self.assertEqual((self.tmp / "big" / "voltage.arrow").stat().st_size // size, 1)
        self.assertLess(peak[0], size // 8, f"writer grew RssAnon by {peak[0] / 1e6:.0f} MB")
        self.assertLess(disk_peak[0], size * 1.25, f"disk peaked at {disk_peak[0] / 1e6:.0f} MB")

        before = rss_anon()
        ds = Dataset.open(self.tmp / "big")
        chunk = ds.activity("voltage")[10_000:40_000]  # 120 MB slice
        total = float(chunk.sum(dtype=np.float64))  # touches every page of the slice
        grown = rss_anon() - before
        self.assertLess(grown, chunk.nbytes // 10, f"reading grew RssAnon by {grown / 1e6:.0f} MB")
        rows = np.arange(10_000, 40_000, dtype=np.float64)
        expected = float((np.float32(rows * 1e-3)[:, None] + cols).sum(dtype=np.float64))
        self.assertAlmostEqual(total / expected, 1.0, places=6)
        np.testing.assert_array_equal(chunk[123], np.float32(10_123 * 1e-3) + cols)


def copy_good(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


class ValidationTest(TmpDirTest):
    """Every broken dataset fails to open with one line naming the file, the key, the problem."""

    T, N, S = 20, 6, 3

    def setUp(self) -> None:
        super().setUp()
        self.good = self.tmp / "good"
        make_dataset(self.good, self.T, self.N, self.S)

    def edit_header(self, d: Path, **changes) -> None:
        h = yaml.safe_load((d / HEADER_FILE).read_text())
        h.update(changes)
        (d / HEADER_FILE).write_text(yaml.safe_dump(h))

    def edit_parquet(self, path: Path, fn) -> None:
        pq.write_table(fn(pq.read_table(path)), path)

    def cases(self) -> list[tuple[str, Callable[[Path], None], str, str | None, str]]:
        rng = np.random.default_rng(0)
        t, n = self.T, self.N
        f64 = rng.standard_normal((t, n))
        f32 = f64.astype(np.float32)

        def truncate(d: Path) -> None:
            p = d / "calcium.arrow"
            p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])

        def replace_col(name: str, arr: pa.Array):
            return lambda tbl: tbl.set_column(tbl.column_names.index(name), name, arr)

        return [
            (
                "missing arrow",
                lambda d: (d / "voltage.arrow").unlink(),
                "voltage.arrow",
                "voltage",
                "missing file",
            ),
            (
                "missing stimulus",
                lambda d: (d / "stimulus.arrow").unlink(),
                "stimulus.arrow",
                "stimulus",
                "missing file",
            ),
            ("truncated arrow", truncate, "calcium.arrow", "calcium", "not a readable Arrow IPC"),
            (
                "garbage arrow",
                lambda d: (d / "calcium.arrow").write_bytes(b"hello" * 100),
                "calcium.arrow",
                "calcium",
                "not a readable Arrow IPC",
            ),
            (
                "too few rows",
                lambda d: write_arrow(d / "voltage.arrow", f32[:-1]),
                "voltage.arrow",
                "voltage",
                f"has {t - 1} rows, expected {t}",
            ),
            (
                "wrong width",
                lambda d: write_arrow(d / "voltage.arrow", f32[:, :-1]),
                "voltage.arrow",
                "voltage",
                f"rows have width {n - 1}, expected {n}",
            ),
            (
                "wrong stimulus width",
                lambda d: write_arrow(d / "stimulus.arrow", f32),
                "stimulus.arrow",
                "stimulus",
                f"rows have width {n}, expected {self.S}",
            ),
            (
                "float64",
                lambda d: write_arrow(d / "voltage.arrow", f64),
                "voltage.arrow",
                "voltage",
                "column type is fixed_size_list<item: double>",
            ),
            (
                "two batches",
                lambda d: write_arrow(d / "voltage.arrow", f32, batches=2),
                "voltage.arrow",
                "voltage",
                "has 2 record batches, expected exactly 1",
            ),
            (
                "compressed",
                lambda d: write_arrow(d / "voltage.arrow", f32, compression="zstd"),
                "voltage.arrow",
                "voltage",
                "not in the memory map",
            ),
            (
                "unknown version",
                lambda d: self.edit_header(d, format_version=99),
                HEADER_FILE,
                "format_version",
                "unknown format version 99",
            ),
            (
                "no version",
                lambda d: self.drop_key(d, "format_version"),
                HEADER_FILE,
                "format_version",
                "missing",
            ),
            (
                "garbage yaml",
                lambda d: (d / HEADER_FILE).write_text("name: [unclosed\n  : {"),
                HEADER_FILE,
                "line 2",
                "not valid YAML",
            ),
            (
                "yaml not a mapping",
                lambda d: (d / HEADER_FILE).write_text("- a\n- b\n"),
                HEADER_FILE,
                None,
                "expected a mapping, got list",
            ),
            (
                "missing header",
                lambda d: (d / HEADER_FILE).unlink(),
                HEADER_FILE,
                None,
                "missing file",
            ),
            (
                "header extra key",
                lambda d: self.edit_header(d, colour="blue"),
                HEADER_FILE,
                "colour",
                "Extra inputs are not permitted",
            ),
            (
                "header bad type",
                lambda d: self.edit_header(d, n_neurons="many"),
                HEADER_FILE,
                "n_neurons",
                "valid integer",
            ),
            (
                "header negative dt",
                lambda d: self.edit_header(d, dt=-1.0),
                HEADER_FILE,
                "dt",
                "greater than 0",
            ),
            (
                "header n_steps disagrees",
                lambda d: self.edit_header(d, n_steps=t + 5),
                "voltage.arrow",
                "voltage",
                f"has {t} rows, expected {t + 5}",
            ),
            (
                "listed quantity missing",
                lambda d: self.edit_header(d, quantities=["voltage", "calcium", "fluorescence"]),
                "fluorescence.arrow",
                "fluorescence",
                "missing file (quantity 'fluorescence' is listed",
            ),
            (
                "bad quantity name",
                lambda d: self.edit_header(d, quantities=["../x"]),
                HEADER_FILE,
                "quantities",
                "must match",
            ),
            (
                "missing neurons",
                lambda d: (d / NEURONS_FILE).unlink(),
                NEURONS_FILE,
                None,
                "missing file",
            ),
            (
                "missing connectome",
                lambda d: (d / CONNECTOME_FILE).unlink(),
                CONNECTOME_FILE,
                None,
                "missing file",
            ),
            (
                "garbage parquet",
                lambda d: (d / CONNECTOME_FILE).write_bytes(b"PAR1 nope"),
                CONNECTOME_FILE,
                None,
                "not a readable Parquet file",
            ),
            (
                "neurons row count",
                lambda d: self.edit_parquet(d / NEURONS_FILE, lambda tb: tb.slice(0, n - 1)),
                NEURONS_FILE,
                None,
                f"has {n - 1} rows, expected n_neurons = {n}",
            ),
            (
                "neurons missing column",
                lambda d: self.edit_parquet(
                    d / NEURONS_FILE, lambda tb: tb.drop_columns(["type_name"])
                ),
                NEURONS_FILE,
                "type_name",
                "missing column",
            ),
            (
                "type with two names",
                lambda d: self.edit_parquet(
                    d / NEURONS_FILE,
                    replace_col("type_name", pa.array(["a", "b", "c", "z", "e", "f"])),
                ),
                NEURONS_FILE,
                "type_name",
                "type id 0 has several names",
            ),
            (
                "edge post out of range",
                lambda d: self.edit_parquet(
                    d / CONNECTOME_FILE, replace_col("post", pa.array([n, 2, 0], pa.int64()))
                ),
                CONNECTOME_FILE,
                "post",
                f"edge 0 has post = {n}, outside [0, {n})",
            ),
            (
                "edge pre negative",
                lambda d: self.edit_parquet(
                    d / CONNECTOME_FILE, replace_col("pre", pa.array([0, -1, 0], pa.int64()))
                ),
                CONNECTOME_FILE,
                "pre",
                f"edge 1 has pre = -1, outside [0, {n})",
            ),
            (
                "weight dtype",
                lambda d: self.edit_parquet(
                    d / CONNECTOME_FILE,
                    replace_col("weight", pa.array([1.0, 2.0, 3.0], pa.float64())),
                ),
                CONNECTOME_FILE,
                "weight",
                "column type is double, expected float",
            ),
            (
                "weight nan",
                lambda d: self.edit_parquet(
                    d / CONNECTOME_FILE,
                    replace_col("weight", pa.array([1, np.nan, 3], pa.float32())),
                ),
                CONNECTOME_FILE,
                "weight",
                "edge 1 has non-finite weight",
            ),
        ]

    def drop_key(self, d: Path, key: str) -> None:
        h = yaml.safe_load((d / HEADER_FILE).read_text())
        del h[key]
        (d / HEADER_FILE).write_text(yaml.safe_dump(h))

    def test_every_failure_has_its_message(self) -> None:
        for i, (label, breaker, file, key, problem) in enumerate(self.cases()):
            with self.subTest(label):
                d = copy_good(self.good, self.tmp / f"bad{i}")
                breaker(d)
                with self.assertRaises(UserInputError) as cm:
                    Dataset.open(d)
                e = cm.exception
                self.assertEqual(Path(e.file), d / file)
                self.assertEqual(e.key, key)
                self.assertIn(problem, e.problem)
                msg = str(e)
                self.assertNotIn("\n", msg)
                self.assertTrue(msg.startswith(f"{d / file}: {key or '-'}: "), msg)

    def test_not_a_directory(self) -> None:
        with self.assertRaisesRegex(UserInputError, "does not exist"):
            Dataset.open(self.tmp / "nope")


class CheckTest(TmpDirTest):
    def poisoned(self, key: str, cells: list[tuple[int, int]], value: float) -> Path:
        arrays = make_arrays(20, 6, 3)
        for r, c in cells:
            arrays[key][r, c] = value
        d = self.tmp / "ds"
        with DatasetWriter(
            d, name="x", dt=0.02, n_steps=20, n_neurons=6, n_stimulus=3, quantities=list(QUANTITIES)
        ) as w:
            w.append({q: arrays[q] for q in QUANTITIES}, arrays["stimulus"])
        return d

    def test_open_does_not_scan_but_check_finds_first_nan_row(self) -> None:
        d = self.poisoned("calcium", [(17, 1), (13, 4), (13, 2)], np.nan)
        ds = Dataset.open(d)  # cheap open: no scan
        with self.assertRaises(UserInputError) as cm:
            ds.check()
        self.assertEqual(Path(cm.exception.file), d / "calcium.arrow")
        self.assertEqual(cm.exception.key, "calcium")
        self.assertIn("non-finite value nan at row 13, neuron 2", cm.exception.problem)

    def test_scan_in_small_blocks_finds_row_in_later_block(self) -> None:
        d = self.poisoned("stimulus", [(18, 0)], np.inf)
        with (
            mock.patch.object(reader_mod, "_SCAN_BYTES", 3 * 3 * 4),
            self.assertRaisesRegex(UserInputError, r"stimulus.arrow: stimulus: .*inf at row 18"),
        ):
            Dataset.open(d).check()


def write_small_suite(
    root: Path, *, n_cv: int = 5, train_steps: int = 40, manifest: dict | None = None
) -> Path:
    """A suite of three tiny datasets written with DatasetWriter + write_manifest."""
    make_dataset(root / "train", t=train_steps, chunks=(train_steps,), seed=1, name="train")
    make_dataset(root / "gratings", t=20, chunks=(20,), seed=2, name="gratings")
    make_dataset(root / "flashes", t=20, n=n_cv, chunks=(20,), seed=3, name="flashes")
    m = {
        "format_version": 1,
        "name": "small",
        "preset": None,
        "seed": None,
        "train": {"dataset": "train", "train_range": [0, 30], "val_range": [30, 40]},
        "crossval": [
            {"name": "gratings", "dataset": "gratings", "range": [2, 20]},
            {"name": "flashes", "dataset": "flashes", "range": [0, 20]},
        ],
    }
    m.update(manifest or {})
    write_manifest(root, SuiteManifest.model_validate(m))
    return root


class SuiteTest(TmpDirTest):
    def test_open_suite(self) -> None:
        root = write_small_suite(self.tmp / "suite", n_cv=6)
        s = Suite.open(root)
        self.assertEqual(s.train.n_steps, 40)
        self.assertEqual(s.manifest.train.train_range, (0, 30))
        self.assertEqual(
            [(name, r) for name, _, r in s.crossval], [("gratings", (2, 20)), ("flashes", (0, 20))]
        )
        self.assertEqual(s.crossval[0][1].header.name, "gratings")
        raw = yaml.safe_load((root / SUITE_FILE).read_text())
        self.assertEqual(raw["train"]["val_range"], [30, 40])  # plain YAML lists

    def test_suite_failures(self) -> None:
        def manifest_with(**kw) -> Callable[[Path], None]:
            def edit(root: Path) -> None:
                m = yaml.safe_load((root / SUITE_FILE).read_text())
                for k, v in kw.items():
                    m[k] = v
                (root / SUITE_FILE).write_text(yaml.safe_dump(m))

            return edit

        train = {"dataset": "train", "train_range": [0, 30], "val_range": [30, 40]}
        cases = [
            (
                "range past end",
                manifest_with(train={**train, "val_range": [30, 41]}),
                "train.val_range",
                "exceeds n_steps = 40",
            ),
            ("overlap", manifest_with(train={**train, "val_range": [20, 40]}), None, "overlap"),
            (
                "missing dataset",
                lambda r: shutil.rmtree(r / "gratings"),
                "crossval.0.dataset",
                "dataset directory 'gratings' is missing",
            ),
            (
                "escaping path",
                manifest_with(train={**train, "dataset": "../x"}),
                None,
                "must be the name of a sub-directory",
            ),
            ("unknown key", manifest_with(extra=1), "extra", "Extra inputs"),
            ("no crossval", manifest_with(crossval=[]), "crossval", "at least 1"),
        ]
        template = write_small_suite(self.tmp / "template", n_cv=6)
        for i, (label, edit, key, problem) in enumerate(cases):
            with self.subTest(label):
                root = copy_good(template, self.tmp / f"s{i}")
                edit(root)
                with self.assertRaises(UserInputError) as cm:
                    Suite.open(root)
                self.assertEqual(Path(cm.exception.file), root / SUITE_FILE)
                if key is not None:
                    self.assertEqual(cm.exception.key, key)
                self.assertIn(problem, cm.exception.problem)

    def test_different_network_rejected(self) -> None:
        root = write_small_suite(self.tmp / "suite", n_cv=5)
        with self.assertRaisesRegex(UserInputError, "crossval.1.dataset: flashes has n_neurons"):
            Suite.open(root)

    def test_broken_dataset_inside_suite_names_its_file(self) -> None:
        root = write_small_suite(self.tmp / "suite", n_cv=6)
        (root / "flashes" / "voltage.arrow").unlink()
        with self.assertRaisesRegex(UserInputError, "flashes/voltage.arrow: voltage: missing"):
            Suite.open(root)


class DemoCacheTest(TmpDirTest):
    def setUp(self) -> None:
        super().setUp()
        env = mock.patch.dict("os.environ", {"LATENT_TUNE_DATA": str(self.tmp / "cache")})
        env.start()
        self.addCleanup(env.stop)
        self.calls: list[Path] = []

    def fake_simulate(self, delay: float = 0.0, fail: bool = False, fresh: bool = True):
        def simulate_suite(out: Path, preset: str = "demo", seed: int = 0) -> Path:
            self.calls.append(out)
            final = demo_suite_dir(preset, seed)
            assert not (fresh and final.exists()), "final path visible while generating"
            assert out.resolve().parent.parent == (self.tmp / "cache").resolve()
            out.mkdir()
            time.sleep(delay)
            if fail:
                raise RuntimeError("simulation crashed")
            write_small_suite(out, n_cv=6)
            return out

        return simulate_suite

    def test_demo_suite_dir(self) -> None:
        self.assertEqual(demo_suite_dir("tiny", 3), self.tmp / "cache" / "tiny-seed3")

    def test_concurrent_callers_generate_once_and_see_complete_suite(self) -> None:
        results: list[Path] = []
        errors: list[BaseException] = []

        def worker() -> None:
            try:
                p = ensure_demo_suite("tiny", 7)
                Suite.open(p)  # complete when it is returned
                results.append(p)
            except BaseException as e:  # noqa: BLE001 (reported below)
                errors.append(e)

        with mock.patch.object(suite_mod.simulate, "simulate_suite", self.fake_simulate(0.3)):
            threads = [threading.Thread(target=worker) for _ in range(4)]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            self.assertEqual(errors, [])
            self.assertEqual(len(self.calls), 1)
            self.assertEqual(results, [self.tmp / "cache" / "tiny-seed7"] * 4)
            ensure_demo_suite("tiny", 7)  # cached: no new simulation
            self.assertEqual(len(self.calls), 1)
        leftovers = [p.name for p in (self.tmp / "cache").iterdir() if ".tmp-" in p.name]
        self.assertEqual(leftovers, [])

    def test_failed_generation_leaves_nothing_then_retries(self) -> None:
        with (
            mock.patch.object(suite_mod.simulate, "simulate_suite", self.fake_simulate(fail=True)),
            self.assertRaisesRegex(RuntimeError, "crashed"),
        ):
            ensure_demo_suite("tiny", 1)
        self.assertFalse(demo_suite_dir("tiny", 1).exists())
        self.assertEqual([p for p in (self.tmp / "cache").iterdir() if ".tmp-" in p.name], [])
        with mock.patch.object(suite_mod.simulate, "simulate_suite", self.fake_simulate()):
            Suite.open(ensure_demo_suite("tiny", 1))

    def test_broken_cached_suite_is_regenerated(self) -> None:
        final = demo_suite_dir("tiny", 2)
        final.mkdir(parents=True)
        (final / SUITE_FILE).write_text("garbage: [")
        fake = self.fake_simulate(fresh=False)
        with mock.patch.object(suite_mod.simulate, "simulate_suite", fake):
            self.assertEqual(ensure_demo_suite("tiny", 2), final)
        Suite.open(final)

    def test_lab_preset_is_not_simulated_on_first_use(self) -> None:
        cache = self.tmp / "cache"
        with (
            mock.patch.dict("os.environ", {"LATENT_TUNE_DATA": str(cache)}),
            self.assertRaisesRegex(UserInputError, "-: data.suite: the 'lab' preset"),
        ):
            ensure_demo_suite("lab", 0)
        self.assertFalse(cache.exists() and any(cache.iterdir()))

    def test_unknown_preset(self) -> None:
        with self.assertRaisesRegex(UserInputError, "-: preset: unknown preset 'huge'"):
            ensure_demo_suite("huge", 0)


if __name__ == "__main__":
    unittest.main()
