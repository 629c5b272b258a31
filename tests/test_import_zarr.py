"""The zarr importer on a small store written in the lab's exact `x_list_0/` layout.

Why: the lab's data are the real target; the importer must carry every value, the stimulus
(STIMULUS column of the first S neurons), the metadata and the connectome over unchanged, and
reject broken stores with one clear message.
"""

from __future__ import annotations

import shutil
import tempfile
import unittest
from pathlib import Path

import numpy as np
import torch
import zarr
from numcodecs import Blosc

from latent_tune.data.importer_zarr import (
    LAB_INPUT_TYPES,
    import_zarr,
    import_zarr_suite,
    read_type_names,
)
from latent_tune.data.network import LAB_TYPE_NAMES
from latent_tune.data.reader import Dataset
from latent_tune.data.suite import Suite
from latent_tune.data.suite_builder import CrossvalSource
from latent_tune.errors import UserInputError
from tests.test_data_cli import run_main

T, N, S, E = 53, 12, 5, 30


NON_INPUT_TYPES = np.array([i for i in range(65) if i not in LAB_INPUT_TYPES])


def write_lab_store(
    root: Path,
    *,
    seed: int = 0,
    connectome: bool = True,
    t: int = T,
    n: int = N,
    s: int = S,
) -> dict[str, np.ndarray]:
    """`root/x_list_0/{metadata,timeseries}.zarr` (zarr v2, blosc zstd, chunks (t, N, 1)) and
    `root/edge_index.pt`, `root/weights.pt`, as the lab writes them: the first `s` neurons are
    photoreceptors (R1-R8), the others of other lab types."""
    T, N, S = t, n, s  # noqa: N806 (the module's names, per store)
    rng = np.random.default_rng(seed)
    xdir = root / "x_list_0"
    xdir.mkdir(parents=True)
    meta = np.zeros((N, 5), dtype=np.float32)
    meta[:, 0] = np.arange(N)
    meta[:, 1:3] = rng.normal(size=(N, 2))
    meta[:, 3] = rng.integers(0, 4, N)
    meta[:, 4] = np.r_[np.full(S, 23), rng.choice(NON_INPUT_TYPES, N - S)]  # 23 = R1
    ts = rng.normal(size=(T, N, 4)).astype(np.float32)
    comp = Blosc(cname="zstd", clevel=3, shuffle=Blosc.BITSHUFFLE)
    m = zarr.create_array(
        store=str(xdir / "metadata.zarr"),
        shape=meta.shape,
        chunks=meta.shape,
        dtype="float32",
        zarr_format=2,
        compressors=comp,
    )
    m[...] = meta
    a = zarr.create_array(
        store=str(xdir / "timeseries.zarr"),
        shape=ts.shape,
        chunks=(20, N, 1),  # the lab uses (2000, N, 1); small here to span several chunks
        dtype="float32",
        zarr_format=2,
        compressors=comp,
    )
    a[...] = ts
    out = {"meta": meta, "ts": ts}
    if connectome:
        ei = torch.from_numpy(rng.integers(0, N, size=(2, E)))
        w = torch.from_numpy(rng.normal(size=E).astype(np.float32))
        torch.save(ei, root / "edge_index.pt")
        torch.save(w, root / "weights.pt")
        out |= {"edge_index": ei.numpy(), "weights": w.numpy()}
    return out


class TestImportZarr(unittest.TestCase):
    def setUp(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="lt-zarr-"))
        self.src = self.tmp / "fly_N9_62_1"
        self.data = write_lab_store(self.src)

    def tearDown(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    def test_round_trip_equals_source(self) -> None:
        out = import_zarr(self.src, self.tmp / "ds", n_stimulus=S, chunk_steps=7, lab_types=True)
        ds = Dataset.open(out)
        ts, meta = self.data["ts"], self.data["meta"]
        self.assertEqual((ds.n_steps, ds.n_neurons, ds.n_stimulus), (T, N, S))
        self.assertEqual(ds.quantities, ["voltage", "calcium"])
        np.testing.assert_array_equal(ds.activity("voltage"), ts[:, :, 0])
        np.testing.assert_array_equal(ds.activity("calcium"), ts[:, :, 2])
        np.testing.assert_array_equal(ds.stimulus(), ts[:, :S, 1])
        nt = ds.neurons()
        np.testing.assert_array_equal(nt.column("index").to_numpy(), meta[:, 0].astype(np.int64))
        np.testing.assert_array_equal(nt.column("x").to_numpy(), meta[:, 1])
        np.testing.assert_array_equal(nt.column("y").to_numpy(), meta[:, 2])
        np.testing.assert_array_equal(nt.column("group").to_numpy(), meta[:, 3].astype(np.int32))
        np.testing.assert_array_equal(ds.cell_types(), meta[:, 4].astype(np.int64))
        names = nt.column("type_name").to_pylist()
        self.assertEqual(names[:S], ["R1"] * S)
        self.assertEqual(names, [LAB_TYPE_NAMES[int(t)] for t in meta[:, 4]])
        pre, post, w = ds.connectome()
        np.testing.assert_array_equal(pre, self.data["edge_index"][0])
        np.testing.assert_array_equal(post, self.data["edge_index"][1])
        np.testing.assert_array_equal(w, self.data["weights"])
        self.assertEqual(ds.header.provenance["columns"]["calcium"], "CALCIUM")
        ds.check()

    def test_x_list_dir_as_source_and_other_quantity(self) -> None:
        out = import_zarr(
            self.src / "x_list_0",
            self.tmp / "ds",
            n_stimulus=S,
            quantities=("fluorescence",),
            chunk_steps=2000,
        )
        ds = Dataset.open(out)
        np.testing.assert_array_equal(ds.activity("fluorescence"), self.data["ts"][:, :, 3])
        self.assertEqual(ds.connectome()[0].size, E)  # found beside x_list_0

    def test_without_connectome_and_without_weights(self) -> None:
        bare = self.tmp / "bare"
        write_lab_store(bare, connectome=False)
        ds = Dataset.open(import_zarr(bare, self.tmp / "a", n_stimulus=S))
        self.assertEqual(ds.connectome()[0].size, 0)
        (self.src / "weights.pt").unlink()
        ds = Dataset.open(import_zarr(self.src, self.tmp / "b", n_stimulus=S))
        np.testing.assert_array_equal(ds.connectome()[2], np.ones(E, dtype=np.float32))

    def _fails(self, needle_file: str, needle: str, **kw) -> UserInputError:
        with self.assertRaises(UserInputError) as cm:
            import_zarr(self.src, self.tmp / "out", **{"n_stimulus": S, **kw})
        msg = str(cm.exception)
        self.assertIn(needle_file, msg)
        self.assertIn(needle, msg)
        self.assertEqual(len(msg.splitlines()), 1)
        self.assertFalse((self.tmp / "out").exists())
        return cm.exception

    def test_missing_timeseries(self) -> None:
        shutil.rmtree(self.src / "x_list_0" / "timeseries.zarr")
        self._fails("fly_N9_62_1", "timeseries.zarr")

    def test_missing_metadata(self) -> None:
        shutil.rmtree(self.src / "x_list_0" / "metadata.zarr")
        self._fails("metadata.zarr", "missing")

    def test_wrong_shapes(self) -> None:
        xdir = self.src / "x_list_0"
        shutil.rmtree(xdir / "metadata.zarr")
        zarr.create_array(
            store=str(xdir / "metadata.zarr"), shape=(N, 4), dtype="float32", zarr_format=2
        )[...] = 0
        self._fails("metadata.zarr", "expected (N, 5)")

    def test_wrong_timeseries_columns(self) -> None:
        xdir = self.src / "x_list_0"
        shutil.rmtree(xdir / "timeseries.zarr")
        zarr.create_array(
            store=str(xdir / "timeseries.zarr"), shape=(T, N, 3), dtype="float32", zarr_format=2
        )[...] = 0
        self._fails("timeseries.zarr", "expected (T, N=12, 4)")

    def test_bad_connectome(self) -> None:
        torch.save(torch.tensor([[0, 1], [2, N]]), self.src / "edge_index.pt")
        self._fails("edge_index.pt", "outside [0, 12)")
        torch.save(torch.zeros(3, 2, dtype=torch.int64), self.src / "edge_index.pt")
        self._fails("edge_index.pt", "expected (2, E)")
        torch.save(torch.zeros(2, E, dtype=torch.int64), self.src / "edge_index.pt")
        torch.save(torch.ones(E + 1), self.src / "weights.pt")
        self._fails("weights.pt", f"{E + 1} weights for {E} edges")

    def test_bad_arguments(self) -> None:
        self._fails("-", "n_stimulus", n_stimulus=N + 1)
        self._fails("-", "unknown quantity", quantities=("spikes",))
        self._fails("-", "dt", dt=0.0)

    def test_stimulus_width_is_read_from_the_metadata(self) -> None:
        ds = Dataset.open(import_zarr(self.src, self.tmp / "ds", n_stimulus=None))
        self.assertEqual(ds.n_stimulus, S)
        np.testing.assert_array_equal(ds.stimulus(), self.data["ts"][:, :S, 1])

    def test_wrong_n_stimulus_is_refused_not_imported(self) -> None:
        """Seen: a store with 488 inputs imported as 1,736 stimulus columns (the default)."""
        e = self._fails("metadata.zarr", f"--n-stimulus {S}", n_stimulus=S + 3)
        self.assertEqual(e.key, "--n-stimulus")
        self.assertIn(f"{S + 3} stimulus columns", e.problem)

    def test_scattered_inputs_are_refused(self) -> None:
        xdir = self.src / "x_list_0"
        meta = zarr.open_array(store=str(xdir / "metadata.zarr"), mode="r+")
        meta[N - 1, 4] = LAB_INPUT_TYPES[0]
        self._fails("metadata.zarr", "not one leading block", n_stimulus=None)
        # A store following another type table says which ids are inputs (or none: then S).
        ds = Dataset.open(
            import_zarr(self.src, self.tmp / "ds", n_stimulus=S, input_types=(), lab_types=True)
        )
        self.assertEqual(ds.n_stimulus, S)

    def test_no_input_types_needs_n_stimulus(self) -> None:
        self._fails("metadata.zarr", "give --n-stimulus", n_stimulus=None, input_types=(99,))

    def test_type_names_only_when_asked_for(self) -> None:
        ds = Dataset.open(import_zarr(self.src, self.tmp / "a"))
        ids = self.data["meta"][:, 4].astype(int)
        self.assertEqual(ds.neurons().column("type_name").to_pylist(), [f"type_{i}" for i in ids])
        names_file = self.tmp / "types.txt"
        names_file.write_text("\n".join(f"T{i}" for i in range(65)) + "\n\n")
        names = read_type_names(names_file)
        self.assertEqual(len(names), 65)
        ds = Dataset.open(import_zarr(self.src, self.tmp / "b", type_names=names))
        self.assertEqual(ds.neurons().column("type_name").to_pylist(), [f"T{i}" for i in ids])
        self._fails(
            "metadata.zarr", "3 type names, but TYPE holds ids up to", type_names=["a", "b", "c"]
        )
        self._fails("-", "either", type_names=names, lab_types=True)


class TestImportZarrCli(unittest.TestCase):
    """The command's flags for a lab's own store: quantities, dt, type names, several stores."""

    def setUp(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="lt-zarr-cli-"))
        self.addCleanup(shutil.rmtree, self.tmp, ignore_errors=True)
        self.data = write_lab_store(self.tmp / "store", t=300)

    def test_flags(self) -> None:
        names = self.tmp / "types.txt"
        names.write_text("\n".join(f"cell{i}" for i in range(65)))
        rc, _, err = run_main(
            "import-zarr",
            self.tmp / "store",
            "--out",
            self.tmp / "ds",
            "--quantities",
            "voltage,fluorescence",
            "--dt",
            "0.01",
            "--type-names",
            names,
        )
        self.assertEqual((rc, err), (0, ""))
        ds = Dataset.open(self.tmp / "ds")
        self.assertEqual(
            (ds.quantities, ds.dt, ds.n_stimulus), (["voltage", "fluorescence"], 0.01, S)
        )
        np.testing.assert_array_equal(ds.activity("fluorescence"), self.data["ts"][:, :, 3])
        self.assertEqual(ds.neurons().column("type_name")[0].as_py(), "cell23")

    def test_wrong_n_stimulus_exit_2_nothing_written(self) -> None:
        rc, out, err = run_main(
            "import-zarr", self.tmp / "store", "--out", self.tmp / "ds", "--n-stimulus", "9"
        )
        self.assertEqual((rc, out), (2, ""))
        self.assertEqual(err.count("\n"), 1)
        self.assertIn("metadata.zarr: --n-stimulus: 9 stimulus columns asked for", err)
        self.assertFalse((self.tmp / "ds").exists())

    def test_suite_in_one_go(self) -> None:
        write_lab_store(self.tmp / "flow", seed=1, t=200, connectome=False)
        rc, out, err = run_main(
            "import-zarr",
            self.tmp / "store",
            "--out",
            self.tmp / "suite",
            "--crossval",
            f"flow={self.tmp / 'flow'}@20:200",
            "--rollout-steps",
            "50",
            "--margin",
            "5",
            "--lab-types",
        )
        self.assertEqual((rc, err), (0, ""))
        self.assertIn("train_range [30, 240), val_range [240, 300)", out)
        suite = Suite.open(self.tmp / "suite")
        self.assertEqual(suite.crossval[0][2], (20, 200))
        self.assertEqual(suite.train.type_names()[23], "R1")


class TestImportZarrSuite(unittest.TestCase):
    """Several stores (one per stimulus family) imported as one suite in one go."""

    def setUp(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="lt-zarr-suite-"))
        self.addCleanup(shutil.rmtree, self.tmp, ignore_errors=True)
        self.train = self.tmp / "train_store"
        self.data = write_lab_store(self.train, t=400)
        write_lab_store(self.tmp / "flow", seed=1, t=150, connectome=False)
        write_lab_store(self.tmp / "davis", seed=2, t=160, connectome=False)
        self.cv = [
            CrossvalSource("flow", self.tmp / "flow"),
            CrossvalSource("davis", self.tmp / "davis", (5, 160)),
        ]

    def test_suite_of_three_stores(self) -> None:
        out, manifest, _ = import_zarr_suite(
            self.train, self.cv, self.tmp / "suite", rollout_steps=40, margin=10
        )
        suite = Suite.open(out)
        self.assertEqual(manifest.train.train_range, (40, 320))
        self.assertEqual(manifest.train.val_range, (320, 400))
        self.assertEqual(
            [(n, r) for n, _, r in suite.crossval], [("flow", (15, 150)), ("davis", (5, 160))]
        )
        np.testing.assert_array_equal(suite.train.activity("voltage"), self.data["ts"][:, :, 0])
        self.assertFalse((out / "train").is_symlink())  # imported, not linked

    def test_short_crossval_range_writes_nothing(self) -> None:
        with self.assertRaises(UserInputError) as cm:
            import_zarr_suite(
                self.train,
                self.cv,
                self.tmp / "suite",
                val_range=(200, 400),
                rollout_steps=140,
                margin=10,
            )
        self.assertTrue(str(cm.exception).startswith(f"{self.tmp / 'flow'}: --crossval flow: "))
        self.assertIn("[15, 150) holds 135 rows", str(cm.exception))
        self.assertIn("needs rollout_steps + margin + 1 = 151", str(cm.exception))
        self.assertEqual(
            sorted(p.name for p in self.tmp.iterdir()), ["davis", "flow", "train_store"]
        )

    def test_other_network_is_refused(self) -> None:
        write_lab_store(self.tmp / "other", seed=3, n=N + 2, t=150)
        with self.assertRaises(UserInputError) as cm:
            import_zarr_suite(
                self.train,
                [CrossvalSource("other", self.tmp / "other")],
                self.tmp / "suite",
                rollout_steps=40,
                margin=10,
            )
        msg = str(cm.exception)
        self.assertTrue(msg.startswith(str(self.tmp / "other")), msg)
        self.assertIn(f"has {N + 2} neurons", msg)
        self.assertFalse((self.tmp / "suite").exists())


if __name__ == "__main__":
    unittest.main()
