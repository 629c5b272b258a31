"""EED model: MLPWithSkips shapes and size, zero-init identity, batched rollout, stimulus AE."""

from __future__ import annotations

import unittest

import torch

from latent_tune.model.config import (
    EvolverConfig,
    MLPConfig,
    ModelConfig,
    StimulusEncoderConfig,
)
from latent_tune.model.eed import EEDModel
from latent_tune.model.mlp import MLPWithSkips
from latent_tune.model.stimulus_ae import StimulusAutoEncoder

SMALL = ModelConfig(
    latent_dims=8,
    encoder=MLPConfig(hidden_units=16, hidden_layers=1),
    stimulus_encoder=StimulusEncoderConfig(latent_dims=4, hidden_units=6, hidden_layers=3),
    evolver=EvolverConfig(hidden_units=12, hidden_layers=2),
)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class TestMLPWithSkips(unittest.TestCase):
    def test_shapes_and_param_count(self) -> None:
        for in_dims, out_dims, h, layers in [
            (5, 3, 4, 0),
            (5, 3, 4, 1),
            (7, 2, 6, 2),
            (1736, 64, 64, 3),
            (13741, 256, 256, 1),
            (256, 13741, 256, 1),
        ]:
            with self.subTest(in_dims=in_dims, out_dims=out_dims, h=h, layers=layers):
                mlp = MLPWithSkips(in_dims, out_dims, h, layers)
                self.assertEqual(
                    n_params(mlp), MLPWithSkips.param_count(in_dims, out_dims, h, layers)
                )
                y = mlp(torch.randn(3, 2, in_dims))
                self.assertEqual(y.shape, (3, 2, out_dims))
                self.assertIsInstance(mlp.output_layer, torch.nn.Linear)

    def test_formula_matches_lab_spec(self) -> None:
        # the MLPWithSkips formula of docs/method.md, section 5, written out literally
        def lab(d: int, o: int, h: int, n: int) -> int:
            return (
                n * (d * h + h)
                + (d + h) * h
                + h
                + (n - 1) * (2 * h * h + h)
                + (d * h + h)
                + (2 * h * o + o)
            )

        for args in [
            (13741, 256, 256, 1),
            (256, 13741, 256, 1),
            (320, 256, 256, 1),
            (1736, 64, 64, 3),
        ]:
            self.assertEqual(MLPWithSkips.param_count(*args), lab(*args))
        self.assertEqual(MLPWithSkips.param_count(5, 3, 4, 0), 18)  # one Linear
        self.assertEqual(n_params(MLPWithSkips(5, 3, 4, 0)), 18)

    def test_zero_hidden_layers_is_one_linear(self) -> None:
        mlp = MLPWithSkips(5, 3, 4, 0)
        x = torch.randn(2, 5)
        torch.testing.assert_close(mlp(x), mlp.output_layer(x))
        self.assertEqual(len(list(mlp.modules())), 4)  # self, ModuleList, output Linear, act

    def test_forward_matches_the_equations(self) -> None:
        torch.manual_seed(0)
        mlp = MLPWithSkips(5, 3, 4, 2, activation="tanh")
        x = torch.randn(7, 5)
        proj = [
            torch.nn.functional.linear(
                x,
                mlp.input_projection.weight[i * 4 : (i + 1) * 4],
                mlp.input_projection.bias[i * 4 : (i + 1) * 4],
            )
            for i in range(3)
        ]
        a = x
        for layer, p in zip(mlp.hidden, proj[:2]):
            a = torch.tanh(layer(torch.cat([a, p], -1)))
        torch.testing.assert_close(mlp(x), mlp.output_layer(torch.cat([a, proj[2]], -1)))


class TestEEDModel(unittest.TestCase):
    def test_lab_default_param_count(self) -> None:
        with torch.device("meta"):
            model = EEDModel(13741, 1736, ModelConfig())
        self.assertEqual(n_params(model), 19_090_861)
        self.assertEqual(EEDModel.param_count(13741, 1736), 19_090_861)
        self.assertEqual(n_params(model.encoder), 10_750_720)
        self.assertEqual(n_params(model.decoder), 7_312_045)
        self.assertEqual(n_params(model.evolver), 443_392)
        self.assertEqual(n_params(model.stimulus_encoder), 584_704)

    def test_shapes(self) -> None:
        model = EEDModel(20, 9, SMALL)
        x, s = torch.randn(3, 5, 20), torch.randn(3, 5, 9)
        z = model.encode(x)
        self.assertEqual(z.shape, (3, 5, 8))
        self.assertEqual(model.decode(z).shape, (3, 5, 20))
        self.assertEqual(model.encode_stimulus(s).shape, (3, 5, 4))
        self.assertEqual(EEDModel.param_count(20, 9, SMALL), n_params(model))

    def test_zero_init_is_identity_at_start(self) -> None:
        model = EEDModel(20, 9, SMALL)
        self.assertTrue(torch.all(model.evolver.output_layer.weight == 0))
        self.assertTrue(torch.all(model.evolver.output_layer.bias == 0))
        z, u = torch.randn(6, 8), torch.randn(6, 4)
        z_next, dz = model.step(z, u)
        self.assertTrue(torch.equal(z_next, z))
        self.assertTrue(torch.equal(dz, torch.zeros_like(z)))
        traj = model.rollout(z, torch.randn(50, 6, 4))
        self.assertEqual(traj.shape, (50, 6, 8))
        self.assertTrue(torch.equal(traj, z.expand(50, 6, 8)))

    def test_no_zero_init(self) -> None:
        cfg = SMALL.model_copy(update={"evolver": EvolverConfig(hidden_units=12, zero_init=False)})
        model = EEDModel(20, 9, cfg)
        z = torch.randn(4, 8)
        self.assertFalse(torch.equal(model.step(z, torch.randn(4, 4))[0], z))

    def test_batched_rollout_equals_sequential(self) -> None:
        torch.manual_seed(1)
        cfg = SMALL.model_copy(update={"evolver": EvolverConfig(hidden_units=12, zero_init=False)})
        model = EEDModel(20, 9, cfg).double()
        z0, u = torch.randn(5, 8, dtype=torch.float64), torch.randn(30, 5, 4, dtype=torch.float64)
        batched = model.rollout(z0, u)
        for b in range(5):
            z = z0[b : b + 1]
            for k in range(30):
                z = z + model.evolver(torch.cat([z, u[k, b : b + 1]], -1))
                torch.testing.assert_close(batched[k, b : b + 1], z)

    def test_empty_rollout(self) -> None:
        model = EEDModel(20, 9, SMALL)
        self.assertEqual(model.rollout(torch.randn(3, 8), torch.randn(0, 3, 4)).shape, (0, 3, 8))

    def test_stimulus_autoencoder_encoder_loads_into_eed(self) -> None:
        ae = StimulusAutoEncoder(9, SMALL.stimulus_encoder)
        s = torch.randn(11, 9)
        self.assertEqual(ae(s).shape, (11, 9))
        model = EEDModel(20, 9, SMALL)
        model.stimulus_encoder.load_state_dict(ae.encoder.state_dict())
        torch.testing.assert_close(model.encode_stimulus(s), ae.encode(s))

    def test_config_forbids_extra(self) -> None:
        with self.assertRaises(ValueError):
            ModelConfig.model_validate({"latent_dims": 8, "decoder": {}})
        with self.assertRaises(ValueError):
            EvolverConfig(activation="gelu")  # type: ignore[arg-type]


if __name__ == "__main__":
    unittest.main()
