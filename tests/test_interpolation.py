"""Staggered interpolation: exact at observations, linear between, held at edges, no leakage."""

from __future__ import annotations

import unittest

import torch

from latent_tune.data.acquisition import make_acquisition
from latent_tune.data.interpolation import interpolate_rows, interpolate_staggered


def reference(x: torch.Tensor, phases: torch.Tensor, tu: int, mode: str) -> torch.Tensor:
    """Slow per-entry loop written straight from docs/method.md, section 4 (edges hold)."""
    n_rows, n_neurons = x.shape
    out = torch.empty_like(x)
    for i in range(n_neurons):
        observed = [t for t in range(n_rows) if (t - int(phases[i])) % tu == 0]
        for t in range(n_rows):
            before = [s for s in observed if s <= t]
            after = [s for s in observed if s > t]
            if not before:
                out[t, i] = x[observed[0], i]
            elif mode == "hold" or not after:
                out[t, i] = x[before[-1], i]
            else:
                lo, hi = before[-1], after[0]
                w = (t - lo) / (hi - lo)
                out[t, i] = (1 - w) * x[lo, i] + w * x[hi, i]
    return out


def staggered(n_rows: int, n_neurons: int, tu: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n_rows, n_neurons, generator=gen, dtype=torch.float64)
    phases = make_acquisition("staggered_random", tu, n_neurons, seed).phases
    return x, phases


def observed_mask(n_rows: int, phases: torch.Tensor, tu: int) -> torch.Tensor:
    t = torch.arange(n_rows).unsqueeze(1)
    return torch.remainder(t - phases, tu) == 0


class TestInterpolation(unittest.TestCase):
    def test_matches_loop_reference(self) -> None:
        cases = [(2, 7, 5), (3, 10, 4), (5, 23, 6), (7, 30, 9), (20, 65, 12), (4, 4, 5), (4, 2, 3)]
        for seed, (tu, n_rows, n_neurons) in enumerate(cases):
            x, phases = staggered(n_rows, n_neurons, tu, seed)
            phases = phases.clamp_max(n_rows - 1)  # every neuron observed at least once
            for mode in ("linear", "hold"):
                want = reference(x, phases, tu, mode)
                for block_rows in (None, 1, tu, 3 * tu):
                    with self.subTest(tu=tu, T=n_rows, mode=mode, block_rows=block_rows):
                        got = interpolate_staggered(x, phases, tu, mode, block_rows=block_rows)
                        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)

    def test_exact_at_observed_steps(self) -> None:
        for mode in ("linear", "hold"):
            for tu in (2, 5, 20):
                x, phases = staggered(203, 50, tu, tu)
                got = interpolate_staggered(x.float(), phases, tu, mode)
                mask = observed_mask(203, phases, tu)
                self.assertTrue(torch.equal(got[mask], x.float()[mask]))

    def test_linear_between_observations(self) -> None:
        tu = 5
        x, phases = staggered(100, 40, tu, 1)
        got = interpolate_staggered(x, phases, tu, "linear")
        for i in range(40):
            p = int(phases[i])
            for lo in range(p, 100 - tu, tu):
                line = torch.linspace(float(x[lo, i]), float(x[lo + tu, i]), tu + 1, dtype=x.dtype)
                torch.testing.assert_close(got[lo : lo + tu + 1, i], line)

    def test_edges_hold_nearest_observation(self) -> None:
        tu, n_rows = 6, 40
        x, phases = staggered(n_rows, 30, tu, 3)
        for mode in ("linear", "hold"):
            got = interpolate_staggered(x, phases, tu, mode)
            for i in range(30):
                first = int(phases[i])
                last = first + (n_rows - 1 - first) // tu * tu
                self.assertTrue(torch.all(got[:first, i] == x[first, i]))
                self.assertTrue(torch.all(got[last:, i] == x[last, i]))

    def test_hold_is_causal(self) -> None:
        tu = 4
        x, phases = staggered(50, 20, tu, 5)
        got = interpolate_staggered(x, phases, tu, "hold")
        changed = x.clone()
        changed[30:] += 100.0
        got_changed = interpolate_staggered(changed, phases, tu, "hold")
        # rows from the first observation of each neuron on never look ahead
        self.assertTrue(torch.equal(got[tu:30], got_changed[tu:30]))

    def test_never_reads_unobserved_values(self) -> None:
        for tu, n_rows in ((2, 31), (7, 64), (20, 333)):
            for mode in ("linear", "hold"):
                with self.subTest(tu=tu, mode=mode):
                    x, phases = staggered(n_rows, 37, tu, tu + n_rows)
                    x = x.float()
                    mask = observed_mask(n_rows, phases, tu)
                    poisoned = torch.where(mask, x, torch.full_like(x, float("nan")))
                    got = interpolate_staggered(poisoned, phases, tu, mode, block_rows=tu)
                    self.assertTrue(torch.isfinite(got).all())
                    self.assertTrue(torch.equal(got, interpolate_staggered(x, phases, tu, mode)))

    def test_time_aligned_phases(self) -> None:
        tu = 5
        x, _ = staggered(26, 3, tu, 0)
        phases = make_acquisition("time_aligned", tu, 3, 0).phases
        got = interpolate_staggered(x, phases, tu, "linear")
        torch.testing.assert_close(got[2], 0.6 * x[0] + 0.4 * x[5])
        self.assertTrue(torch.equal(got[25], x[25]))

    def test_tu_one_is_a_clone(self) -> None:
        x = torch.randn(10, 4)
        got = interpolate_staggered(x, torch.zeros(4, dtype=torch.int64), 1)
        self.assertTrue(torch.equal(got, x))
        self.assertNotEqual(got.data_ptr(), x.data_ptr())

    def test_dtypes_and_readonly_input(self) -> None:
        x, phases = staggered(40, 9, 4, 2)
        for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
            got = interpolate_staggered(x.to(dtype), phases, 4, "linear")
            self.assertEqual(got.dtype, dtype)
            torch.testing.assert_close(
                got.double(), reference(x, phases, 4, "linear"), atol=0.05, rtol=0.02
            )

    def test_invalid_arguments(self) -> None:
        x = torch.randn(10, 3)
        with self.assertRaises(ValueError):
            interpolate_staggered(x, torch.tensor([0, 1, 5]), 4)  # phase >= tu
        with self.assertRaises(ValueError):
            interpolate_staggered(x, torch.tensor([0, 1]), 4)  # wrong shape
        with self.assertRaises(ValueError):
            interpolate_staggered(x, torch.tensor([0, 1, 2]), 4, "cubic")  # type: ignore[arg-type]
        with self.assertRaises(ValueError):
            interpolate_staggered(x[:2], torch.tensor([0, 1, 3]), 4)  # neuron never observed

    @unittest.skipUnless(torch.cuda.is_available(), "needs CUDA")
    def test_cuda_matches_cpu(self) -> None:
        x, phases = staggered(500, 300, 20, 9)
        for mode in ("linear", "hold"):
            cpu = interpolate_staggered(x.float(), phases, 20, mode)
            gpu = interpolate_staggered(x.float().cuda(), phases, 20, mode)
            self.assertEqual(gpu.device.type, "cuda")
            torch.testing.assert_close(gpu.cpu(), cpu)


class TestInterpolateRows(unittest.TestCase):
    """Training's start frames computed alone equal the whole chunk's interpolation, bitwise."""

    def test_equals_rows_of_the_full_interpolation(self) -> None:
        for tu, n_rows in ((1, 9), (2, 31), (3, 10), (7, 64), (20, 333), (20, 20)):
            for mode in ("linear", "hold"):
                for dtype in (torch.float32, torch.float64):
                    with self.subTest(tu=tu, n_rows=n_rows, mode=mode, dtype=dtype):
                        x, phases = staggered(n_rows, 37, tu, tu * 1000 + n_rows)
                        x = x.to(dtype)
                        full = interpolate_staggered(x, phases, tu, mode)
                        rows = torch.arange(n_rows).flip(0)  # any order, edges included
                        got = interpolate_rows(x, rows, phases, tu, mode)
                        self.assertTrue(torch.equal(got, full[rows]))

    def test_never_reads_unobserved_values(self) -> None:
        tu, n_rows = 7, 64
        x, phases = staggered(n_rows, 37, tu, 5)
        poisoned = torch.where(observed_mask(n_rows, phases, tu), x, float("nan"))
        rows = torch.tensor([0, 6, 7, 30, 63])
        for mode in ("linear", "hold"):
            got = interpolate_rows(poisoned, rows, phases, tu, mode)
            self.assertTrue(torch.equal(got, interpolate_rows(x, rows, phases, tu, mode)))


if __name__ == "__main__":
    unittest.main()
