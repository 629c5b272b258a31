"""The demo-data simulator: suite layout, determinism, and dynamics that make the search matter.

Why these checks: a prototype simulator was so easy that every setting looked alike
(docs/method.md, section 2). So besides format and determinism, these tests pin down that the
data are stimulus-driven AND carry a recurrent, noise-driven part, that types differ, that the
scale fits the divergence threshold (docs/method.md, section 8) and that staggered acquisition
gets harder with tu.
"""

from __future__ import annotations

import shutil
import tempfile
import unittest
from pathlib import Path
from unittest import mock

import numpy as np
from pydantic import ValidationError

from latent_tune.data import network, stimulus
from latent_tune.data import simulate as sim
from latent_tune.data.reader import Dataset
from latent_tune.data.suite import Suite

SMALL = {"train_steps": 900, "crossval_steps": 400, "burn_in": 100, "val_steps": 200}


def staggered_linear(x: np.ndarray, tu: int, seed: int = 0) -> np.ndarray:
    """Reference staggered linear interpolation (docs/method.md, section 4; edges hold), numpy."""
    t_len, n = x.shape
    phi = np.random.default_rng(seed).integers(0, tu, n)
    t = np.arange(t_len)[:, None]
    last = phi + ((t_len - 1 - phi) // tu) * tu
    lo = np.clip(phi + ((t - phi) // tu) * tu, phi, last)
    hi = np.minimum(lo + tu, last)
    w = np.where(hi > lo, np.clip((t - lo) / tu, 0.0, 1.0), 0.0)
    cols = np.arange(n)[None, :]
    return (1 - w) * x[lo, cols] + w * x[hi, cols]


def files_bytes(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


class TinyFixture(unittest.TestCase):
    """One tiny suite on disk and the tiny network in memory, shared by the tests."""

    tmp: Path
    suite: Suite
    net: network.Network
    preset: network.SimPreset

    @classmethod
    def setUpClass(cls) -> None:
        cls.tmp = Path(tempfile.mkdtemp(prefix="lt-sim-"))
        cls.suite = Suite.open(sim.simulate_suite(cls.tmp / "tiny", preset="tiny", seed=0))
        cls.preset = network.PRESETS["tiny"]
        seeds = sim.dataset_seeds(0)
        cls.net = sim.build_network(cls.preset, np.random.default_rng(seeds["network"]))
        b = cls.preset.burn_in
        cls.x = np.asarray(cls.suite.train.activity("voltage"), dtype=np.float64)
        cls.xb = cls.x[b:]

    @classmethod
    def tearDownClass(cls) -> None:
        shutil.rmtree(cls.tmp, ignore_errors=True)


class TestSuiteLayout(TinyFixture):
    def test_sizes_and_ranges(self) -> None:
        tr, m = self.suite.train, self.suite.manifest
        self.assertTrue(100 <= tr.n_neurons <= 150, tr.n_neurons)
        self.assertTrue(14 <= tr.n_stimulus <= 20, tr.n_stimulus)
        self.assertTrue(10_000 <= tr.n_steps <= 12_000, tr.n_steps)
        self.assertEqual(tr.quantities, ["voltage", "calcium"])
        self.assertEqual((m.preset, m.seed), ("tiny", 0))
        t0, t1 = m.train.train_range
        v0, v1 = m.train.val_range
        self.assertGreater(t0, 0)  # burn-in skipped
        self.assertEqual((t1, v0, v1), (v0, v0, tr.n_steps))  # val = the tail
        self.assertTrue(0.1 <= (v1 - v0) / tr.n_steps <= 0.2)
        cv = self.suite.crossval
        self.assertEqual([c[0] for c in cv], ["gratings", "flashes"])
        for _, ds, (c0, c1) in cv:
            self.assertTrue(2_000 <= ds.n_steps <= 3_000)
            self.assertGreater(c0, 0)
            self.assertEqual(c1, ds.n_steps)
            self.assertEqual((ds.n_neurons, ds.n_stimulus), (tr.n_neurons, tr.n_stimulus))
            ds.check()
        tr.check()

    def test_metadata_connectome_provenance(self) -> None:
        tr = self.suite.train
        s = tr.n_stimulus
        group = tr.neurons().column("group").to_numpy()
        self.assertTrue((group[:s] == 0).all() and (group[s:] != 0).all())  # inputs first
        names = tr.type_names()
        self.assertEqual(names[: self.preset.role_counts["input"]], ["R1", "R2"])
        pre, post, w = tr.connectome()
        self.assertGreater(pre.size, 5 * tr.n_neurons)
        self.assertTrue((w > 0).any() and (w < 0).any())  # signed
        self.assertFalse(np.isin(post, np.arange(s)).any())  # inputs receive only the stimulus
        np.testing.assert_array_equal(pre, self.net.pre)
        np.testing.assert_allclose(w, self.net.weight.astype(np.float32))
        prov = tr.header.provenance
        self.assertEqual((prov["preset"], prov["seed"]), ("tiny", 0))
        self.assertEqual(prov["params"]["hex_radius"], self.preset.hex_radius)
        for _, ds, _ in self.suite.crossval:
            np.testing.assert_array_equal(ds.connectome()[0], pre)  # same network

    def test_scale_matches_divergence_threshold(self) -> None:
        sd = self.xb.std(0)
        self.assertTrue(np.median(sd) > 0.1 and np.quantile(sd, 0.9) < 1.0, sd)
        self.assertTrue(sd.min() > 0.05 and sd.max() < 1.5, (sd.min(), sd.max()))
        one_step = np.mean((self.xb[1:] - self.xb[:-1]) ** 2)
        self.assertTrue(3e-3 < one_step < 3e-2, one_step)

    def test_bounded_and_finite_whole_run(self) -> None:
        for _, ds, _ in [("train", self.suite.train, None), *self.suite.crossval]:
            for q in ds.quantities:
                a = ds.activity(q)
                self.assertTrue(np.isfinite(a).all())
                self.assertLess(np.abs(a).max(), 20.0)
        # halves of the long run have the same spread: no drift, no slow blow-up
        half = self.xb.shape[0] // 2
        ratio = self.xb[half:].std() / self.xb[:half].std()
        self.assertTrue(0.7 < ratio < 1.4, ratio)

    def test_constant_baseline_far_from_zero(self) -> None:
        noise_floor = 2 * self.preset.measurement_noise**2
        c20 = np.mean((self.xb[20:] - self.xb[:-20]) ** 2)
        c1 = np.mean((self.xb[1:] - self.xb[:-1]) ** 2)
        self.assertGreater(c20, 10 * noise_floor)
        self.assertGreater(c20, 4 * c1)

    def test_calcium_is_lowpass_and_noisier(self) -> None:
        ca = np.asarray(self.suite.train.activity("calcium"), dtype=np.float64)[
            self.preset.burn_in :
        ]

        # smoother in signal: lag-5 autocorrelation above the voltage's, same neurons
        def lag_corr(a: np.ndarray, k: int) -> np.ndarray:
            a = a - a.mean(0)
            return (a[k:] * a[:-k]).mean(0) / a.var(0)

        self.assertGreater(np.median(lag_corr(ca, 5)), np.median(lag_corr(self.xb, 5)))
        # noisier: the one-step change is dominated by measurement noise
        d1 = np.mean((ca[1:] - ca[:-1]) ** 2)
        self.assertGreater(d1, 1.5 * self.preset.calcium_noise**2)


class TestDeterminism(unittest.TestCase):
    def test_same_seed_same_bytes_other_seed_differs(self) -> None:
        tmp = Path(tempfile.mkdtemp(prefix="lt-sim-det-"))
        try:
            a = sim.simulate_suite(tmp / "a", preset="tiny", seed=3, overrides=SMALL)
            b = sim.simulate_suite(tmp / "b", preset="tiny", seed=3, overrides=SMALL)
            c = sim.simulate_suite(tmp / "c", preset="tiny", seed=4, overrides=SMALL)
            fa, fb = files_bytes(a), files_bytes(b)
            self.assertEqual(sorted(fa), sorted(fb))
            self.assertIn("train/voltage.arrow", fa)
            for k in fa:
                self.assertEqual(fa[k], fb[k], k)
            va = Dataset.open(a / "train").activity("voltage")
            vc = Dataset.open(c / "train").activity("voltage")
            self.assertGreater(np.abs(va - vc).mean(), 0.05)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def test_chunk_size_does_not_change_the_data(self) -> None:
        p = network.PRESETS["tiny"]
        net = sim.build_network(p, np.random.default_rng(1))
        a, sa = sim.simulate_arrays(net, p, "flashes", 500, 2)
        b, sb = sim.simulate_arrays(net, p, "flashes", 500, 2, chunk_steps=37)
        np.testing.assert_array_equal(sa, sb)
        for q in a:
            np.testing.assert_array_equal(a[q], b[q])

    def test_failure_leaves_nothing(self) -> None:
        tmp = Path(tempfile.mkdtemp(prefix="lt-sim-fail-"))
        try:
            with (
                mock.patch.object(sim, "simulate_chunks", side_effect=RuntimeError("boom")),
                self.assertRaises(RuntimeError),
            ):
                sim.simulate_suite(tmp / "s", preset="tiny", seed=0, overrides=SMALL)
            self.assertEqual(list(tmp.iterdir()), [])
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def test_presets_reject_unknown_keys(self) -> None:
        with self.assertRaises(ValidationError):
            network.SimPreset.model_validate({**network.PRESETS["tiny"].model_dump(), "tau": 3})
        with self.assertRaises(ValidationError):
            sim.simulate_suite(Path("/nonexistent/x"), preset="tiny", overrides={"typo": 1})
        with self.assertRaises(ValueError):
            sim.simulate_suite(Path("/nonexistent/x"), preset="huge")


class TestDynamics(TinyFixture):
    def _per_type(self, values: np.ndarray) -> dict[int, float]:
        t = self.net.neuron_type
        return {k: float(values[t == k].mean()) for k in np.unique(t)}

    def test_types_differ_in_time_constants_and_variance(self) -> None:
        p, net = self.preset, self.net
        tau = net.type_tau
        self.assertGreater(tau.max() / tau.min(), 5.0)
        # noise-free run: slow types are smooth, fast ones rough (one-step change / variance)
        stim = stimulus.render_stimulus("textures", net, 3000, seed=7)
        acts, _ = sim.simulate_arrays(
            net, p, "textures", 3000, 0, stimulus=stim, process_noise=False, measurement_noise=False
        )
        x = acts["voltage"][500:].astype(np.float64)
        rough = self._per_type(((x[1:] - x[:-1]) ** 2).mean(0) / x.var(0))
        roles = net.type_role
        slow = [rough[k] for k in rough if tau[k] >= 10]
        fast = [rough[k] for k in rough if tau[k] <= 3 and roles[k] != 0]
        self.assertTrue(slow and fast)
        self.assertGreater(np.median(fast), 2.0 * np.median(slow))
        sd = self._per_type(self.xb.std(0))
        self.assertGreater(max(sd.values()) / min(sd.values()), 2.0)

    def test_stimulus_driven_and_recurrent(self) -> None:
        p, net = self.preset, self.net
        n, b = 4000, p.burn_in
        stim = stimulus.render_stimulus("textures", net, n, seed=7)
        one, _ = sim.simulate_arrays(net, p, "textures", n, 1, stimulus=stim)
        two, _ = sim.simulate_arrays(net, p, "textures", n, 2, stimulus=stim)
        x1, x2 = one["voltage"][b:].astype(float), two["voltage"][b:].astype(float)
        var = x1.var(0)
        unexplained = ((x1 - x2) ** 2).mean(0) / 2  # same stimulus, other noise
        # stimulus-driven overall ...
        self.assertLess(unexplained.sum() / var.sum(), 0.4)
        # ... but the recurrent module carries activity the stimulus does not explain
        rec = net.group == network.ROLES.index("recurrent")
        self.assertGreater(unexplained[rec].sum() / var[rec].sum(), 0.2)
        # removing the module's recurrence changes its activity ...
        cut, _ = sim.simulate_arrays(net, p, "textures", n, 1, stimulus=stim, kinds=(0, 1))
        xc = cut["voltage"][b:].astype(float)
        self.assertGreater(np.mean((xc - x1)[:, rec] ** 2), 0.2 * var[rec].mean())
        # ... and its loop is what amplifies the internal (noise-driven) activity
        grey = np.full_like(stim, 0.5)
        sd = []
        for kinds in ((0, 1, 2), (0, 1)):
            g, _ = sim.simulate_arrays(net, p, "textures", n, 1, stimulus=grey, kinds=kinds)
            sd.append(g["voltage"][b:, rec].std(0).mean())
        self.assertGreater(sd[0], 1.3 * sd[1])
        # and a noise-free copy still varies: the stimulus alone drives it
        quiet, _ = sim.simulate_arrays(net, p, "textures", n, 1, stimulus=stim, process_noise=False)
        xq = quiet["voltage"][b:].astype(float)
        self.assertGreater(xq.var(0).mean(), 0.5 * var.mean())

    def test_crossval_stimulus_families_differ(self) -> None:
        def features(s: np.ndarray) -> tuple[float, float]:
            d = np.abs(np.diff(s, axis=0))
            return float((d.max(1) < 1e-9).mean()), float((d > 0.2).mean())

        train_static, train_jumps = features(self.suite.train.stimulus())
        self.assertLess(train_static, 0.02)  # textures always move
        cv = {name: features(ds.stimulus()) for name, ds, _ in self.suite.crossval}
        g_static, g_jumps = cv["gratings"]
        f_static, f_jumps = cv["flashes"]
        self.assertGreater(g_static, 0.1)  # edges pass, then rest
        self.assertLess(g_jumps, f_jumps)  # smooth motion
        self.assertGreater(f_static, 0.5)  # flashes hold, then jump
        self.assertGreater(f_jumps, 0.03)
        self.assertGreater(f_jumps, 2 * train_jumps)

    def test_difficulty_grows_with_tu(self) -> None:
        err = {}
        for tu in (10, 20, 50):
            err[tu] = float(np.mean((staggered_linear(self.xb, tu) - self.xb) ** 2))
        self.assertLess(err[10], err[20])
        self.assertGreater(err[50], 3 * err[10])
        # and even tu=10 interpolation is well above the measurement-noise floor
        self.assertGreater(err[10], 2 * self.preset.measurement_noise**2)


class TestLabPreset(unittest.TestCase):
    def test_lab_network_shape_and_a_few_steps(self) -> None:
        # layout and wiring only: skip the per-type calibration (tens of seconds at this size)
        p = network.PRESETS["lab"].model_copy(update={"calibration_passes": 0})
        net = sim.build_network(p, np.random.default_rng(0))
        self.assertEqual(net.n_neurons, 13_741)
        self.assertEqual(net.n_stimulus, 1_736)
        self.assertEqual(len(net.type_names), 65)
        self.assertEqual(tuple(net.type_names), network.LAB_TYPE_NAMES)
        first = [net.type_names[k] for k in net.neuron_type[: net.n_stimulus : 217]]
        self.assertEqual(first, [f"R{i}" for i in range(1, 9)])
        self.assertLess(net.rho, p.spectral_radius + 1e-3)  # contraction: stable
        chunks = list(sim.simulate_chunks(net, p, "textures", 30, 0, chunk_steps=12))
        self.assertEqual([c[1].shape[0] for c in chunks], [12, 12, 6])
        for acts, stim in chunks:
            self.assertEqual(acts["voltage"].shape, (stim.shape[0], 13_741))
            self.assertEqual(stim.shape[1], 1_736)
            self.assertTrue(np.isfinite(acts["voltage"]).all())


if __name__ == "__main__":
    unittest.main()
