"""Masked decoding equals the dense staggered loss; the fast rollout equals the plain one; bf16."""

from __future__ import annotations

import unittest

import torch

from latent_tune.data.acquisition import Acquisition, make_acquisition
from latent_tune.data.interpolation import interpolate_staggered
from latent_tune.model.config import ModelConfig
from latent_tune.model.eed import EEDModel
from latent_tune.training.eed_config import AugConfig, L1Config, LossConfig
from latent_tune.training.evaluate import DatasetEval, evaluate_dataset
from latent_tune.training.losses import staggered_loss
from latent_tune.training.masked_decode import phase_classes
from latent_tune.training.precision import bf16_autocast
from latent_tune.training.regularisers import AugSampler, Connectome

N, S, T = 23, 4, 160
PRE = [1, 2, 4, 0, 6, 1, 3, 10, 11, 12, 20, 22]
POST = [0, 0, 3, 5, 5, 5, 6, 9, 9, 13, 21, 21]


def small_model(seed: int = 0, hidden_layers: int = 1, dtype: torch.dtype = torch.float64):
    torch.manual_seed(seed)
    cfg = ModelConfig.model_validate(
        {
            "latent_dims": 6,
            "encoder": {"hidden_units": 8, "hidden_layers": hidden_layers},
            "stimulus_encoder": {"latent_dims": 3, "hidden_units": 4, "hidden_layers": 1},
            "evolver": {"hidden_units": 8, "hidden_layers": 1, "zero_init": False},
        }
    )
    model = EEDModel(N, S, cfg).to(dtype)
    with torch.no_grad():  # make the evolver's contribution visible
        model.evolver.output_layer.weight.mul_(3.0)
    return model


def acquisition(kind: str, tu: int) -> Acquisition:
    """random: seeded phases; aligned: one phase; sparse: only phases 0 and 2 (empty classes)."""
    if kind == "random":
        return make_acquisition("staggered_random", tu, N, seed=tu)
    if kind == "aligned":
        return make_acquisition("time_aligned", tu, N, seed=0)
    phases = torch.tensor([0, 2] * (N // 2) + [2] * (N % 2), dtype=torch.int64)
    return Acquisition(mode="staggered_random", tu=tu, phases=phases)


class TestPhaseClasses(unittest.TestCase):
    def test_every_neuron_once_in_its_class(self) -> None:
        for kind, tu in (("random", 1), ("random", 3), ("random", 10), ("aligned", 4)):
            with self.subTest(kind=kind, tu=tu):
                acq = acquisition(kind, tu)
                pc = phase_classes(acq)
                ids = pc.index[pc.valid]
                self.assertEqual(sorted(ids.tolist()), list(range(N)))
                cls_phase = pc.phase.unsqueeze(1).expand_as(pc.index)[pc.valid]
                self.assertTrue(torch.equal(acq.phases[ids] % acq.effective_tu, cls_phase))

    def test_empty_phases_dropped(self) -> None:
        pc = phase_classes(acquisition("sparse", 5))
        self.assertEqual(pc.phase.tolist(), [0, 2])


class TestMaskedEqualsDense(unittest.TestCase):
    def setUp(self) -> None:
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(T, N, generator=g, dtype=torch.float64)
        self.stim = torch.randn(T, S, generator=g, dtype=torch.float64)

    def run_loss(self, model, acq, t0, horizon, cfg, masked, x=None):
        model.zero_grad()
        sampler = None
        if cfg.aug.coeff > 0:
            sampler = AugSampler(Connectome(PRE, POST, N), cfg.aug.num_neurons, seed=5)
        x = self.x.to(model.encoder.output_layer.weight.dtype) if x is None else x
        xi = interpolate_staggered(x.nan_to_num(0.0), acq.phases, acq.effective_tu)
        stim = self.stim.to(x.dtype)
        out = staggered_loss(
            model, x, xi, stim, t0, acq, horizon, cfg, sampler, masked_decode=masked
        )
        out["total"].backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return {k: v.detach() for k, v in out.items()}, grads

    def assert_same(self, model, acq, t0, horizon, cfg, rtol=1e-5, atol=1e-12, x=None):
        dense, g_dense = self.run_loss(model, acq, t0, horizon, cfg, False, x)
        masked, g_masked = self.run_loss(model, acq, t0, horizon, cfg, True, x)
        self.assertEqual(dense.keys(), masked.keys())
        for k in dense:
            torch.testing.assert_close(masked[k], dense[k], rtol=rtol, atol=atol, msg=k)
        self.assertEqual(g_dense.keys(), g_masked.keys())
        if horizon > 1 or cfg.aug.coeff > 0:  # horizon 1 alone never calls the evolver
            self.assertEqual(len(g_dense), len(list(model.parameters())))
        for name in g_dense:
            torch.testing.assert_close(
                g_masked[name], g_dense[name], rtol=rtol, atol=atol, msg=name
            )
        self.assertGreater(float(dense["evolve"]), 0.0)

    def test_patterns_and_horizons(self) -> None:
        model = small_model()
        t0 = torch.tensor([3, 8, 17, 30, 41, 66])
        cfg = LossConfig()
        for kind, tu, horizon in (
            ("random", 1, 5),
            ("random", 3, 9),
            ("random", 3, 7),  # horizon not a multiple of tu
            ("random", 10, 20),
            ("random", 10, 1),  # the recon-warmup horizon
            ("aligned", 4, 8),
            ("sparse", 5, 10),
        ):
            with self.subTest(kind=kind, tu=tu, horizon=horizon):
                self.assert_same(model, acquisition(kind, tu), t0, horizon, cfg)

    def test_with_tv_aug_l1(self) -> None:
        cfg = LossConfig(
            tv_coeff=0.3,
            aug=AugConfig(coeff=0.7, num_neurons=4),
            l1=L1Config(encoder=0.01, decoder=0.02, evolver=0.03),
        )
        t0 = torch.tensor([5, 12, 29, 50])
        for kind, tu, horizon in (("random", 3, 6), ("random", 10, 20), ("aligned", 4, 1)):
            with self.subTest(kind=kind, tu=tu, horizon=horizon):
                self.assert_same(small_model(2), acquisition(kind, tu), t0, horizon, cfg)

    def test_no_hidden_layers(self) -> None:
        # Lh = 0: the decoder is a single Linear and its features are the latent itself.
        model = small_model(3, hidden_layers=0)
        self.assert_same(model, acquisition("random", 3), torch.tensor([1, 9, 40]), 6, LossConfig())

    def test_float32(self) -> None:
        # float32 sums in a different order: agreement to float32 rounding only.
        model = small_model(4, dtype=torch.float32)
        t0 = torch.tensor([2, 19, 33, 47, 70])
        self.assert_same(
            model, acquisition("random", 10), t0, 20, LossConfig(), rtol=1e-4, atol=1e-5
        )

    def test_bf16_autocast_is_close_to_float32(self) -> None:
        # bf16 rounds matmul inputs (fp32 accumulation): a small, bounded change on any device.
        model = small_model(6, dtype=torch.float32)
        acq, t0, cfg = acquisition("random", 10), torch.tensor([2, 19, 33, 47, 70]), LossConfig()
        for masked in (False, True):
            with self.subTest(masked=masked):
                ref, g_ref = self.run_loss(model, acq, t0, 20, cfg, masked)
                with bf16_autocast(True, torch.device("cpu")):
                    amp, g_amp = self.run_loss(model, acq, t0, 20, cfg, masked)
                self.assertNotEqual(float(amp["total"]), float(ref["total"]))
                torch.testing.assert_close(amp["total"], ref["total"], rtol=3e-2, atol=0.0)
                for name in g_ref:
                    cos = torch.nn.functional.cosine_similarity(
                        g_amp[name].flatten(), g_ref[name].flatten(), dim=0
                    )
                    self.assertGreater(float(cos), 0.99, msg=name)

    def test_nan_in_unobserved_entries_is_ignored(self) -> None:
        acq = acquisition("random", 3)
        t = torch.arange(T)
        x = torch.where(acq.observed(t), self.x, torch.full_like(self.x, float("nan")))
        model = small_model(5)
        t0 = torch.tensor([4, 20, 37])
        out, grads = self.run_loss(model, acq, t0, 9, LossConfig(), True, x)
        self.assertTrue(torch.isfinite(out["total"]))
        self.assertTrue(all(torch.isfinite(g).all() for g in grads.values()))
        self.assert_same(model, acq, t0, 9, LossConfig(), x=x)


class TestFastRollout(unittest.TestCase):
    def setUp(self) -> None:
        g = torch.Generator().manual_seed(2)
        t = torch.arange(T, dtype=torch.float64).unsqueeze(1)
        freq = 0.02 + 0.1 * torch.rand(1, N, generator=g, dtype=torch.float64)
        self.x = 0.3 * torch.sin(freq * t + 6 * torch.rand(1, N, generator=g, dtype=torch.float64))
        self.stim = torch.randn(T, S, generator=g, dtype=torch.float64)
        acq = make_acquisition("staggered_random", 4, N, seed=3)
        self.xi = interpolate_staggered(self.x, acq.phases, 4)
        self.model = small_model(6)
        with torch.no_grad():
            self.model.evolver.output_layer.weight.mul_(0.1)

    def run_eval(self, **kw) -> DatasetEval:
        return evaluate_dataset(
            self.model,
            self.x,
            self.xi,
            self.stim,
            torch.tensor([5, 40, 77]),
            tu=4,
            horizon=8,
            rollout_steps=70,
            threshold=1.0,
            need_figures=True,
            trace_neurons=torch.tensor([0, 5, 11]),
            **kw,
        )

    def assert_same(self, a: DatasetEval, b: DatasetEval) -> None:
        self.assertEqual(a.metrics.keys(), b.metrics.keys())
        for k in a.metrics:
            self.assertAlmostEqual(a.metrics[k], b.metrics[k], places=10, msg=k)
        self.assertEqual(
            (a.finite, a.best_start, a.worst_start), (b.finite, b.best_start, b.worst_start)
        )
        torch.testing.assert_close(a.curves, b.curves)
        for name in a.short:
            torch.testing.assert_close(a.short[name], b.short[name])
        for label in ("best", "worst"):
            for key in ("var_truth", "var_error"):
                torch.testing.assert_close(a.scatter[label][key], b.scatter[label][key])
            torch.testing.assert_close(a.traces[label]["prediction"], b.traces[label]["prediction"])

    def test_fast_equals_plain(self) -> None:
        plain = self.run_eval()
        self.assertTrue(plain.finite)
        self.assert_same(self.run_eval(fast=True), plain)
        # Small blocks: block boundaries fall mid-rollout in both paths.
        self.assert_same(self.run_eval(fast=True, block_steps=7), self.run_eval(block_steps=13))

    def test_bf16_rollout_is_close_to_float32(self) -> None:
        # float64 is never autocast: the bf16 switch needs a float32 model and data to act.
        self.model.float()
        self.x, self.xi, self.stim = self.x.float(), self.xi.float(), self.stim.float()
        plain, amp = self.run_eval(), self.run_eval(bf16=True)
        self.assertTrue(amp.finite)
        self.assertEqual(amp.curves.dtype, torch.float32)  # errors and curves stay float32
        self.assertNotEqual(amp.metrics["mse_overall"], plain.metrics["mse_overall"])
        for k in ("mse_overall", "mse_fit_window", "mse_beyond"):
            self.assertLess(abs(amp.metrics[k] / plain.metrics[k] - 1), 0.05, msg=k)
        # The baselines do not touch the model: bf16 leaves them exact.
        self.assertEqual(amp.metrics["constant_mse_overall"], plain.metrics["constant_mse_overall"])


if __name__ == "__main__":
    unittest.main()
