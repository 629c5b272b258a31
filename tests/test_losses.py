"""Losses: staggered masking, TV, AUG (vectorised vs loop), L1, the aligned path; all tiny."""

from __future__ import annotations

import unittest

import torch

from latent_tune.data.acquisition import make_acquisition
from latent_tune.data.interpolation import interpolate_staggered
from latent_tune.model.config import ModelConfig
from latent_tune.model.eed import EEDModel
from latent_tune.training.eed_config import L1Config, LossConfig
from latent_tune.training.losses import aligned_loss, observation_due, staggered_loss
from latent_tune.training.regularisers import AugSampler, Connectome, aug_term, l1_term, tv_term

N, S, T = 7, 3, 80


def tiny_model(seed: int = 0, zero_init: bool = False) -> EEDModel:
    torch.manual_seed(seed)
    cfg = ModelConfig.model_validate(
        {
            "latent_dims": 5,
            "encoder": {"hidden_units": 8, "hidden_layers": 1},
            "stimulus_encoder": {"latent_dims": 2, "hidden_units": 4, "hidden_layers": 1},
            "evolver": {"hidden_units": 8, "hidden_layers": 1, "zero_init": zero_init},
        }
    )
    model = EEDModel(N, S, cfg).double()
    if not zero_init:
        # Make the evolver's contribution visible (default init is small but not zero).
        with torch.no_grad():
            model.evolver.output_layer.weight.mul_(3.0)
    return model


def data(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, N, generator=g, dtype=torch.float64)
    stim = torch.randn(T, S, generator=g, dtype=torch.float64)
    return x, stim


# Small connectome: post 0 <- 1, 2; post 3 <- 4; post 5 <- 0, 6, 1; 2 and 4 have no inputs.
PRE = [1, 2, 4, 0, 6, 1, 3]
POST = [0, 0, 3, 5, 5, 5, 6]


def loop_presyn_mask(targets: list[int]) -> torch.Tensor:
    keep = set(targets)
    for t in targets:
        for p, q in zip(PRE, POST):
            if q == t:
                keep.add(p)
    return torch.tensor([i in keep for i in range(N)])


def reference_staggered(model, x, x_interp, stim, t0, acq, horizon, tv_coeff):
    """Plain loop over k, b, i with the mask written as in docs/method.md, section 6.1."""
    tu = acq.effective_tu
    phi = acq.phases
    z = model.encode(x_interp[t0])
    evolve = torch.zeros((), dtype=x.dtype)
    tv = torch.zeros((), dtype=x.dtype)
    for k in range(horizon):
        pred = model.decode(z)
        term = torch.zeros((), dtype=x.dtype)
        for b in range(len(t0)):
            for i in range(N):
                p = (int(t0[b]) - int(phi[i])) % tu
                if (p + k) % tu == 0:
                    term = term + (pred[b, i] - x[int(t0[b]) + k, i]) ** 2
        evolve = evolve + term / (len(t0) * N)
        if k < horizon - 1:
            u = model.encode_stimulus(stim[t0 + k])
            z, dz = model.step(z, u)
            tv = tv + dz.abs().mean()
    return evolve, tv_coeff * tv


class TestMask(unittest.TestCase):
    def test_due_matches_observed_pattern(self) -> None:
        for mode, tu in (
            ("staggered_random", 1),
            ("staggered_random", 3),
            ("staggered_random", 5),
            ("time_aligned", 4),
            ("all_time_points", 6),
        ):
            acq = make_acquisition(mode, tu, N, seed=tu)
            t0 = torch.tensor([0, 4, 7, 13, 21])
            due = observation_due(t0, acq)
            eff = acq.effective_tu
            for k in range(2 * tu + 1):
                with self.subTest(mode=mode, tu=tu, k=k):
                    mask = due == (k % eff)
                    self.assertTrue(torch.equal(mask, acq.observed(t0 + k)))
                    # Each neuron observed exactly once per tu consecutive steps.
            window = torch.stack([due == (k % eff) for k in range(eff)])
            self.assertTrue(torch.equal(window.sum(0), torch.ones(len(t0), N, dtype=torch.long)))

    def test_hand_pattern(self) -> None:
        acq = make_acquisition("staggered_random", 3, N, seed=0)
        acq = type(acq)(mode=acq.mode, tu=3, phases=torch.tensor([0, 1, 2, 0, 1, 2, 0]))
        due = observation_due(torch.tensor([4]), acq)
        # t0 = 4: neuron with phase 1 is observed at k = 0, phase 2 at k = 1, phase 0 at k = 2.
        self.assertEqual(due.tolist(), [[2, 0, 1, 2, 0, 1, 2]])


class TestStaggeredLoss(unittest.TestCase):
    def setUp(self) -> None:
        self.model = tiny_model()
        self.x, self.stim = data()
        self.acq = make_acquisition("staggered_random", 4, N, seed=3)
        self.xi = interpolate_staggered(self.x, self.acq.phases, 4)
        self.t0 = torch.tensor([4, 9, 22, 31])
        self.h = 8

    def loss_and_grads(self, x, cfg: LossConfig, aug_seed: int | None = None):
        self.model.zero_grad()
        sampler = None
        if aug_seed is not None:
            sampler = AugSampler(Connectome(PRE, POST, N), cfg.aug.num_neurons, seed=aug_seed)
        out = staggered_loss(
            self.model, x, self.xi, self.stim, self.t0, self.acq, self.h, cfg, sampler
        )
        out["total"].backward()
        grads = [p.grad.clone() for p in self.model.parameters() if p.grad is not None]
        return {k: v.detach() for k, v in out.items()}, grads

    def test_matches_loop_reference(self) -> None:
        cfg = LossConfig(tv_coeff=0.01)
        out = staggered_loss(self.model, self.x, self.xi, self.stim, self.t0, self.acq, self.h, cfg)
        ref_evolve, ref_tv = reference_staggered(
            self.model, self.x, self.xi, self.stim, self.t0, self.acq, self.h, 0.01
        )
        torch.testing.assert_close(out["evolve"], ref_evolve)
        torch.testing.assert_close(out["tv"], ref_tv)
        self.assertGreater(out["tv"].item(), 0.0)
        torch.testing.assert_close(out["total"], ref_evolve + ref_tv)
        self.assertEqual(set(out), {"total", "evolve", "tv", "aug", "reg"})
        self.assertEqual(out["aug"].item(), 0.0)
        self.assertEqual(out["reg"].item(), 0.0)

    def test_unobserved_targets_do_not_matter(self) -> None:
        cfg = LossConfig.model_validate(
            {"tv_coeff": 0.01, "aug": {"coeff": 0.5, "num_neurons": 3}, "l1": {"evolver": 0.1}}
        )
        observed = self.acq.observed(torch.arange(T))  # (T, N)
        base, base_grads = self.loss_and_grads(self.x, cfg, aug_seed=5)
        changed = torch.where(observed, self.x, self.x + 100.0)
        poisoned = torch.where(observed, self.x, torch.full_like(self.x, float("nan")))
        for name, x2 in (("changed", changed), ("nan", poisoned)):
            with self.subTest(name):
                out, grads = self.loss_and_grads(x2, cfg, aug_seed=5)
                for key in base:
                    self.assertTrue(torch.equal(out[key], base[key]), key)
                self.assertEqual(len(grads), len(base_grads))
                for g, g0 in zip(grads, base_grads):
                    self.assertTrue(torch.isfinite(g).all())
                    self.assertTrue(torch.equal(g, g0))
        # ... while changing an observed target in the window does change the loss.
        t, i = int(self.t0[0]), int(torch.nonzero(observed[int(self.t0[0])])[0])
        bumped = self.x.clone()
        bumped[t, i] += 1.0
        out, _ = self.loss_and_grads(bumped, cfg, aug_seed=5)
        self.assertNotEqual(out["evolve"].item(), base["evolve"].item())

    def test_horizon_one_is_masked_reconstruction(self) -> None:
        # The trainer's staggered recon warmup: only the start frame's observed entries.
        out = staggered_loss(
            self.model, self.x, self.xi, self.stim, self.t0, self.acq, 1, LossConfig(), None
        )
        mask = self.acq.observed(self.t0)
        pred = self.model.decode(self.model.encode(self.xi[self.t0]))
        ref = torch.where(mask, pred - self.x[self.t0], 0.0).square().mean()
        torch.testing.assert_close(out["evolve"], ref)

    def test_nan_interpolation_source_is_ignored(self) -> None:
        # The interpolation itself never reads unobserved entries either.
        observed = self.acq.observed(torch.arange(T))
        poisoned = torch.where(observed, self.x, torch.full_like(self.x, float("nan")))
        self.assertTrue(torch.equal(interpolate_staggered(poisoned, self.acq.phases, 4), self.xi))

    def test_one_step_per_phase_scale(self) -> None:
        # With a constant error e on every entry each step's term is e^2 / tu.
        model = tiny_model(zero_init=True)
        with torch.no_grad():
            for p in model.decoder.parameters():
                p.zero_()
        x = torch.full((T, N), 2.0, dtype=torch.float64)
        out = staggered_loss(model, x, x, self.stim, self.t0, self.acq, self.h, LossConfig(), None)
        torch.testing.assert_close(out["evolve"], torch.tensor(self.h * 4.0 / 4, dtype=x.dtype))


class TestTerms(unittest.TestCase):
    def test_tv_by_hand(self) -> None:
        dz1 = torch.tensor([[1.0, -2.0], [0.0, 3.0]])  # mean |dz| = 1.5
        dz2 = torch.tensor([[-0.5, 0.5], [0.5, -0.5]])  # 0.5
        self.assertAlmostEqual(float(tv_term([dz1, dz2], 0.1)), 0.2)
        self.assertAlmostEqual(float(tv_term(torch.stack([dz1, dz2]), 0.1)), 0.2)
        self.assertEqual(float(tv_term([dz1], 0.0)), 0.0)

    def test_presyn_mask_vs_loop(self) -> None:
        dense = Connectome(PRE, POST, N)
        self.assertIsNotNone(dense.table)
        ragged = Connectome(PRE, POST, N)
        ragged.table = None  # force the CSR path
        g = torch.Generator().manual_seed(0)
        for _ in range(20):
            targets = torch.randint(
                0, N, (int(torch.randint(1, 5, (1,), generator=g)),), generator=g
            )
            ref = loop_presyn_mask(targets.tolist())
            self.assertTrue(torch.equal(dense.presyn_mask(targets), ref))
            self.assertTrue(torch.equal(ragged.presyn_mask(targets), ref))
        # by hand: target 5 keeps 5 and its inputs 0, 6, 1
        self.assertEqual(
            torch.nonzero(dense.presyn_mask(torch.tensor([5]))).flatten().tolist(), [0, 1, 5, 6]
        )
        self.assertEqual(
            torch.nonzero(dense.presyn_mask(torch.tensor([2]))).flatten().tolist(), [2]
        )

    def test_skewed_graph_uses_csr(self) -> None:
        n = 50
        pre = list(range(1, n))
        post = [0] * (n - 1)
        c = Connectome(pre, post, n)
        self.assertIsNone(c.table)
        self.assertTrue(bool(c.presyn_mask(torch.tensor([0])).all()))
        self.assertEqual(int(c.presyn_mask(torch.tensor([3])).sum()), 1)

    def test_connectome_rejects_bad_edges(self) -> None:
        with self.assertRaises(ValueError):
            Connectome([0, 9], [1, 2], 5)
        with self.assertRaises(ValueError):
            Connectome([0], [1, 2], 5)

    def test_aug_term_vs_loop_reference(self) -> None:
        model = tiny_model()
        x, stim = data()
        x0 = x[[3, 10, 20]]
        u0 = model.encode_stimulus(stim[[3, 10, 20]])
        y_full = model.decode(model.step(model.encode(x0), u0)[0])
        targets = torch.tensor([5, 0, 5])
        conn = Connectome(PRE, POST, N)
        val = aug_term(
            model, x0, u0, y_full, targets=targets, mask=conn.presyn_mask(targets), coeff=0.3
        )
        # Loop reference: zero every column not in {targets} U presyn(targets).
        keep = loop_presyn_mask(targets.tolist())
        x_aug = x0.clone()
        for i in range(N):
            if not keep[i]:
                x_aug[:, i] = 0.0
        y_aug = model.decode(model.step(model.encode(x_aug), u0)[0])
        total = 0.0
        for b in range(3):
            for t in targets.tolist():
                total = total + (y_aug[b, t] - y_full[b, t]) ** 2
        torch.testing.assert_close(val, 0.3 * total / (3 * len(targets)))
        # Gradients flow through both branches.
        val.backward()
        self.assertTrue(
            any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())
        )

    def test_aug_in_staggered_loss(self) -> None:
        model = tiny_model()
        x, stim = data()
        acq = make_acquisition("staggered_random", 4, N, seed=3)
        xi = interpolate_staggered(x, acq.phases, 4)
        t0 = torch.tensor([4, 9])
        cfg = LossConfig.model_validate({"aug": {"coeff": 2.0, "num_neurons": 4}})
        sampler = AugSampler(Connectome(PRE, POST, N), 4, seed=11)
        state = sampler.state_dict()
        out = staggered_loss(model, x, xi, stim, t0, acq, 8, cfg, sampler)
        sampler.load_state_dict(state)
        targets, mask = sampler.sample()
        u0 = model.encode_stimulus(stim[t0])
        y_full = model.decode(model.step(model.encode(xi[t0]), u0)[0])
        ref = aug_term(model, xi[t0], u0, y_full, targets=targets, mask=mask, coeff=2.0)
        torch.testing.assert_close(out["aug"], ref)
        self.assertGreater(out["aug"].item(), 0.0)
        torch.testing.assert_close(out["total"], out["evolve"] + out["aug"])
        # Same seed -> same draws (reproducible across resumes).
        a = AugSampler(Connectome(PRE, POST, N), 4, seed=11).sample()[0]
        b = AugSampler(Connectome(PRE, POST, N), 4, seed=11).sample()[0]
        self.assertTrue(torch.equal(a, b))

    def test_l1_by_hand(self) -> None:
        model = tiny_model()
        with torch.no_grad():
            for p in model.encoder.parameters():
                p.fill_(-0.5)
            for p in model.decoder.parameters():
                p.fill_(2.0)
            for p in model.evolver.parameters():
                p.fill_(0.25)
        n_enc = len(list(model.encoder.parameters()))
        n_dec = len(list(model.decoder.parameters()))
        n_evo = len(list(model.evolver.parameters()))
        val = l1_term(model, L1Config(encoder=0.1, decoder=0.01, evolver=1.0))
        expected = 0.1 * 0.5 * n_enc + 0.01 * 2.0 * n_dec + 1.0 * 0.25 * n_evo
        self.assertAlmostEqual(val.item(), expected, places=12)
        self.assertEqual(float(l1_term(model, L1Config())), 0.0)

    def test_l1_per_tensor_mean(self) -> None:
        model = tiny_model()
        val = l1_term(model, L1Config(evolver=0.5))
        ref = 0.5 * sum(p.detach().abs().mean().item() for p in model.evolver.parameters())
        self.assertAlmostEqual(val.item(), ref, places=10)


class TestAlignedLoss(unittest.TestCase):
    def test_matches_reference(self) -> None:
        model = tiny_model()
        x, stim = data()
        acq = make_acquisition("time_aligned", 3, N, seed=0)
        cfg = LossConfig.model_validate(
            {"tv_coeff": 0.02, "recon_weight": 0.5, "l1": {"encoder": 0.01}}
        )
        t0 = torch.tensor([6, 14, 30])  # 14 is snapped to 12 on the tu grid
        out = aligned_loss(model, x, None, stim, t0, acq, 9, cfg, None)
        self.assertEqual(set(out), {"total", "recon", "evolve", "tv", "aug", "reg"})
        snapped = torch.tensor([6, 12, 30])
        x0 = x[snapped]
        z = model.encode(x0)
        recon = 0.5 * ((model.decode(z) - x0) ** 2).mean()
        evolve, tv = 0.0, 0.0
        for k in range(9):
            z, dz = model.step(z, model.encode_stimulus(stim[snapped + k]))
            tv = tv + dz.abs().mean()
            if (k + 1) % 3 == 0:
                evolve = evolve + ((model.decode(z) - x[snapped + k + 1]) ** 2).mean()
        reg = l1_term(model, cfg.l1)
        torch.testing.assert_close(out["recon"], recon)
        torch.testing.assert_close(out["evolve"], evolve)
        torch.testing.assert_close(out["tv"], 0.02 * tv)
        torch.testing.assert_close(out["reg"], reg)
        torch.testing.assert_close(out["total"], recon + evolve + 0.02 * tv + reg)

    def test_all_time_points_with_aug(self) -> None:
        model = tiny_model()
        x, stim = data()
        acq = make_acquisition("all_time_points", 2, N, seed=0)
        cfg = LossConfig.model_validate({"aug": {"coeff": 1.0, "num_neurons": 2}})
        sampler = AugSampler(Connectome(PRE, POST, N), 2, seed=1)
        t0 = torch.tensor([5, 7])
        out = aligned_loss(model, x, None, stim, t0, acq, 4, cfg, sampler)
        self.assertGreater(out["aug"].item(), 0.0)
        out["total"].backward()
        self.assertTrue(
            all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        )
        with self.assertRaises(ValueError):
            aligned_loss(model, x, None, stim, t0, acq, 3, cfg, None)


if __name__ == "__main__":
    unittest.main()
