"""`import-arrays`: dense recordings from .npy/.npz/HDF5 in either axis order, the stimulus as a
second array, an optional edge list; ambiguous layouts, missing keys and bad values refused in
one line with nothing written; a scale warning; and a run without a connectome refusing AUG."""

from __future__ import annotations

import importlib.util
import shutil
import sys
import tempfile
import unittest
from pathlib import Path
from unittest import mock

import numpy as np

from latent_tune.data.importer_arrays import ArraySource, import_arrays, parse_source
from latent_tune.data.reader import Dataset
from latent_tune.errors import UserInputError
from latent_tune.training.config_loading import load_config
from latent_tune.training.data import clear_suite_cache, load_run_data
from latent_tune.training.trainer import Trainer
from tests.test_data_cli import run_main

HAVE_H5PY = importlib.util.find_spec("h5py") is not None
REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "trainables" / "eed_staggered_tiny.yaml"
T, N, S = 90, 7, 3


def recording(t: int = T, n: int = N, s: int = S, seed: int = 0, scale: float = 0.5):
    """(T, N) activity and (T, S) stimulus, float32, std about `scale`."""
    rng = np.random.default_rng(seed)
    act = (scale * rng.standard_normal((t, n))).astype(np.float32)
    stim = rng.random((t, s)).astype(np.float32)
    return act, stim


class ImportArraysTest(unittest.TestCase):
    def setUp(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="lt-arrays-"))
        self.addCleanup(shutil.rmtree, self.tmp, ignore_errors=True)
        self.act, self.stim = recording()
        self.out = self.tmp / "ds"

    def save(self, name: str, arr: np.ndarray) -> Path:
        path = self.tmp / name
        np.save(path, arr)
        return path

    def cli(self, *argv: object) -> tuple[int, str, str]:
        return run_main("import-arrays", "--out", self.out, *argv)

    def refused(self, argv: list, prefix: str, fragment: str) -> None:
        rc, out, err = self.cli(*argv)
        self.assertEqual(rc, 2, err)
        self.assertEqual(out, "")
        self.assertEqual(err.count("\n"), 1, repr(err))
        self.assertTrue(err.startswith(prefix), f"{err!r} does not start with {prefix!r}")
        self.assertIn(fragment, err)
        self.assertFalse(self.out.exists())
        self.assertEqual([p.name for p in self.tmp.iterdir() if p.name.startswith(".")], [])

    def test_neurons_by_time_is_inferred_from_the_stimulus(self) -> None:
        f = self.save("F.npy", self.act.T.copy())  # suite2p: (N, T)
        st = self.save("stim.npy", self.stim)
        rc, out, err = self.cli("--activity", f"calcium={f}", "--stimulus", st)
        self.assertEqual((rc, err), (0, ""))
        self.assertIn(f"layout nt: T = {T}, N = {N}, S = {S}, 0 connectome edges", out)
        ds = Dataset.open(self.out)
        self.assertEqual(ds.quantities, ["calcium"])
        np.testing.assert_array_equal(ds.activity("calcium"), self.act)
        np.testing.assert_array_equal(ds.stimulus(), self.stim)
        self.assertEqual(ds.connectome()[0].size, 0)
        self.assertEqual(ds.neurons().num_rows, N)  # default metadata
        self.assertEqual(ds.type_names(), ["unknown"])

    def test_streams_in_chunks_with_two_quantities_and_1d_stimulus(self) -> None:
        cal, _ = recording(seed=5)
        summary = import_arrays(
            [
                ("voltage", ArraySource(self.save("v.npy", self.act))),
                ("calcium", ArraySource(self.save("c.npy", cal))),
            ],
            ArraySource(self.save("s.npy", self.stim[:, 0].copy())),
            self.out,
            layout="tn",
            chunk_steps=7,
            dt=0.1,
        )
        ds = Dataset.open(summary.path)
        self.assertEqual((ds.n_stimulus, ds.dt), (1, 0.1))
        np.testing.assert_array_equal(ds.activity("voltage"), self.act)
        np.testing.assert_array_equal(ds.activity("calcium"), cal)
        np.testing.assert_array_equal(ds.stimulus()[:, 0], self.stim[:, 0])
        self.assertEqual(summary.warnings, [])

    def test_npz_keys(self) -> None:
        np.savez(self.tmp / "rec.npz", C=self.act.T, other=np.zeros(3))
        np.savez(self.tmp / "stim.npz", movie=self.stim)
        rc, _, err = self.cli(
            "--activity", f"{self.tmp / 'rec.npz'}:C", "--stimulus", self.tmp / "stim.npz"
        )
        self.assertEqual((rc, err), (0, ""))
        np.testing.assert_array_equal(Dataset.open(self.out).activity("voltage"), self.act)

    def test_missing_stimulus_key_names_file_and_key(self) -> None:
        np.savez(self.tmp / "rec.npz", C=self.act.T, stim=self.stim)
        rec = self.tmp / "rec.npz"
        self.refused(
            ["--activity", f"{rec}:C", "--stimulus", f"{rec}:stimulus"],
            f"{rec}: stimulus: ",
            "missing stimulus array (has ['C', 'stim'])",
        )
        self.refused(["--activity", rec, "--stimulus", f"{rec}:stim"], f"{rec}: -: ", "FILE:KEY")
        self.refused(
            ["--activity", f"{rec}:C", "--stimulus", self.tmp / "nope.npy"],
            f"{self.tmp / 'nope.npy'}: -: ",
            "missing stimulus file",
        )

    def test_ambiguous_or_mismatched_layouts(self) -> None:
        sq = self.save("sq.npy", recording(n=T)[0])
        st = self.save("stim.npy", self.stim)
        self.refused(["--activity", sq, "--stimulus", st], f"{sq}: --layout: ", "give --layout tn")
        same = self.save("same.npy", np.zeros((T, S), np.float32))  # (T, N) with N == S
        self.refused(["--activity", same, "--stimulus", st], f"{same}: --layout: ", "both axes")
        short = self.save("short.npy", self.stim[:50])
        a = self.save("a.npy", self.act)
        self.refused(["--activity", a, "--stimulus", short], f"{a}: --layout: ", "neither axis")
        self.refused(
            ["--activity", a, "--stimulus", short, "--layout", "tn"],
            f"{short}: -: ",
            f"no time axis of {T} steps",
        )
        rc, _, err = self.cli("--activity", sq, "--stimulus", st, "--layout", "nt")
        self.assertEqual((rc, err), (0, ""))

    def test_other_shape_and_non_finite_values(self) -> None:
        a = self.save("a.npy", self.act)
        b = self.save("b.npy", self.act[:, :5].copy())
        st = self.save("stim.npy", self.stim)
        self.refused(
            ["--activity", f"voltage={a}", "--activity", f"calcium={b}", "--stimulus", st],
            f"{b}: -: ",
            f"calcium is ({T}, 5), voltage is ({T}, {N})",
        )
        bad = self.act.copy()
        bad[61, 2] = np.inf
        n = self.save("n.npy", bad)
        self.refused(
            ["--activity", n, "--stimulus", st], f"{n}: -: ", "non-finite voltage value at time 61"
        )

    def test_bad_quantity_name_and_dt(self) -> None:
        a, st = self.save("a.npy", self.act), self.save("stim.npy", self.stim)
        self.refused(
            ["--activity", f"stimulus={a}", "--stimulus", st], "-: --activity: ", "'stimulus'"
        )
        self.refused(["--activity", a, "--stimulus", st, "--dt", "inf"], "-: --dt: ", "finite")

    def test_connectome_edge_lists(self) -> None:
        a, st = self.save("a.npy", self.act), self.save("stim.npy", self.stim)
        csv = self.tmp / "edges.csv"
        csv.write_text("pre,post,weight\n0,1,0.5\n2,6,-1.25\n")
        rc, out, err = self.cli("--activity", a, "--stimulus", st, "--connectome", csv)
        self.assertEqual((rc, err), (0, ""))
        pre, post, w = Dataset.open(self.out).connectome()
        np.testing.assert_array_equal(pre, [0, 2])
        np.testing.assert_array_equal(post, [1, 6])
        np.testing.assert_array_equal(w, np.array([0.5, -1.25], np.float32))
        shutil.rmtree(self.out)
        e = self.save("e.npy", np.array([[0, 1], [3, 4], [5, 5]]))
        self.assertEqual(self.cli("--activity", a, "--stimulus", st, "--connectome", e)[0], 0)
        np.testing.assert_array_equal(Dataset.open(self.out).connectome()[2], np.ones(3))
        shutil.rmtree(self.out)
        bad = self.save("bad.npy", np.array([[0, 1], [3, N]]))
        self.refused(
            ["--activity", a, "--stimulus", st, "--connectome", bad],
            f"{bad}: post: ",
            f"edge 1 has post = {N}, outside [0, {N})",
        )

    def test_scale_warning(self) -> None:
        raw, _ = recording(scale=300.0)  # raw fluorescence counts
        rc, out, err = self.cli(
            "--activity", self.save("raw.npy", raw), "--stimulus", self.save("s.npy", self.stim)
        )
        self.assertEqual(rc, 0)
        self.assertEqual(err.count("\n"), 1, err)
        self.assertTrue(err.startswith("warning: "))
        self.assertIn("divergence_threshold", err)
        self.assertIn("wrote dataset", out)

    def test_parse_source(self) -> None:
        self.assertEqual(parse_source("a.h5:/grp/C"), ArraySource(Path("a.h5"), "/grp/C"))
        self.assertEqual(parse_source("a.npy"), ArraySource(Path("a.npy")))

    def test_missing_hdf5_extra_says_how_to_install(self) -> None:
        path = self.tmp / "rec.h5"
        path.write_bytes(b"not read")
        with mock.patch.dict(sys.modules, {"h5py": None}):  # import h5py raises ImportError
            self.refused(
                ["--activity", f"{path}:C", "--stimulus", f"{path}:s"],
                "-: import-arrays: ",
                "pip install 'latent-tune[hdf5]'",
            )

    @unittest.skipUnless(HAVE_H5PY, "h5py (the hdf5 extra) is not installed")
    def test_hdf5(self) -> None:
        import h5py  # optional extra

        path = self.tmp / "caiman.hdf5"
        with h5py.File(path, "w") as f:
            f.create_dataset("estimates/C", data=self.act.T, chunks=(N, 16))
            f.create_dataset("stimulus", data=self.stim)
        rc, _, err = self.cli("--activity", f"{path}:estimates/C", "--stimulus", f"{path}:stimulus")
        self.assertEqual((rc, err), (0, ""))
        np.testing.assert_array_equal(Dataset.open(self.out).activity("voltage"), self.act)
        shutil.rmtree(self.out)
        self.refused(
            ["--activity", f"{path}:estimates/C", "--stimulus", f"{path}:stim"],
            f"{path}: stim: ",
            "missing stimulus array",
        )


class NoConnectomeAugTest(unittest.TestCase):
    """Imported arrays without a connectome: a run asking for the AUG loss is refused."""

    def test_aug_without_connectome(self) -> None:
        tmp = Path(tempfile.mkdtemp(prefix="lt-arrays-aug-"))
        self.addCleanup(shutil.rmtree, tmp, ignore_errors=True)
        self.addCleanup(clear_suite_cache)
        for name, t, seed in (("train", 1500, 0), ("flow", 600, 1)):
            act, stim = recording(t=t, seed=seed)
            np.save(tmp / f"{name}_a.npy", act)
            np.save(tmp / f"{name}_s.npy", stim)
            rc, _, err = run_main(
                "import-arrays",
                "--activity",
                tmp / f"{name}_a.npy",
                "--stimulus",
                tmp / f"{name}_s.npy",
                "--out",
                tmp / name,
            )
            self.assertEqual((rc, err), (0, ""))
        rc, _, err = run_main(
            "suite",
            "--train",
            tmp / "train",
            "--crossval",
            f"flow={tmp / 'flow'}",
            "--out",
            tmp / "suite",
            "--rollout-steps",
            "100",
        )
        self.assertEqual((rc, err), (0, ""))
        base = [f"data.suite={tmp / 'suite'}", "evaluation.rollout_steps=100"]
        load_run_data(load_config(TINY, base))  # without AUG: fine
        load_run_data(load_config(TINY, [*base, "loss.aug.coeff=0.5"]))  # num_neurons 0: off
        cfg = load_config(TINY, [*base, "loss.aug.coeff=0.5", "loss.aug.num_neurons=4"])
        with self.assertRaises(UserInputError) as cm:
            Trainer(cfg, None, "cpu")  # the EED recipe opens the connectome for AUG
        self.assertEqual(cm.exception.key, "loss.aug.coeff")
        self.assertIn("needs a connectome", cm.exception.problem)


if __name__ == "__main__":
    unittest.main()
