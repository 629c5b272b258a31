"""A trial's GPU share: the OOM error names resources.gpu with real numbers; CUDA caps it.

Why: Ray's fractional GPUs are scheduling tokens only; a trial that outgrows its share must be
the one that fails, and its error must tell the user which key to change.
"""

from __future__ import annotations

import unittest

import torch

from latent_tune.errors import UserInputError
from latent_tune.tune.gpu_share import GB, GpuShare, claim_gpu_share, explain_gpu_oom, peak_gb

CPU = torch.device("cpu")


class GpuShareErrors(unittest.TestCase):
    def test_oom_inside_share_becomes_one_line_naming_the_key(self) -> None:
        share = GpuShare(0.25, int(80 * GB), "NVIDIA H100")
        with self.assertRaises(UserInputError) as cm, explain_gpu_oom(share, CPU):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        msg = str(cm.exception)
        self.assertEqual(cm.exception.key, "resources.gpu")
        self.assertNotIn("\n", msg)
        self.assertIn("resources.gpu = 0.25 gives this trial 20.0 GB of the 80.0 GB", msg)
        self.assertIn("NVIDIA H100", msg)
        self.assertIn("raise resources.gpu", msg)
        self.assertIn("Tried to allocate 2.00 GiB", msg)  # the allocator's own words kept
        self.assertIsInstance(cm.exception.__cause__, torch.cuda.OutOfMemoryError)

    def test_whole_gpu_advice_is_to_shrink_the_trial(self) -> None:
        err = GpuShare(1.0, int(40 * GB)).oom_error(int(39.5 * GB), "x")
        self.assertIn("its peak was 39.5 GB", str(err))
        self.assertIn("training.batch_size", str(err))
        self.assertNotIn("raise resources.gpu", str(err))

    def test_without_a_share_the_oom_passes_through(self) -> None:
        with self.assertRaises(torch.cuda.OutOfMemoryError), explain_gpu_oom(None, CPU):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        share = GpuShare(0.5, int(80 * GB))
        with self.assertRaises(ValueError), explain_gpu_oom(share, CPU):
            raise ValueError("not a memory problem")

    def test_cpu_trials_claim_nothing(self) -> None:
        self.assertIsNone(claim_gpu_share(0.5, CPU))
        self.assertIsNone(peak_gb(CPU))
        self.assertIsNone(claim_gpu_share(0.0, torch.device("cuda")))  # no GPU requested


@unittest.skipUnless(torch.cuda.is_available(), "needs CUDA")
class GpuShareCuda(unittest.TestCase):
    def tearDown(self) -> None:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()

    def test_allocation_beyond_the_share_fails_in_this_process(self) -> None:
        dev = torch.device("cuda")
        share = claim_gpu_share(0.1, dev)
        assert share is not None
        with self.assertRaises(UserInputError) as cm, explain_gpu_oom(share, dev):
            torch.empty(int(share.share_bytes * 1.2) // 4, dtype=torch.float32, device=dev)
        self.assertIn("resources.gpu = 0.1", str(cm.exception))
        small = torch.empty(int(share.share_bytes * 0.5) // 4, dtype=torch.float32, device=dev)
        self.assertGreaterEqual(peak_gb(dev) or 0.0, small.numel() * 4 / GB * 0.99)


if __name__ == "__main__":
    unittest.main()
