"""Acquisition modes: observation patterns and seeded CPU phases (docs/method.md, section 3)."""

from __future__ import annotations

import unittest

import torch

from latent_tune.data.acquisition import MODES, make_acquisition, start_offsets


class TestAcquisition(unittest.TestCase):
    def test_staggered_each_neuron_once_per_any_window(self) -> None:
        for tu in (1, 3, 20):
            acq = make_acquisition("staggered_random", tu, 500, seed=653)
            self.assertEqual(acq.effective_tu, tu)
            mask = acq.observed(torch.arange(7 * tu + 5))
            windows = mask.unfold(0, tu, 1).sum(-1)  # (T - tu + 1, N): every tu-window
            self.assertTrue(torch.all(windows == 1))
            self.assertTrue(torch.all(mask[acq.phases, torch.arange(500)]))

    def test_staggered_phases_cover_range(self) -> None:
        acq = make_acquisition("staggered_random", 20, 13741, seed=653)
        self.assertEqual(acq.phases.dtype, torch.int64)
        self.assertEqual(acq.phases.device.type, "cpu")
        self.assertEqual(int(acq.phases.min()), 0)
        self.assertEqual(int(acq.phases.max()), 19)

    def test_time_aligned_all_at_multiples_of_tu(self) -> None:
        acq = make_acquisition("time_aligned", 5, 40, seed=1)
        self.assertTrue(torch.all(acq.phases == 0))
        t = torch.arange(31)
        mask = acq.observed(t)
        self.assertTrue(torch.equal(mask, (t % 5 == 0).unsqueeze(1).expand(31, 40)))

    def test_all_time_points_observes_everything(self) -> None:
        acq = make_acquisition("all_time_points", 20, 30, seed=1)
        self.assertEqual(acq.tu, 20)
        self.assertEqual(acq.effective_tu, 1)
        self.assertTrue(torch.all(acq.phases == 0))
        self.assertTrue(torch.all(acq.observed(torch.arange(50))))

    def test_phases_deterministic_per_seed(self) -> None:
        a = make_acquisition("staggered_random", 20, 1000, seed=653)
        b = make_acquisition("staggered_random", 20, 1000, seed=653)
        c = make_acquisition("staggered_random", 20, 1000, seed=654)
        self.assertTrue(torch.equal(a.phases, b.phases))
        self.assertFalse(torch.equal(a.phases, c.phases))
        # drawn on CPU, independent of the global RNG state
        torch.manual_seed(123)
        d = make_acquisition("staggered_random", 20, 1000, seed=653)
        self.assertTrue(torch.equal(a.phases, d.phases))

    def test_observed_batched_shape(self) -> None:
        acq = make_acquisition("staggered_random", 4, 6, seed=0)
        t = torch.arange(12).view(3, 4)
        mask = acq.observed(t)
        self.assertEqual(mask.shape, (3, 4, 6))
        self.assertTrue(torch.equal(mask[1, 2], acq.observed(torch.tensor(6))))

    def test_start_offsets(self) -> None:
        acq = make_acquisition("staggered_random", 7, 50, seed=3)
        t0 = torch.tensor([0, 3, 7, 100])
        off = start_offsets(t0, acq.phases, 7)
        self.assertEqual(off.shape, (4, 50))
        self.assertTrue(torch.all((off >= 0) & (off < 7)))
        # a neuron is observed at t0 + k exactly when (off + k) % tu == 0
        for k in range(10):
            want = acq.observed(t0 + k)
            self.assertTrue(torch.equal(torch.remainder(off + k, 7) == 0, want))

    def test_invalid(self) -> None:
        self.assertEqual(MODES, ("all_time_points", "time_aligned", "staggered_random"))
        with self.assertRaises(ValueError):
            make_acquisition("random", 4, 3, 0)
        with self.assertRaises(ValueError):
            make_acquisition("staggered_random", 0, 3, 0)


if __name__ == "__main__":
    unittest.main()
