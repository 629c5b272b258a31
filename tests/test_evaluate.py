"""Rollout evaluation: metrics vs sequential references, baselines, stability, objective."""

from __future__ import annotations

import math
import unittest

import torch

from latent_tune.data.acquisition import make_acquisition
from latent_tune.data.interpolation import interpolate_staggered
from latent_tune.model.config import ModelConfig
from latent_tune.model.eed import EEDModel
from latent_tune.training.evaluate import (
    STABILITY_PREFIX,
    DatasetEval,
    crossval_intervening_mse,
    crossval_objective,
    evaluate_dataset,
    stability_metrics,
)

N, S, T = 7, 3, 200
P = STABILITY_PREFIX


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
    return EEDModel(N, S, cfg).double()


def smooth_data(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(T, dtype=torch.float64).unsqueeze(1)
    freq = 0.02 + 0.1 * torch.rand(1, N, generator=g, dtype=torch.float64)
    x = 0.3 * torch.sin(freq * t + torch.rand(1, N, generator=g, dtype=torch.float64) * 6)
    stim = torch.randn(T, S, generator=g, dtype=torch.float64)
    return x, stim


def fake_eval(mse: float, const: float, inter: float, first: float, finite: bool = True):
    return DatasetEval(
        metrics={
            "mse_overall": mse,
            "constant_mse_overall": const,
            f"{P}mse_intervening": inter,
            f"{P}first_divergence_step": first,
        },
        finite=finite,
        rollout_steps=100,
        tu=4,
        horizon=8,
        starts=torch.zeros(1, dtype=torch.long),
        curves=torch.zeros(1, 100),
        constant_curve=torch.zeros(100),
        short={},
        best_start=0,
        worst_start=0,
    )


class TestStabilityMetrics(unittest.TestCase):
    def test_windows_and_divergence(self) -> None:
        m = torch.tensor([0.01 * (k + 1) for k in range(12)] + [2.0] + [0.5] * 7)
        out = stability_metrics(m, tu=2, horizon=6, threshold=1.0)
        self.assertEqual(out[f"{P}first_divergence_step"], 12.0)
        self.assertAlmostEqual(out[f"{P}mse_at_loss_points"], (0.02 + 0.04 + 0.06) / 3, places=6)
        self.assertAlmostEqual(out[f"{P}mse_intervening"], (0.01 + 0.03 + 0.05) / 3, places=6)
        self.assertAlmostEqual(out[f"{P}mse_beyond_training"], sum(range(7, 13)) / 600, places=6)
        self.assertAlmostEqual(out[f"{P}mse_max"], 0.12, places=6)
        self.assertAlmostEqual(out[f"{P}mse_final"], 0.5, places=6)

    def test_no_divergence(self) -> None:
        out = stability_metrics(torch.full((20,), 0.1), tu=4, horizon=8, threshold=1.0)
        self.assertEqual(out[f"{P}first_divergence_step"], 20.0)
        self.assertAlmostEqual(out[f"{P}mse_beyond_training"], 0.1, places=6)

    def test_nan_counts_as_divergence(self) -> None:
        m = torch.tensor([0.1, 0.2, 0.3, math.nan, 0.1, 0.1])
        out = stability_metrics(m, tu=2, horizon=4, threshold=1.0)
        self.assertEqual(out[f"{P}first_divergence_step"], 3.0)
        self.assertAlmostEqual(out[f"{P}mse_at_loss_points"], 0.2, places=6)
        self.assertAlmostEqual(out[f"{P}mse_intervening"], 0.2, places=6)
        self.assertTrue(math.isnan(out[f"{P}mse_beyond_training"]))
        self.assertAlmostEqual(out[f"{P}mse_final"], 0.1, places=6)

    def test_diverged_at_step_zero_and_tu_one(self) -> None:
        out = stability_metrics(torch.tensor([5.0, 0.1, 0.1]), tu=2, horizon=2, threshold=1.0)
        self.assertEqual(out[f"{P}first_divergence_step"], 0.0)
        self.assertEqual(out[f"{P}mse_max"], 5.0)
        self.assertEqual(out[f"{P}mse_intervening"], 5.0)
        out = stability_metrics(torch.full((5,), 0.1), tu=1, horizon=3, threshold=1.0)
        self.assertTrue(math.isnan(out[f"{P}mse_intervening"]))
        self.assertAlmostEqual(out[f"{P}mse_at_loss_points"], 0.1, places=6)


class TestEvaluateDataset(unittest.TestCase):
    def setUp(self) -> None:
        self.model = tiny_model()
        self.x, self.stim = smooth_data()
        self.tu = 4
        acq = make_acquisition("staggered_random", self.tu, N, seed=3)
        self.xi = interpolate_staggered(self.x, acq.phases, self.tu)
        self.starts = torch.tensor([5, 40, 77])
        self.steps = 60

    def run_eval(self, starts=None, **kw) -> DatasetEval:
        args = {
            "tu": self.tu,
            "horizon": 8,
            "rollout_steps": self.steps,
            "threshold": 1.0,
            "need_figures": False,
        }
        args.update(kw)
        starts = self.starts if starts is None else starts
        return evaluate_dataset(self.model, self.x, self.xi, self.stim, starts, **args)

    def sequential(self, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-start reference: (steps, N) predictions for times start+1 .. start+steps."""
        with torch.no_grad():
            z = self.model.encode(self.xi[start].unsqueeze(0))
            preds = []
            for k in range(self.steps):
                z, _ = self.model.step(z, self.model.encode_stimulus(self.stim[start + k][None]))
                preds.append(self.model.decode(z)[0])
        pred = torch.stack(preds)
        return pred, self.x[start + 1 : start + self.steps + 1]

    def test_batched_equals_sequential(self) -> None:
        ev = self.run_eval(block_steps=7)
        self.assertTrue(ev.finite)
        self.assertEqual(tuple(ev.curves.shape), (3, self.steps))
        ref = torch.stack(
            [((p - t) ** 2).mean(1) for p, t in map(self.sequential, self.starts.tolist())]
        )
        torch.testing.assert_close(ev.curves.double(), ref, rtol=1e-5, atol=1e-9)
        self.assertAlmostEqual(ev.metrics["mse_overall"], float(ref.mean()), places=6)
        self.assertAlmostEqual(ev.metrics["mse_fit_window"], float(ref[:, :8].mean()), places=6)
        self.assertAlmostEqual(ev.metrics["mse_beyond"], float(ref[:, 8:].mean()), places=6)
        worst = stability_metrics(ref.max(0).values, self.tu, 8, 1.0)
        for key, val in worst.items():
            self.assertAlmostEqual(ev.metrics[key], val, places=6, msg=key)
        self.assertEqual(ev.best_start, int(ref.mean(1).argmin()))
        self.assertEqual(ev.worst_start, int(ref.mean(1).argmax()))
        # Block size and batching over starts do not change anything.
        one_block = self.run_eval()
        torch.testing.assert_close(one_block.curves, ev.curves)
        for i, s in enumerate(self.starts.tolist()):
            single = self.run_eval(starts=torch.tensor([s]), block_steps=13)
            torch.testing.assert_close(single.curves[0], ev.curves[i], rtol=1e-6, atol=1e-9)
        for value in ev.metrics.values():
            self.assertIsInstance(value, float)

    def test_one_dead_start_does_not_stop_the_others(self) -> None:
        self.xi = self.xi.clone()
        self.xi[int(self.starts[1])] = math.inf  # that start's latent state is NaN/inf
        ev = self.run_eval(block_steps=7)
        self.assertFalse(ev.finite)
        self.assertTrue(bool(torch.isnan(ev.curves[1]).all()))
        for i in (0, 2):
            pred, truth = self.sequential(int(self.starts[i]))
            ref = ((pred - truth) ** 2).mean(1)
            torch.testing.assert_close(ev.curves[i].double(), ref, rtol=1e-5, atol=1e-9)
        self.assertEqual(ev.worst_start, 1)
        self.assertTrue(math.isnan(ev.metrics["mse_overall"]))
        self.assertTrue(math.isfinite(ev.metrics["constant_mse_overall"]))

    def test_figure_data(self) -> None:
        trace = torch.tensor([0, 4])
        ev = self.run_eval(need_figures=True, trace_neurons=trace, block_steps=9)
        for label, idx in (("best", ev.best_start), ("worst", ev.worst_start)):
            pred, truth = self.sequential(int(self.starts[idx]))
            sc = ev.scatter[label]
            torch.testing.assert_close(
                sc["var_truth"].double(), truth.var(0, unbiased=False), rtol=1e-5, atol=1e-9
            )
            torch.testing.assert_close(
                sc["var_error"].double(),
                (pred - truth).var(0, unbiased=False),
                rtol=1e-5,
                atol=1e-9,
            )
            tr = ev.traces[label]
            torch.testing.assert_close(
                tr["prediction"].double(), pred[:, trace], rtol=1e-5, atol=1e-9
            )
            torch.testing.assert_close(tr["truth"].double(), truth[:, trace], rtol=1e-6, atol=1e-9)
        self.assertEqual(ev.trace_neurons.tolist(), [0, 4])
        self.assertEqual(self.run_eval().scatter, {})

    def test_model_mode_restored_and_no_grad(self) -> None:
        self.model.train()
        ev = self.run_eval()
        self.assertTrue(self.model.training)
        self.assertFalse(ev.curves.requires_grad)

    def test_bad_starts(self) -> None:
        with self.assertRaises(ValueError):
            self.run_eval(starts=torch.tensor([T - self.steps]))
        with self.assertRaises(ValueError):
            self.run_eval(starts=torch.tensor([-1]))


class TestBaselines(unittest.TestCase):
    def test_linear_ramp(self) -> None:
        tu, steps = 4, 100
        slope = torch.linspace(-1.0, 1.0, N, dtype=torch.float64) / T
        offset = torch.linspace(0.2, -0.3, N, dtype=torch.float64)
        x = torch.arange(T, dtype=torch.float64).unsqueeze(1) * slope + offset
        acq = make_acquisition("staggered_random", tu, N, seed=7)
        xi = interpolate_staggered(x, acq.phases, tu)
        stim = torch.zeros(T, S, dtype=torch.float64)
        starts = torch.tensor([8, 41, 77])
        ev = evaluate_dataset(
            tiny_model(zero_init=True),
            x,
            xi,
            stim,
            starts,
            tu=tu,
            horizon=12,
            rollout_steps=steps,
            threshold=1.0,
            need_figures=False,
            block_steps=17,
        )
        k = torch.arange(1, steps + 1, dtype=torch.float64)
        const = ((k.unsqueeze(1) * slope) ** 2).mean(1)  # index k is time start + k + 1
        short = min(250, steps)
        torch.testing.assert_close(ev.constant_curve.double(), const, rtol=1e-5, atol=1e-12)
        torch.testing.assert_close(ev.short["constant"].double(), const[:short], rtol=1e-5, atol=0)
        torch.testing.assert_close(
            ev.short["constant_interp"].double(), const[:short], rtol=1e-5, atol=1e-12
        )
        self.assertLess(float(ev.short["linear"].abs().max()), 1e-20)
        self.assertLess(float(ev.short["staggered"].abs().max()), 1e-20)
        self.assertLess(ev.metrics["linear_interp_mse_overall"], 1e-20)
        self.assertLess(ev.metrics["staggered_interp_mse_overall"], 1e-20)
        self.assertAlmostEqual(ev.metrics["constant_mse_overall"], float(const.mean()), places=9)

    def test_linear_baseline_zero_exactly_at_loss_points(self) -> None:
        # A non-linear signal: the linear baseline is exact only at anchors, i.e. at indices
        # m*tu - 1, the same indices as the model curve's training points.
        tu, steps = 5, 40
        x, stim = smooth_data()
        ev = evaluate_dataset(
            tiny_model(),
            x,
            x,
            stim,
            torch.tensor([10, 60]),
            tu=tu,
            horizon=10,
            rollout_steps=steps,
            threshold=1.0,
            need_figures=False,
        )
        lin = ev.short["linear"]
        idx = torch.arange(steps)
        at_anchor = (idx + 1) % tu == 0
        self.assertTrue(bool((lin[at_anchor] == 0).all()))
        self.assertTrue(bool((lin[~at_anchor] > 0).all()))
        # tu == 1: every step is an anchor.
        ev1 = evaluate_dataset(
            tiny_model(),
            x,
            x,
            stim,
            torch.tensor([10]),
            tu=1,
            horizon=3,
            rollout_steps=steps,
            threshold=1.0,
            need_figures=False,
        )
        self.assertEqual(ev1.metrics["linear_interp_mse_overall"], 0.0)


class TestObjective(unittest.TestCase):
    def test_diverging_model_is_penalised(self) -> None:
        model = tiny_model()
        with torch.no_grad():
            model.evolver.output_layer.weight.fill_(1e6)
            model.evolver.output_layer.bias.fill_(1e6)
        x, stim = smooth_data()
        evals = {}
        for name, start in (("a", 10), ("b", 50)):
            evals[name] = evaluate_dataset(
                model,
                x,
                x,
                stim,
                torch.tensor([start, start + 3]),
                tu=4,
                horizon=8,
                rollout_steps=100,
                threshold=1.0,
                need_figures=True,
                trace_neurons=torch.tensor([1]),
            )
        for ev in evals.values():
            self.assertFalse(ev.finite)
            self.assertLess(ev.metrics[f"{P}first_divergence_step"], 100)
        out = crossval_objective(evals, penalty_factor=10.0)
        expect = sum(10.0 * ev.metrics["constant_mse_overall"] for ev in evals.values()) / 2
        self.assertTrue(out["diverged"])
        self.assertAlmostEqual(out["crossval_rollout_mse"], expect, places=9)
        self.assertTrue(math.isfinite(out["crossval_intervening_mse"]))
        self.assertAlmostEqual(out["crossval_intervening_mse"], expect, places=9)

    def test_healthy_model_not_diverged(self) -> None:
        x, stim = smooth_data()
        ev = evaluate_dataset(
            tiny_model(zero_init=True),
            x,
            x,
            stim,
            torch.tensor([10, 30]),
            tu=4,
            horizon=8,
            rollout_steps=100,
            threshold=1.0,
            need_figures=False,
        )
        self.assertTrue(ev.finite)
        out = crossval_objective({"a": ev}, penalty_factor=1000.0)
        self.assertFalse(out["diverged"])
        self.assertEqual(out["crossval_rollout_mse"], ev.metrics["mse_overall"])
        self.assertEqual(out["crossval_intervening_mse"], ev.metrics[f"{P}mse_intervening"])

    def test_objective_rules(self) -> None:
        good = fake_eval(mse=0.5, const=1.0, inter=0.1, first=100)
        worse = fake_eval(mse=20.0, const=1.0, inter=0.2, first=100)  # > 10 x constant
        nan = fake_eval(mse=math.nan, const=2.0, inter=math.nan, first=3, finite=False)
        late = fake_eval(mse=0.8, const=1.0, inter=0.3, first=99)  # crossed threshold once
        out = crossval_objective({"g": good, "w": worse}, 10.0)
        self.assertEqual(out["crossval_rollout_mse"], (0.5 + 10.0) / 2)
        self.assertEqual(out["crossval_intervening_mse"], (0.1 + 10.0) / 2)
        self.assertTrue(out["diverged"])
        out = crossval_objective({"g": good, "n": nan}, 10.0)
        self.assertEqual(out["crossval_rollout_mse"], (0.5 + 20.0) / 2)
        self.assertTrue(out["diverged"])
        out = crossval_objective({"g": good, "l": late}, 10.0)
        self.assertAlmostEqual(out["crossval_rollout_mse"], 0.65)
        self.assertTrue(out["diverged"])
        out = crossval_objective({"g": good}, 10.0)
        self.assertEqual(
            out, {"crossval_rollout_mse": 0.5, "crossval_intervening_mse": 0.1, "diverged": False}
        )
        self.assertEqual(crossval_intervening_mse({"g": good, "l": late}, 10.0), 0.2)
        with self.assertRaises(ValueError):
            crossval_objective({}, 10.0)


if __name__ == "__main__":
    unittest.main()
