"""`python -m latent_tune.data`: info/simulate/import-zarr, and one-line errors with status 2
that write nothing."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path
from unittest import mock

import numpy as np
import zarr

from latent_tune.data import cli
from latent_tune.data.reader import Dataset
from latent_tune.data.suite import Suite
from latent_tune.data.writer import DatasetWriter
from tests.test_data_format import QUANTITIES, make_arrays, make_dataset, write_small_suite


def run_main(*argv: str) -> tuple[int, str, str]:
    """Call cli.main in-process; return (status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


class CliTestCase(unittest.TestCase):
    def setUp(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="lt-cli-"))
        self.addCleanup(shutil.rmtree, self.tmp, ignore_errors=True)

    def assert_user_error(self, argv: list, prefix: str, fragment: str, quiet: bool = True) -> None:
        """Status 2, exactly one stderr line starting `<file>: <key>: `, nothing on stdout."""
        rc, out, err = run_main(*argv)
        self.assertEqual(rc, 2, err)
        if quiet:
            self.assertEqual(out, "")
        self.assertTrue(err.endswith("\n") and err.count("\n") == 1, repr(err))
        self.assertTrue(err.startswith(prefix), f"{err!r} does not start with {prefix!r}")
        self.assertIn(fragment, err)


class InfoTest(CliTestCase):
    def test_info_dataset_prints_header_and_sizes(self) -> None:
        make_dataset(self.tmp / "ds")
        rc, out, err = run_main("info", self.tmp / "ds")
        self.assertEqual((rc, err), (0, ""))
        for expected in [
            f"dataset {self.tmp / 'ds'}",
            "name: tiny",
            "n_steps: 20",
            "n_neurons: 6",
            "n_stimulus: 3",
            "- voltage",
            "source: test",
            "voltage.arrow: 20 x 6 float32",
            "calcium.arrow: 20 x 6 float32",
            "stimulus.arrow: 20 x 3 float32",
            "neurons.parquet: 6 neurons, 3 cell types",
            "connectome.parquet: 3 edges",
            "total: ",
        ]:
            self.assertIn(expected, out)
        self.assertNotIn("check:", out)

    def test_info_suite_prints_every_dataset(self) -> None:
        root = write_small_suite(self.tmp / "suite", n_cv=6)
        rc, out, _ = run_main("info", root, "--check")
        self.assertEqual(rc, 0)
        self.assertIn(f"suite {root}", out)
        for name in ("train", "gratings", "flashes"):
            self.assertIn(f"dataset {root / name}", out)
        self.assertIn("check: ok (no NaN/inf in 3 dataset(s))", out)

    def test_info_check_reports_first_nan(self) -> None:
        arrays = make_arrays(20, 6, 3)
        arrays["calcium"][17, 0] = np.nan
        arrays["calcium"][13, 4] = np.nan
        poisoned = self.tmp / "poisoned"
        with DatasetWriter(
            poisoned,
            name="p",
            dt=0.02,
            n_steps=20,
            n_neurons=6,
            n_stimulus=3,
            quantities=list(QUANTITIES),
        ) as w:
            w.append({q: arrays[q] for q in QUANTITIES}, arrays["stimulus"])
        rc, _, _ = run_main("info", poisoned)
        self.assertEqual(rc, 0)  # plain info does not scan
        self.assert_user_error(
            ["info", poisoned, "--check"],
            f"{poisoned / 'calcium.arrow'}: calcium: ",
            "non-finite value nan at row 13, neuron 4",
            quiet=False,  # the header is printed before the scan
        )

    def test_info_on_broken_dataset(self) -> None:
        make_dataset(self.tmp / "ds")
        (self.tmp / "ds" / "voltage.arrow").unlink()
        self.assert_user_error(
            ["info", self.tmp / "ds"], f"{self.tmp / 'ds' / 'voltage.arrow'}: voltage: ", "missing"
        )

    def test_info_on_missing_or_unrelated_dir(self) -> None:
        self.assert_user_error(["info", self.tmp / "nope"], f"{self.tmp / 'nope'}: -: ", "exist")
        self.assert_user_error(["info", self.tmp], f"{self.tmp}: -: ", "neither a dataset")


class ArgvTest(CliTestCase):
    def test_bad_arguments_are_one_line_status_2(self) -> None:
        out = self.tmp / "out"
        cases = [
            ([], "the following arguments are required"),
            (["frobnicate"], "invalid choice"),
            (["simulate"], "--out"),
            (["simulate", "--out", out, "--seed", "abc"], "invalid int value"),
            (["info"], "path"),
            (["import-zarr", self.tmp], "--out"),
        ]
        for argv, fragment in cases:
            with self.subTest(argv=argv):
                self.assert_user_error(argv, "-: ", fragment)
        self.assertFalse(out.exists())

    def test_help(self) -> None:
        rc, out, _ = run_main("--help")
        self.assertEqual(rc, 0)
        self.assertIn("simulate", out)

    def test_module_entry_point_exit_status(self) -> None:
        proc = subprocess.run(
            [sys.executable, "-m", "latent_tune.data", "info", str(self.tmp / "nope")],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        self.assertEqual(proc.returncode, 2)
        self.assertEqual(proc.stderr.strip().count("\n"), 0, proc.stderr)
        self.assertIn("nope: -: does not exist", proc.stderr)

    def test_closed_stdout_pipe_is_quiet(self) -> None:
        """`info DIR | head` used to end in a BrokenPipeError traceback once head had exited."""
        root = write_small_suite(self.tmp / "suite", n_cv=6)
        r, w = os.pipe()
        os.close(r)  # the reader (head) is gone before the command writes anything
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "latent_tune.data", "info", str(root)],
                stdout=w,
                stderr=subprocess.PIPE,
                text=True,
                timeout=120,
                check=False,
            )
        finally:
            os.close(w)
        self.assertNotIn("BrokenPipeError", proc.stderr)
        self.assertNotIn("Traceback", proc.stderr)
        self.assertEqual(proc.stderr, "")
        self.assertEqual(proc.returncode, 141)  # as a shell tool killed by SIGPIPE


class SimulateTest(CliTestCase):
    def test_unknown_preset_writes_nothing(self) -> None:
        out = self.tmp / "out"
        self.assert_user_error(
            ["simulate", "--out", out, "--preset", "huge"], "-: --preset: ", "unknown preset"
        )
        self.assertFalse(out.exists())

    def test_existing_output_is_refused(self) -> None:
        out = self.tmp / "out"
        out.mkdir()
        (out / "keep.txt").write_text("mine")
        self.assert_user_error(
            ["simulate", "--out", out, "--preset", "tiny"], f"{out}: --out: ", "already exists"
        )
        self.assertEqual([p.name for p in out.iterdir()], ["keep.txt"])

    def test_simulate_tiny_writes_a_valid_suite(self) -> None:
        out = self.tmp / "suite"
        rc, stdout, err = run_main("simulate", "--out", out, "--preset", "tiny", "--seed", "3")
        self.assertEqual((rc, err), (0, ""))
        self.assertIn(str(out), stdout)
        suite = Suite.open(out)
        self.assertEqual(suite.manifest.preset, "tiny")
        self.assertEqual(suite.manifest.seed, 3)
        self.assertGreaterEqual(len(suite.crossval), 2)
        self.assertEqual(set(suite.train.quantities), {"voltage", "calcium"})
        suite.train.check()
        rc, info, _ = run_main("info", out)
        self.assertEqual(rc, 0)
        self.assertIn("preset: tiny", info)


def write_lab_store(root: Path, t: int = 60, n: int = 8) -> np.ndarray:
    """A tiny store in the lab's x_list_0/ layout (zarr v2): metadata (N,5), timeseries (T,N,4)."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    meta = np.stack(
        [np.arange(n), rng.random(n), rng.random(n), np.arange(n) % 2, np.arange(n) % 3], axis=1
    ).astype(np.float32)
    ts = rng.standard_normal((t, n, 4)).astype(np.float32)
    m = zarr.open_array(
        root / "metadata.zarr",
        mode="w",
        shape=meta.shape,
        chunks=meta.shape,
        dtype="f4",
        zarr_format=2,
    )
    m[:] = meta
    z = zarr.open_array(
        root / "timeseries.zarr",
        mode="w",
        shape=ts.shape,
        chunks=(20, n, 1),
        dtype="f4",
        zarr_format=2,
    )
    z[:] = ts
    return ts


class ImportZarrTest(CliTestCase):
    def test_missing_zarr_extra_says_how_to_install(self) -> None:
        out = self.tmp / "out"
        err = ModuleNotFoundError("No module named 'zarr'", name="zarr")
        with mock.patch.object(cli.importlib, "import_module", side_effect=err):
            self.assert_user_error(
                ["import-zarr", self.tmp, "--out", out],
                "-: import-zarr: ",
                "pip install 'latent-tune[zarr]'",
            )
        self.assertFalse(out.exists())

    def test_missing_source(self) -> None:
        out = self.tmp / "out"
        self.assert_user_error(
            ["import-zarr", self.tmp / "nope", "--out", out], f"{self.tmp / 'nope'}: -: ", "not a"
        )
        self.assertFalse(out.exists())

    def test_import_small_lab_store(self) -> None:
        src = self.tmp / "x_list_0"
        ts = write_lab_store(src)
        out = self.tmp / "imported"
        rc, _, err = run_main("import-zarr", src, "--out", out, "--n-stimulus", "3")
        self.assertEqual((rc, err), (0, ""))
        ds = Dataset.open(out)
        self.assertEqual((ds.n_steps, ds.n_neurons, ds.n_stimulus), (60, 8, 3))
        np.testing.assert_array_equal(ds.activity("voltage"), ts[:, :, 0])
        np.testing.assert_array_equal(ds.activity("calcium"), ts[:, :, 2])
        np.testing.assert_array_equal(ds.stimulus(), ts[:, :3, 1])


if __name__ == "__main__":
    unittest.main()
