"""LFADS family: masked likelihood, KL, coordinated dropout, causality, batching, learning."""

from __future__ import annotations

import math
import unittest

import torch

from latent_tune.model.lfads import LFADSModel, LFADSModelConfig
from latent_tune.training.lfads_losses import (
    LFADSLossConfig,
    LossWeights,
    coordinated_dropout_masks,
    gather_window,
    gaussian_kl,
    gaussian_nll,
    lfads_batch_loss,
    loss_weights,
    ramp_weight,
    recurrent_l2,
)

N, S, TU = 9, 3, 4


def tiny_model(co_dim: int = 0, seed: int = 0, **overrides: object) -> LFADSModel:
    torch.manual_seed(seed)
    cfg = LFADSModelConfig.model_validate(
        {
            "encoder_window": 6,
            "ic_enc_dim": 5,
            "ic_dim": 4,
            "ci_enc_dim": 3,
            "con_dim": 4,
            "co_dim": co_dim,
            "gen_dim": 7,
            "factor_dim": 3,
            "stimulus_encoder": {"latent_dims": 2, "hidden_units": 4, "hidden_layers": 1},
            "dropout_rate": 0.0,
            **overrides,
        }
    )
    return LFADSModel(N, S, cfg).double()


def chunk(rows: int = 60, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, N, generator=g, dtype=torch.float64)
    stim = torch.randn(rows, S, generator=g, dtype=torch.float64)
    phases = torch.randint(0, TU, (N,), generator=g)
    return x, stim, phases


def observed(rows: int, phases: torch.Tensor) -> torch.Tensor:
    t = torch.arange(rows).unsqueeze(1)
    return torch.remainder(t - phases, TU) == 0


def grads(model: LFADSModel) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


class TestLikelihood(unittest.TestCase):
    def test_nll_matches_closed_form_on_observed_entries(self) -> None:
        g = torch.Generator().manual_seed(0)
        pred, target = torch.randn(2, 5, 4, generator=g, dtype=torch.float64)
        logvar = torch.randn(4, generator=g, dtype=torch.float64)
        mask = torch.rand(5, 4, generator=g) < 0.5
        got = gaussian_nll(pred, target, logvar, mask)
        terms = [
            0.5
            * (
                logvar[j]
                + (target[i, j] - pred[i, j]) ** 2 / logvar[j].exp()
                + math.log(2 * math.pi)
            )
            for i in range(5)
            for j in range(4)
            if mask[i, j]
        ]
        self.assertAlmostEqual(float(got), float(sum(terms) / len(terms)), places=12)

    def _loss_and_grads(self, x: torch.Tensor, co_dim: int) -> tuple[dict, dict]:
        _, stim, phases = chunk()
        model = tiny_model(co_dim)
        model.eval()  # deterministic: IC mean, no dropout
        t0 = torch.tensor([0, 3, 17, 30, 44])
        out = lfads_batch_loss(
            model,
            x,
            stim,
            phases,
            TU,
            t0,
            8,
            LFADSLossConfig(),
            generator=torch.Generator().manual_seed(5),
        )
        out["total"].backward()
        return {k: v.detach() for k, v in out.items()}, grads(model)

    def test_unobserved_nan_changes_neither_loss_nor_gradients(self) -> None:
        x, _, phases = chunk()
        poisoned = torch.where(observed(x.shape[0], phases), x, torch.full_like(x, math.nan))
        for co_dim in (0, 2):
            with self.subTest(co_dim=co_dim):
                clean_loss, clean_grads = self._loss_and_grads(x, co_dim)
                bad_loss, bad_grads = self._loss_and_grads(poisoned, co_dim)
                for key, value in clean_loss.items():
                    self.assertTrue(torch.isfinite(bad_loss[key]), key)
                    self.assertTrue(torch.equal(value, bad_loss[key]), key)
                self.assertEqual(clean_grads.keys(), bad_grads.keys())
                for name, grad in clean_grads.items():
                    self.assertTrue(torch.isfinite(bad_grads[name]).all(), name)
                    self.assertTrue(torch.equal(grad, bad_grads[name]), name)

    def test_observed_entries_do_change_the_loss(self) -> None:
        x, _, phases = chunk()
        base, _ = self._loss_and_grads(x, 0)
        obs_rows = observed(x.shape[0], phases)
        shifted = torch.where(obs_rows, x + 1.0, x)
        moved, _ = self._loss_and_grads(shifted, 0)
        self.assertGreater(abs(float(moved["nll"]) - float(base["nll"])), 1e-3)


class TestKL(unittest.TestCase):
    def test_closed_form_by_hand(self) -> None:
        mean = torch.tensor([[0.5, -1.0], [0.0, 2.0]], dtype=torch.float64)
        logvar = torch.tensor([[0.0, math.log(0.25)], [math.log(2.0), 0.0]], dtype=torch.float64)
        # Unit prior: 0.5 * (var + mean^2 - 1 - log var) per dim.
        row0 = 0.5 * (1 + 0.25 - 1 - 0) + 0.5 * (0.25 + 1 - 1 - math.log(0.25))
        row1 = 0.5 * (2 + 0 - 1 - math.log(2.0)) + 0.5 * (1 + 4 - 1 - 0)
        got = gaussian_kl(mean, logvar)
        self.assertAlmostEqual(float(got[0]), row0, places=12)
        self.assertAlmostEqual(float(got[1]), row1, places=12)
        # Prior N(0, 0.1): 0.5 * (log 0.1 - log var + (var + mean^2) / 0.1 - 1).
        p = 0.1
        row0p = 0.5 * (math.log(p) - 0 + (1 + 0.25) / p - 1) + 0.5 * (
            math.log(p) - math.log(0.25) + (0.25 + 1) / p - 1
        )
        self.assertAlmostEqual(float(gaussian_kl(mean, logvar, p)[0]), row0p, places=12)

    def test_kl_is_zero_at_the_prior_and_positive_elsewhere(self) -> None:
        zero = torch.zeros(3, 4)
        self.assertEqual(float(gaussian_kl(zero, zero).abs().max()), 0.0)
        self.assertGreater(float(gaussian_kl(zero + 0.1, zero).min()), 0.0)

    def test_initial_state_kl_uses_the_configured_prior(self) -> None:
        model = tiny_model(ic_prior_var=0.3)
        x, _, phases = chunk()
        xc, mc = gather_window(x, torch.tensor([10, 20]), -5, 6, phases=phases, tu=TU)
        _, kl = model.initial_state(xc, mc, sample=False)
        _, h_n = model.ic_encoder(model._encoder_input(xc, mc))
        mean, logvar = model._posterior(torch.cat((h_n[0], h_n[1]), dim=-1))
        by_hand = 0.5 * (math.log(0.3) - logvar + (logvar.exp() + mean**2) / 0.3 - 1).sum(-1)
        self.assertAlmostEqual(float(kl.detach()), float(by_hand.mean().detach()), places=12)


class TestCoordinatedDropout(unittest.TestCase):
    def test_invariants(self) -> None:
        g = torch.Generator().manual_seed(0)
        obs = torch.rand(40, 16, 50, generator=g) < 0.2
        for rate in (0.0, 0.3, 0.7):
            with self.subTest(rate=rate):
                feed, score = coordinated_dropout_masks(obs, rate, torch.Generator().manual_seed(1))
                self.assertFalse(bool((feed & score).any()))
                self.assertTrue(torch.equal(feed | score, obs))
                frac = float(score.sum()) / float(obs.sum())
                self.assertLess(abs(frac - rate), 0.02)

    def test_seeded_reproducible_and_seed_dependent(self) -> None:
        obs = torch.ones(20, 8, 30, dtype=torch.bool)
        a = coordinated_dropout_masks(obs, 0.4, torch.Generator().manual_seed(3))
        b = coordinated_dropout_masks(obs, 0.4, torch.Generator().manual_seed(3))
        c = coordinated_dropout_masks(obs, 0.4, torch.Generator().manual_seed(4))
        self.assertTrue(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]))
        self.assertFalse(torch.equal(a[1], c[1]))

    def test_rejects_rate_one(self) -> None:
        with self.assertRaises(ValueError):
            coordinated_dropout_masks(torch.ones(2, 2, dtype=torch.bool), 1.0)

    def test_fed_entries_are_never_scored_in_the_loss(self) -> None:
        """Changing a scored entry moves the loss but not z_0; a fed one moves z_0 (the input)."""
        x, stim, phases = chunk()
        model = tiny_model()
        model.eval()
        t0 = torch.tensor([20])
        obs_ctx = gather_window(x, t0, -5, 6, phases=phases, tu=TU)[1]
        feed, held = coordinated_dropout_masks(obs_ctx, 0.5, torch.Generator().manual_seed(9))
        self.assertTrue(bool(held[-1].any()) and bool(feed[-1].any()))

        def loss(xx: torch.Tensor) -> float:
            out = lfads_batch_loss(
                model,
                xx,
                stim,
                phases,
                TU,
                t0,
                4,
                LFADSLossConfig(),
                generator=torch.Generator().manual_seed(9),
            )
            return float(out["nll"].detach())

        base = loss(x)
        i_held = int(torch.nonzero(held[-1, 0])[0])
        i_fed = int(torch.nonzero(feed[-1, 0])[0])
        x_held, x_fed = x.clone(), x.clone()
        x_held[20, i_held] += 5.0
        x_fed[20, i_fed] += 5.0
        self.assertNotEqual(loss(x_held), base)
        z_base = model.initial_state(
            *gather_window(x, t0, -5, 6, phases=phases, tu=TU)[:1], feed, sample=False
        )[0]
        z_held = model.initial_state(
            *gather_window(x_held, t0, -5, 6, phases=phases, tu=TU)[:1], feed, sample=False
        )[0]
        z_fed = model.initial_state(
            *gather_window(x_fed, t0, -5, 6, phases=phases, tu=TU)[:1], feed, sample=False
        )[0]
        self.assertTrue(torch.equal(z_base, z_held))
        self.assertFalse(torch.equal(z_base, z_fed))


class TestCausality(unittest.TestCase):
    def test_initial_state_ignores_unobserved_and_future_rows(self) -> None:
        x, _, phases = chunk()
        model = tiny_model()
        model.eval()
        t0 = torch.tensor([2, 9, 25, 40])
        obs = observed(x.shape[0], phases)
        poisoned = torch.where(obs, x, torch.full_like(x, math.nan))
        rows = torch.arange(x.shape[0]).unsqueeze(1)
        z_ref, kl_ref = model.initial_state(
            *gather_window(x, t0, -5, 6, phases=phases, tu=TU), sample=False
        )
        z_nan, kl_nan = model.initial_state(
            *gather_window(poisoned, t0, -5, 6, phases=phases, tu=TU), sample=False
        )
        self.assertTrue(torch.isfinite(z_nan).all())
        self.assertTrue(torch.equal(z_ref, z_nan) and torch.equal(kl_ref, kl_nan))
        for b, start in enumerate(t0.tolist()):
            future = torch.where(rows > start, torch.full_like(x, math.nan), x)
            z_b, _ = model.initial_state(
                *gather_window(future, t0[b : b + 1], -5, 6, phases=phases, tu=TU), sample=False
            )
            # batch of 1 vs batch of 4: equal up to matmul blocking, and NaN-free
            torch.testing.assert_close(z_b[0], z_ref[b], rtol=0, atol=1e-12)

    def test_context_before_the_chunk_is_unobserved(self) -> None:
        x, _, phases = chunk()
        values, mask = gather_window(x, torch.tensor([2]), -5, 6, phases=phases, tu=TU)
        self.assertFalse(bool(mask[:3].any()))  # rows -3..-1
        self.assertTrue(torch.equal(mask[3:, 0], observed(3, phases)))
        self.assertTrue(torch.equal(values[3:, 0], x[:3]))

    def test_initial_state_reads_the_mask(self) -> None:
        """An observed zero differs from an unobserved entry (the mask is an input)."""
        model = tiny_model()
        model.eval()
        xc = torch.zeros(6, 1, N, dtype=torch.float64)
        m1 = torch.zeros(6, 1, N, dtype=torch.bool)
        m2 = m1.clone()
        m2[-1, 0, 0] = True
        a = model.initial_state(xc, m1, sample=False)[0]
        b = model.initial_state(xc, m2, sample=False)[0]
        self.assertFalse(torch.equal(a, b))

    def test_sampling_only_when_asked(self) -> None:
        x, _, phases = chunk()
        model = tiny_model()
        ctx = gather_window(x, torch.tensor([20, 30]), -5, 6, phases=phases, tu=TU)
        self.assertTrue(
            torch.equal(
                model.initial_state(*ctx, sample=False)[0],
                model.initial_state(*ctx, sample=False)[0],
            )
        )
        self.assertFalse(
            torch.equal(
                model.initial_state(*ctx, sample=True)[0], model.initial_state(*ctx, sample=True)[0]
            )
        )


class TestRollout(unittest.TestCase):
    def test_batched_rollout_equals_per_start_steps(self) -> None:
        for co_dim in (0, 2):
            with self.subTest(co_dim=co_dim):
                model = tiny_model(co_dim)
                model.eval()
                x, stim, phases = chunk()
                starts = torch.tensor([5, 12, 31])
                z0, _ = model.initial_state(
                    *gather_window(x, starts, -5, 6, phases=phases, tu=TU), sample=False
                )
                k = 10
                rows = starts.unsqueeze(0) + torch.arange(k).unsqueeze(1)
                batched = model.rollout(z0, model.encode_stimulus(stim[rows]))
                self.assertEqual(tuple(batched.shape), (k, 3, 7))
                for b, start in enumerate(starts.tolist()):
                    z = z0[b : b + 1]
                    for j in range(k):
                        z = model.step(z, model.encode_stimulus(stim[start + j : start + j + 1]))
                        torch.testing.assert_close(batched[j, b], z[0])

    def test_train_forward_matches_rollout_convention(self) -> None:
        """Without a controller, train_forward's pred[k] = decode(z_k) with the rollout's z_k."""
        model = tiny_model()
        model.eval()
        x, stim, phases = chunk()
        t0 = torch.tensor([8, 20])
        xc, mc = gather_window(x, t0, -5, 6, phases=phases, tu=TU)
        rows = t0.unsqueeze(0) + torch.arange(5).unsqueeze(1)
        out = model.train_forward(xc, mc, stim[rows], sample=False)
        z0, _ = model.initial_state(xc, mc, sample=False)
        zs = model.rollout(z0, model.encode_stimulus(stim[rows]))
        torch.testing.assert_close(out.states[1:], zs)
        torch.testing.assert_close(out.pred[0], model.decode(z0))
        torch.testing.assert_close(out.pred[1:], model.decode(zs))

    def test_controller_inputs_exist_only_in_training(self) -> None:
        model = tiny_model(co_dim=2)
        model.eval()
        x, stim, phases = chunk()
        t0 = torch.tensor([8, 20])
        xc, mc = gather_window(x, t0, -5, 6, phases=phases, tu=TU)
        xf, mf = gather_window(x, t0, 1, 5, phases=phases, tu=TU)
        rows = t0.unsqueeze(0) + torch.arange(5).unsqueeze(1)
        out = model.train_forward(xc, mc, stim[rows], x_fut=xf, mask_fut=mf, sample=False)
        assert out.inferred is not None
        self.assertEqual(tuple(out.inferred.shape), (5, 2, 2))
        self.assertGreater(float(out.kl_co.detach()), 0.0)
        open_loop = model.rollout(
            model.initial_state(xc, mc, sample=False)[0], model.encode_stimulus(stim[rows])
        )
        self.assertFalse(torch.allclose(out.states[1:], open_loop))
        with self.assertRaises(ValueError):
            model.train_forward(xc, mc, stim[rows], sample=False)


class TestRegularisers(unittest.TestCase):
    def test_ramp(self) -> None:
        self.assertEqual(
            [ramp_weight(s, 2, 3) for s in range(7)], [0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
        )
        self.assertEqual([ramp_weight(s, 2, 0) for s in range(4)], [0.0, 0.0, 1.0, 1.0])
        w = loss_weights(LFADSLossConfig(kl_start=0, kl_increase=9, l2_start=5, l2_increase=0), 4)
        self.assertEqual((w.kl, w.l2), (0.5, 0.0))

    @torch.no_grad()
    def test_recurrent_l2_by_hand(self) -> None:
        model = tiny_model(co_dim=2)
        cfg = LFADSLossConfig(l2_gen_scale=0.5, l2_con_scale=2.0)
        wg, wc = model.generator.weight_hh, model.controller.weight_hh  # type: ignore[union-attr]
        by_hand = (0.5 * 0.5 * wg.square().sum() + 2.0 * 0.5 * wc.square().sum()) / (
            wg.numel() + wc.numel()
        )
        self.assertAlmostEqual(float(recurrent_l2(model, cfg)), float(by_hand), places=12)
        only_gen = LFADSLossConfig(l2_gen_scale=0.5, l2_con_scale=0.0)
        self.assertAlmostEqual(
            float(recurrent_l2(model, only_gen)),
            float(0.25 * wg.square().sum() / wg.numel()),
            places=12,
        )

    @torch.no_grad()
    def test_total_is_the_sum_of_weighted_terms(self) -> None:
        model = tiny_model(co_dim=2)
        model.eval()
        x, stim, phases = chunk()
        cfg = LFADSLossConfig(kl_ic_scale=0.1, kl_co_scale=0.2)
        gen = torch.Generator().manual_seed(0)
        full = lfads_batch_loss(
            model,
            x,
            stim,
            phases,
            TU,
            torch.tensor([10, 30]),
            6,
            cfg,
            LossWeights(1.0, 1.0),
            generator=gen,
        )
        gen = torch.Generator().manual_seed(0)
        half = lfads_batch_loss(
            model,
            x,
            stim,
            phases,
            TU,
            torch.tensor([10, 30]),
            6,
            cfg,
            LossWeights(0.5, 0.0),
            generator=gen,
        )
        self.assertEqual(set(full), {"total", "nll", "kl", "kl_co", "l2"})
        torch.testing.assert_close(
            full["total"], full["nll"] + full["kl"] + full["kl_co"] + full["l2"]
        )
        torch.testing.assert_close(half["kl"], 0.5 * full["kl"])
        torch.testing.assert_close(half["kl_co"], 0.5 * full["kl_co"])
        self.assertEqual(float(half["l2"]), 0.0)
        self.assertGreater(float(full["kl"]), 0.0)

    def test_window_bounds_are_checked(self) -> None:
        model = tiny_model()
        x, stim, phases = chunk(30)
        with self.assertRaises(ValueError):
            lfads_batch_loss(model, x, stim, phases, TU, torch.tensor([25]), 5, LFADSLossConfig())


def linear_dynamical_system(rows: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A 4-d damped-rotation LDS driven by a white-noise 2-d stimulus, read out to n neurons.

    The future is predictable from the stimulus alone given the state, so a good open-loop
    forecaster beats holding the start frame (which decorrelates within ~20 steps) by far.
    """
    g = torch.Generator().manual_seed(seed)

    def rot(angle: float, radius: float) -> torch.Tensor:
        c, s = math.cos(angle), math.sin(angle)
        return radius * torch.tensor([[c, -s], [s, c]])

    a = torch.block_diag(rot(0.12, 0.97), rot(0.3, 0.95))
    b = 0.5 * torch.randn(4, 2, generator=g)
    c = torch.randn(n, 4, generator=g)
    stim = torch.randn(rows, 2, generator=g)
    z = torch.zeros(4)
    zs = []
    for t in range(rows):
        zs.append(z)
        z = a @ z + b @ stim[t]
    x = torch.stack(zs) @ c.T + 0.05 * torch.randn(rows, n, generator=g)
    return (x - x.mean(0)) / x.std(0), stim


class TestLearning(unittest.TestCase):
    def test_training_fits_a_staggered_lds_and_forecasts_open_loop(self) -> None:
        n, tu, window, horizon, steps = 30, 5, 15, 20, 200
        x, stim = linear_dynamical_system(3200, n, seed=1)
        phases = torch.randint(0, tu, (n,), generator=torch.Generator().manual_seed(2))
        train_x, train_s, test_x, test_s = x[:2400], stim[:2400], x[2400:], stim[2400:]
        torch.manual_seed(0)
        cfg = LFADSModelConfig(
            encoder_window=window, ic_enc_dim=24, ic_dim=12, gen_dim=24, factor_dim=8,
            dropout_rate=0.0, cd_rate=0.3,
        )  # fmt: skip
        model = LFADSModel(n, 2, cfg)
        loss_cfg = LFADSLossConfig(kl_increase=50, l2_increase=50)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        val_t0 = torch.arange(window, 2400 - horizon - 1, 97)

        def observed_mse() -> float:
            """MSE over every observed entry of rows t0+1..t0+H (eval mode, IC mean)."""
            model.eval()
            with torch.no_grad():
                xc, mc = gather_window(train_x, val_t0, 1 - window, window, phases=phases, tu=tu)
                xf, mf = gather_window(train_x, val_t0, 1, horizon, phases=phases, tu=tu)
                rows = val_t0.unsqueeze(0) + torch.arange(horizon).unsqueeze(1)
                pred = model.train_forward(xc, mc, train_s[rows], sample=False).pred[1:]
                err = torch.where(mf, pred - torch.where(mf, xf, 0.0), 0.0)
                out = float(err.square().sum() / mf.sum())
            model.train()
            return out

        def rollout_mse() -> tuple[float, float]:
            """200-step open-loop MSE on held-out rows, and the start-frame-held baseline's."""
            model.eval()
            with torch.no_grad():
                starts = torch.arange(window, 790 - 200, 30)
                z0, _ = model.initial_state(
                    *gather_window(test_x, starts, 1 - window, window, phases=phases, tu=tu),
                    sample=False,
                )
                rows = starts.unsqueeze(0) + torch.arange(200).unsqueeze(1)
                truth = test_x[rows + 1]
                pred = model.decode(model.rollout(z0, model.encode_stimulus(test_s[rows])))
                mse = float((pred - truth).square().mean())
                const = float((test_x[starts].unsqueeze(0) - truth).square().mean())
            return mse, const

        before = observed_mse()
        gen = torch.Generator().manual_seed(3)
        for step in range(steps):
            t0 = torch.randint(0, 2400 - horizon - 1, (16,), generator=gen)
            out = lfads_batch_loss(
                model, train_x, train_s, phases, tu, t0, horizon, loss_cfg,
                loss_weights(loss_cfg, step), generator=gen,
            )  # fmt: skip
            self.assertTrue(torch.isfinite(out["total"]))
            opt.zero_grad()
            out["total"].backward()
            opt.step()
        after = observed_mse()
        mse, const = rollout_mse()
        # Data are z-scored: predicting the mean gives ~1, holding the start frame ~2.
        self.assertLess(after, 0.3 * before, (before, after))
        self.assertLess(mse, 0.25 * const, (mse, const))
        self.assertLess(mse, 0.5, (mse, const))
