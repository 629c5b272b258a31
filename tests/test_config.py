"""Training config: the lab's defaults, dotted overrides, one-line user errors."""

from __future__ import annotations

import tempfile
import unittest
from pathlib import Path

import yaml

from latent_tune.errors import UserInputError
from latent_tune.training.config_loading import (
    apply_overrides,
    flatten,
    load_config,
    parse_overrides,
    validate_config,
)
from latent_tune.training.eed_config import TrainConfig, config_paths

# The lab's training config written out in full (defaults: docs/method.md, section 7).
SKELETON = """
data:
  suite: null
  preset: demo
  quantity: voltage
  train_range: null
  val_range: null
  crossval: null
acquisition:
  mode: staggered_random
  seed: 653
  interpolation: linear
model:
  latent_dims: 256
  encoder: {hidden_units: 256, hidden_layers: 1}
  stimulus_encoder: {latent_dims: 64, hidden_units: 64, hidden_layers: 3}
  evolver: {hidden_units: 256, hidden_layers: 1, activation: tanh, zero_init: true}
loss:
  tv_coeff: 0.0
  aug: {coeff: 0.0, num_neurons: 0}
  l1: {encoder: 0.0, decoder: 0.0, evolver: 0.0}
  recon_weight: 1.0
training:
  time_units: 20
  evolve_multiple_steps: 5
  ems_warmup_epochs: 0
  recon_warmup_epochs: 0
  stimulus_ae: {enabled: false, epochs: 10, batch_size: 256, learning_rate: 1.0e-4}
  epochs: 100
  batch_size: 256
  learning_rate: 1.0e-5
  chunk_steps: 65536
  chunks_per_epoch: 14
  batches_per_chunk: 256
  grad_clip: 0.0
  seed: 234
  compile: false
  tf32: true
  masked_decode: true
  bf16: false
  ema_decay: 0.0
  lr_schedule: {type: constant, warmup_epochs: 0, min_factor: 0.1, step_epochs: 30, gamma: 0.5}
evaluation:
  every: 1
  seed: 0
  start_margin: 100
  test_fraction: 0.3333333333333333
  rollout_steps: 2000
  starts: 10
  divergence_threshold: 1.0
  penalty_factor: 10.0
  figures_every: 5
  fast: false
  bf16: false
"""


class ConfigTestCase(unittest.TestCase):
    def setUp(self) -> None:
        self._tmp = tempfile.TemporaryDirectory()
        self.tmp = Path(self._tmp.name)

    def tearDown(self) -> None:
        self._tmp.cleanup()

    def write(self, text: str | bytes, name: str = "cfg.yaml") -> Path:
        path = self.tmp / name
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text)
        return path

    def assertUserError(self, fn, file: Path | str | None, key: str | None) -> UserInputError:
        with self.assertRaises(UserInputError) as ctx:
            fn()
        err = ctx.exception
        self.assertEqual(str(err.file) if err.file is not None else None, file and str(file))
        self.assertEqual(err.key, key)
        self.assertNotIn("\n", str(err))
        return err


class TestDefaults(ConfigTestCase):
    def test_defaults_equal_design_skeleton(self) -> None:
        dumped = TrainConfig().model_dump(mode="json")
        self.assertEqual(dumped.pop("recipe"), "staggered")
        self.assertEqual(dumped, yaml.safe_load(SKELETON))

    def test_skeleton_file_loads_to_defaults(self) -> None:
        self.assertEqual(load_config(self.write(SKELETON)), TrainConfig())

    def test_minimal_file_uses_defaults(self) -> None:
        cfg = load_config(self.write("recipe: staggered\n"))
        self.assertEqual(cfg, TrainConfig())
        self.assertEqual(cfg.horizon, 100)

    def test_horizon_is_tu_times_ems(self) -> None:
        cfg = validate_config({"training": {"time_units": 7, "evolve_multiple_steps": 3}})
        self.assertEqual(cfg.horizon, 21)
        self.assertEqual(cfg.training.horizon, 21)

    def test_yaml_round_trip(self) -> None:
        cfg = validate_config(
            {
                "recipe": "aligned",
                "acquisition": {"mode": "time_aligned"},
                "data": {"train_range": [10, 500], "crossval": [{"name": "a", "range": [0, 9]}]},
                "loss": {"aug": {"coeff": 0.1, "num_neurons": 10}},
            }
        )
        again = TrainConfig.from_yaml_text(cfg.to_yaml())
        self.assertEqual(again, cfg)
        self.assertEqual(again.data.train_range, (10, 500))

    def test_flatten_and_paths(self) -> None:
        flat = flatten(TrainConfig())
        self.assertEqual(flat["training.time_units"], 20)
        self.assertEqual(flat["loss.aug.num_neurons"], 0)
        self.assertEqual(flat["model.evolver.activation"], "tanh")
        self.assertIsNone(flat["data.crossval"])
        paths = config_paths(TrainConfig())
        self.assertEqual(paths, set(flat))
        self.assertIn("training.stimulus_ae.learning_rate", paths)
        self.assertNotIn("training", paths)


class TestOverrides(ConfigTestCase):
    def test_dotted_overrides(self) -> None:
        path = self.write(SKELETON)
        cfg = load_config(
            path,
            [
                "training.time_units=10",
                "loss.tv_coeff=1e-3",  # YAML reads 1e-3 as a string; pydantic makes it a float
                "loss.aug.num_neurons=100",
                "model.evolver.activation=relu",
                "data.train_range=[100, 2000]",
                "recipe=aligned",
                "acquisition.mode=time_aligned",
            ],
        )
        self.assertEqual(cfg.training.time_units, 10)
        self.assertEqual(cfg.loss.tv_coeff, 1e-3)
        self.assertEqual(cfg.loss.aug.num_neurons, 100)
        self.assertEqual(cfg.model.evolver.activation, "relu")
        self.assertEqual(cfg.data.train_range, (100, 2000))
        self.assertEqual(cfg.recipe, "aligned")

    def test_override_creates_missing_sections(self) -> None:
        out = apply_overrides({"recipe": "staggered"}, {"loss.l1.evolver": 0.5})
        self.assertEqual(out, {"recipe": "staggered", "loss": {"l1": {"evolver": 0.5}}})

    def test_override_does_not_mutate_input(self) -> None:
        src = {"training": {"time_units": 20}}
        apply_overrides(src, {"training.time_units": 5})
        self.assertEqual(src, {"training": {"time_units": 20}})

    def test_whole_section_override(self) -> None:
        out = apply_overrides({}, {"loss.aug": {"coeff": 1.0, "num_neurons": 10}})
        self.assertEqual(validate_config(out).loss.aug.num_neurons, 10)

    def test_unknown_override_path(self) -> None:
        path = self.write(SKELETON)
        err = self.assertUserError(
            lambda: load_config(path, ["training.time_unit=3"]), path, "training.time_unit"
        )
        self.assertIn("unknown key", err.problem)
        self.assertUserError(
            lambda: apply_overrides({}, {"training.time_units.x": 1}, file="f.yaml"),
            "f.yaml",
            "training.time_units.x",
        )
        self.assertUserError(lambda: apply_overrides({}, {"nope": 1}, file="f"), "f", "nope")

    def test_override_into_non_mapping(self) -> None:
        self.assertUserError(
            lambda: apply_overrides({"loss": 3}, {"loss.tv_coeff": 1.0}, file="f"), "f", "loss"
        )

    def test_malformed_override(self) -> None:
        path = self.write(SKELETON)
        self.assertUserError(
            lambda: load_config(path, ["training.epochs"]), path, "training.epochs"
        )
        self.assertEqual(parse_overrides(["a.b=[1, 2]", "c="]), {"a.b": [1, 2], "c": None})

    def test_bad_override_value(self) -> None:
        path = self.write(SKELETON)
        err = self.assertUserError(
            lambda: load_config(path, ["training.time_units=0"]), path, "training.time_units"
        )
        self.assertIn("greater than or equal to 1", err.problem)


class TestErrors(ConfigTestCase):
    def test_unknown_key_in_file(self) -> None:
        path = self.write("training:\n  time_units: 20\n  learnig_rate: 0.1\n")
        err = self.assertUserError(lambda: load_config(path), path, "training.learnig_rate")
        self.assertIn("unknown key", err.problem)
        path = self.write("model:\n  encoder: {hidden_units: 8, skips: true}\n")
        self.assertUserError(lambda: load_config(path), path, "model.encoder.skips")

    def test_bad_values(self) -> None:
        cases = {
            "training.evolve_multiple_steps": {"training": {"evolve_multiple_steps": 0}},
            "training.learning_rate": {"training": {"learning_rate": -1.0}},
            "training.batch_size": {"training": {"batch_size": "many"}},
            "loss.tv_coeff": {"loss": {"tv_coeff": -1e-3}},
            "loss.aug.num_neurons": {"loss": {"aug": {"num_neurons": -1}}},
            "loss.l1.decoder": {"loss": {"l1": {"decoder": -0.1}}},
            "evaluation.penalty_factor": {"evaluation": {"penalty_factor": 1.0}},
            "evaluation.starts": {"evaluation": {"starts": 0}},
            "acquisition.mode": {"acquisition": {"mode": "sometimes"}},
            "recipe": {"recipe": "other"},
            "training.chunk_steps": {"training": {"chunk_steps": 100}},
        }
        for key, d in cases.items():
            with self.subTest(key=key):
                self.assertUserError(lambda d=d: validate_config(d, file="f.yaml"), "f.yaml", key)

    def test_ranges(self) -> None:
        for bad in ([5, 5], [7, 3], [-1, 4]):
            with self.subTest(bad=bad):
                with self.assertRaises(UserInputError) as ctx:
                    validate_config({"data": {"val_range": bad}}, file="f")
                self.assertTrue(ctx.exception.key.startswith("data.val_range"))
        with self.assertRaises(UserInputError) as ctx:
            validate_config({"data": {"crossval": [{"name": "x", "range": [9, 1]}]}}, file="f")
        self.assertTrue(ctx.exception.key.startswith("data.crossval.0.range"))
        self.assertEqual(validate_config({"data": {"val_range": [0, 1]}}).data.val_range, (0, 1))

    def test_recipe_rules(self) -> None:
        self.assertUserError(
            lambda: validate_config({"acquisition": {"mode": "all_time_points"}}, file="f"),
            "f",
            "acquisition.mode",
        )
        self.assertUserError(
            lambda: validate_config({"recipe": "aligned"}, file="f"), "f", "acquisition.mode"
        )
        ok = validate_config({"recipe": "aligned", "acquisition": {"mode": "all_time_points"}})
        self.assertEqual(ok.recipe, "aligned")
        self.assertUserError(
            lambda: validate_config(
                {"training": {"time_units": 1, "evolve_multiple_steps": 1}}, file="f"
            ),
            "f",
            "training.evolve_multiple_steps",
        )
        self.assertUserError(
            lambda: validate_config({"evaluation": {"rollout_steps": 100}}, file="f"),
            "f",
            "evaluation.rollout_steps",
        )

    def test_garbage_files(self) -> None:
        cases = {
            "empty.yaml": "",
            "comment.yaml": "# nothing\n",
            "list.yaml": "- 1\n- 2\n",
            "scalar.yaml": "hello\n",
            "broken.yaml": "training: {time_units: [1, 2\n",
            "tabs.yaml": "a:\n\t- b\n",
            "binary.yaml": b"\xff\xfe\x00garbage\x80",
        }
        syntax = {"broken.yaml": "line 2", "tabs.yaml": "line 2"}  # the error's line
        for name, text in cases.items():
            with self.subTest(name=name):
                path = self.write(text, name)
                key = syntax.get(name)
                err = self.assertUserError(lambda path=path: load_config(path), path, key)
                self.assertTrue(str(err).startswith(f"{path}: {key or '-'}: "))

    def test_deeply_nested_override_value(self) -> None:
        """`--set key=[[[[...` was a RecursionError traceback; now one line naming the key."""
        path = self.write(yaml.safe_dump({"recipe": "staggered"}), "ok.yaml")
        deep = "training.epochs=" + "[" * 5000
        err = self.assertUserError(lambda: load_config(path, [deep]), path, "training.epochs")
        self.assertIn("nested deeper", str(err))

    def test_missing_file(self) -> None:
        path = self.tmp / "nope.yaml"
        self.assertUserError(lambda: load_config(path), path, None)

    def test_validate_non_mapping(self) -> None:
        self.assertUserError(lambda: validate_config([1], file="f"), "f", None)  # type: ignore[arg-type]


if __name__ == "__main__":
    unittest.main()
