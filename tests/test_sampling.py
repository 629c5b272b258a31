"""Seeded chunk, batch and evaluation starts: deterministic and in range."""

from __future__ import annotations

import unittest

import torch

from latent_tune.data.sampling import batch_starts, chunk_starts, eval_starts


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class TestSampling(unittest.TestCase):
    def test_chunk_starts_aligned_in_range_and_seeded(self) -> None:
        starts = chunk_starts(967_680, 65_536, 20, 14, gen(0))
        self.assertEqual(len(starts), 14)
        self.assertTrue(all(isinstance(s, int) for s in starts))
        self.assertTrue(all(s % 20 == 0 and 0 <= s <= 967_680 - 65_536 for s in starts))
        self.assertEqual(starts, chunk_starts(967_680, 65_536, 20, 14, gen(0)))
        self.assertNotEqual(starts, chunk_starts(967_680, 65_536, 20, 14, gen(1)))

    def test_chunk_starts_reach_the_last_aligned_offset(self) -> None:
        starts = set(chunk_starts(100, 60, 20, 200, gen(0)))
        self.assertEqual(starts, {0, 20, 40})

    def test_short_range_is_one_chunk(self) -> None:
        self.assertEqual(chunk_starts(500, 65_536, 20, 14, gen(0)), [0])
        self.assertEqual(chunk_starts(500, 500, 20, 3, gen(0)), [0])

    def test_batch_starts(self) -> None:
        chunk_len, horizon, tu = 1000, 100, 20
        b = batch_starts(chunk_len, horizon, 4096, tu, gen(5))
        self.assertEqual(b.shape, (4096,))
        self.assertEqual(b.dtype, torch.int64)
        self.assertGreaterEqual(int(b.min()), tu)
        self.assertLessEqual(int(b.max()), chunk_len - horizon)
        self.assertEqual(int(b.min()), tu)  # both ends are reachable
        self.assertEqual(int(b.max()), chunk_len - horizon)
        self.assertGreater(len(set(torch.remainder(b, tu).tolist())), 1)  # not tu-aligned
        self.assertTrue(torch.equal(b, batch_starts(chunk_len, horizon, 4096, tu, gen(5))))

    def test_batch_starts_too_short(self) -> None:
        with self.assertRaises(ValueError):
            batch_starts(110, 100, 8, 20, gen(0))

    def test_eval_starts(self) -> None:
        length, rollout, tu = 5000, 2000, 20
        s = eval_starts(length, rollout, 10, tu, seed=234)
        self.assertEqual(s.shape, (10,))
        self.assertEqual(s.dtype, torch.int64)
        self.assertTrue(torch.all(s[1:] > s[:-1]))  # sorted, distinct
        self.assertGreaterEqual(int(s.min()), tu)
        self.assertLessEqual(int(s.max()) + rollout, length - 1)  # room for the targets
        self.assertTrue(torch.equal(s, eval_starts(length, rollout, 10, tu, seed=234)))
        self.assertFalse(torch.equal(s, eval_starts(length, rollout, 10, tu, seed=235)))

    def test_eval_starts_small_range(self) -> None:
        s = eval_starts(2024, 2000, 10, 20, seed=0)
        self.assertEqual(s.tolist(), [20, 21, 22, 23])
        with self.assertRaises(ValueError):
            eval_starts(2020, 2000, 10, 20, seed=0)


if __name__ == "__main__":
    unittest.main()
