"""Search-space validation (no Ray): every bad space -> one line naming file and key, exit 2,
before Ray starts, nothing written. Plus the PBT explore rule, the stopper and --set."""

from __future__ import annotations

import contextlib
import io
import math
import os
import tempfile
import unittest
from pathlib import Path
from unittest import mock

import ray
import yaml
from ray.tune.schedulers import PopulationBasedTraining
from ray.tune.schedulers.pb2 import PB2

from latent_tune.errors import UserInputError
from latent_tune.search import main
from latent_tune.tune.schedulers import (
    BoundedExplore,
    ExploreSpec,
    build_scheduler,
    explore_specs,
    pb2_bounds,
)
from latent_tune.tune.space import apply_sets, parse_space
from latent_tune.tune.stoppers import SearchStopper

GOOD = {
    "name": "t",
    "trainable": "eed_staggered",
    "base": "eed_staggered_tiny.yaml",
    "scheduler": {"type": "asha", "grace_period": 1},
    "searcher": {"type": "optuna", "seed": 0},
    "space": {
        "training.learning_rate": {"loguniform": [1.0e-4, 1.0e-2]},
        "training.time_units": {"choice": [5, 10]},
    },
    "trials": {"num_samples": 2},
}


def _with(path: str, value, base: dict | None = None) -> dict:
    d = yaml.safe_load(yaml.safe_dump(base or GOOD))
    node = d
    parts = path.split("/")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    if value is _DEL:
        node.pop(parts[-1], None)
    else:
        node[parts[-1]] = value
    return d


_DEL = object()

# (description, space dict or raw text, expected key path in the error)
BAD_CASES = [
    ("unknown top key", _with("colour", "red"), "colour"),
    ("missing space", _with("space", _DEL), "space"),
    ("empty space", _with("space", {}), "space"),
    ("unknown scheduler", _with("scheduler", {"type": "hyperband"}), "scheduler"),
    (
        "asha unknown key",
        _with("scheduler/perturbation_interval", 3),
        "scheduler.perturbation_interval",
    ),
    ("asha bad rf", _with("scheduler/reduction_factor", 1), "scheduler.reduction_factor"),
    (
        "two distributions",
        _with("space/loss.tv_coeff", {"uniform": [0, 1], "choice": [1]}),
        "space.loss.tv_coeff",
    ),
    ("no distribution", _with("space/loss.tv_coeff", {"bounds": [0, 1]}), "space.loss.tv_coeff"),
    ("low >= high", _with("space/loss.tv_coeff", {"uniform": [1, 0]}), "space.loss.tv_coeff"),
    (
        "loguniform <= 0",
        _with("space/loss.tv_coeff", {"loguniform": [0, 1]}),
        "space.loss.tv_coeff",
    ),
    (
        "unknown entry key",
        _with("space/loss.tv_coeff", {"uniform": [0, 1], "step": 2}),
        "space.loss.tv_coeff.step",
    ),
    (
        "path not in config",
        _with("space/training.learnin_rate", {"uniform": [0.1, 0.2]}),
        "space.training.learnin_rate",
    ),
    ("section not leaf", _with("space/loss.aug", {"choice": [1, 2]}), "space.loss.aug"),
    (
        "value outside config validation",
        _with("space/loss.tv_coeff", {"uniform": [-1.0, 1.0]}),
        "space.loss.tv_coeff",
    ),
    (
        "choice breaks config",
        _with("space/acquisition.mode", {"choice": ["all_time_points"]}),
        "space.acquisition.mode",
    ),
    (
        "pbt with optuna",
        _with("scheduler", {"type": "pbt", "perturbation_interval": 2}),
        "searcher.type",
    ),
    (
        "pbt burn-in off boundary",
        _with(
            "searcher/type",
            "random",
            _with("scheduler", {"type": "pbt", "perturbation_interval": 2, "burn_in": 3}),
        ),
        "scheduler",
    ),
    (
        "grid with optuna",
        _with("space/loss.tv_coeff", {"grid": [0.0, 0.1]}),
        "space.loss.tv_coeff.grid",
    ),
    (
        "explore weight outside pbt",
        _with("space/loss.tv_coeff", {"uniform": [0, 1], "explore_weight": 0.3}),
        "space.loss.tv_coeff.explore_weight",
    ),
    ("bad override key", _with("overrides", {"training.epoch": 3}), "overrides.training.epoch"),
    ("bad override value", _with("overrides", {"training.epochs": -1}), "training.epochs"),
    ("unknown trainable", _with("trainable", "no_such_recipe"), "trainable"),
    ("trainable not importable", _with("trainable", "nosuchpkg.mod:train"), "trainable"),
    ("missing base", _with("base", "nope.yaml"), "base"),
    ("num_samples 0", _with("trials/num_samples", 0), "trials.num_samples"),
    ("keep < 1", _with("checkpoint", {"keep": 0}), "checkpoint.keep"),
    (
        "pbt checkpoint off boundary",
        _with(
            "checkpoint",
            {"every": 3},
            _with(
                "searcher/type",
                "random",
                _with("scheduler", {"type": "pbt", "perturbation_interval": 2}),
            ),
        ),
        "checkpoint.every",
    ),
    ("negative gpu", _with("resources", {"gpu": -1}), "resources.gpu"),
    ("bad name", _with("name", "a b/c"), "name"),
    ("not a mapping", "- 1\n- 2\n", "-"),
    ("not yaml", "space: [unclosed\n", "line"),
    ("empty file", "", "-"),
]


class SpaceErrors(unittest.TestCase):
    """Each bad case: exit 2, one stderr line `<file>: <key>: <problem>`, no Ray, no files."""

    def _run(self, content, extra=()) -> tuple[int, str, Path]:
        tmp = Path(tempfile.mkdtemp(prefix="lt-space-"))
        f = tmp / "space.yaml"
        if isinstance(content, bytes):
            f.write_bytes(content)
        else:
            f.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
        err = io.StringIO()
        cwd = os.getcwd()
        os.chdir(tmp)
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                rc = main([str(f), "--storage", str(tmp / "res"), *extra])
        finally:
            os.chdir(cwd)
        return rc, err.getvalue(), tmp

    def test_bad_cases(self) -> None:
        for desc, content, key in BAD_CASES:
            with self.subTest(desc):
                rc, err, tmp = self._run(content)
                self.assertEqual(rc, 2, f"{desc}: {err}")
                lines = err.strip().splitlines()
                self.assertEqual(len(lines), 1, err)
                self.assertTrue(lines[0].startswith(str(tmp / "space.yaml") + ": "), lines[0])
                self.assertIn(key, lines[0].split(": ")[1], lines[0])
                self.assertFalse(ray.is_initialized())
                self.assertEqual(sorted(p.name for p in tmp.iterdir()), ["space.yaml"])

    def test_non_utf8(self) -> None:
        rc, err, _ = self._run(b"name: \xff\xfe\n")
        self.assertEqual(rc, 2)
        self.assertIn("UTF-8", err)

    def test_bad_set(self) -> None:
        rc, err, _ = self._run(GOOD, ["--set", "trials.num_samples=0"])
        self.assertEqual(rc, 2)
        self.assertIn("trials.num_samples", err)
        rc, err, _ = self._run(GOOD, ["--set", "novalue"])
        self.assertEqual((rc, err.split(": ")[0]), (2, "--set"))

    def test_missing_space_file(self) -> None:
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            rc = main(["/nonexistent/nothing_here.yaml", "--dry-run"])
        self.assertEqual(rc, 2)
        self.assertIn("nothing_here.yaml", err.getvalue())

    def test_lab_scale_space_needs_a_suite(self) -> None:
        """stag.yaml (lab scale) never starts a ~110 GB simulation: exit 2 before Ray."""
        with tempfile.TemporaryDirectory() as tmp:
            err = io.StringIO()
            env = {"LATENT_TUNE_DATA": str(Path(tmp) / "cache")}
            with mock.patch.dict(os.environ, env), contextlib.redirect_stderr(err):
                rc = main(["stag.yaml", "--storage", str(Path(tmp) / "res")])
            self.assertEqual(rc, 2)
            self.assertIn("stag.yaml: overrides.data.suite: the 'lab' preset", err.getvalue())
            self.assertEqual(list(Path(tmp).iterdir()), [])
        self.assertFalse(ray.is_initialized())

    def test_dry_run_and_lookup(self) -> None:
        """`spaces/stag.yaml` finds the bundled file; every shipped space validates."""
        for name in ("stag", "stag_pbt", "aligned", "stag_quick"):
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                rc = main([f"spaces/{name}.yaml", "--dry-run", "--storage", "/tmp/lt-none"])
            self.assertEqual(rc, 0, name)
            self.assertIn("first trials", out.getvalue())
        self.assertFalse(ray.is_initialized())


class SetEdits(unittest.TestCase):
    def test_set_paths(self) -> None:
        raw = apply_sets(
            GOOD,
            [
                "trials.num_samples=8",
                "overrides.training.epochs=3",
                "space.training.learning_rate.loguniform=[1.0e-3, 1.0e-2]",
                "space.loss.tv_coeff={uniform: [0.0, 0.1]}",
                "space.loss.aug.coeff.uniform=[0.0, 1.0]",
            ],
            "f.yaml",
        )
        sp = parse_space(raw, "f.yaml")
        self.assertEqual(sp.trials.num_samples, 8)
        self.assertEqual(sp.overrides, {"training.epochs": 3})
        self.assertEqual(sp.space["training.learning_rate"].loguniform, (1e-3, 1e-2))
        self.assertEqual(sp.space["loss.tv_coeff"].uniform, (0.0, 0.1))
        self.assertEqual(sp.space["loss.aug.coeff"].uniform, (0.0, 1.0))


class Explore(unittest.TestCase):
    """AutoLFADS-style explore: bounded, ints stay ints, choices move to a neighbour."""

    def test_bounded_weighted(self) -> None:
        raw = _with(
            "searcher/type",
            "random",
            _with("scheduler", {"type": "pbt", "perturbation_interval": 2, "explore_weight": 0.3}),
        )
        raw["space"] = {
            "training.learning_rate": {"loguniform": [1e-4, 1e-2], "bounds": [1e-4, 2e-2]},
            "loss.tv_coeff": {"uniform": [0.0, 0.1], "explore_weight": 0.8},
            "training.evolve_multiple_steps": {"randint": [2, 6]},
            "training.time_units": {"choice": [5, 10, 20]},
        }
        sp = parse_space(raw, "f.yaml")
        ex = BoundedExplore(explore_specs(sp, 0.3), seed=1)
        cfg = {
            "training.learning_rate": 1.9e-2,
            "loss.tv_coeff": 0.09,
            "training.evolve_multiple_steps": 5,
            "training.time_units": 10,
        }
        for _ in range(2000):
            new = ex(cfg)
            lr = new["training.learning_rate"]
            self.assertTrue(1e-4 <= lr <= 2e-2)
            ratio = lr / cfg["training.learning_rate"]
            self.assertTrue(0.7 - 1e-9 <= ratio <= 1.3 + 1e-9 and abs(ratio - 1) >= 0.0006 - 1e-12)
            self.assertTrue(0.0 <= new["loss.tv_coeff"] <= 0.1)
            ems = new["training.evolve_multiple_steps"]
            self.assertIsInstance(ems, int)
            self.assertTrue(2 <= ems <= 5)
            opts = [5, 10, 20]
            moved = abs(
                opts.index(new["training.time_units"]) - opts.index(cfg["training.time_units"])
            )
            self.assertEqual(moved, 1)
            self.assertIsInstance(new["training.time_units"], int)
            cfg = new

    def test_resample_inside_bounds(self) -> None:
        spec = {"x": ExploreSpec("numeric", 0.5, 1.0, 2.0, integer=False, log=True)}
        ex = BoundedExplore(spec, resample_probability=1.0, seed=0)
        vals = [ex({"x": 1.5})["x"] for _ in range(200)]
        self.assertTrue(all(1.0 <= v <= 2.0 for v in vals))
        self.assertGreater(max(vals) - min(vals), 0.5)


class Stopper(unittest.TestCase):
    def test_plateau(self) -> None:
        s = SearchStopper("m", "min", interval=2, patience=2, min_improvement=0.01)
        values = {1: 1.0, 2: 0.5, 3: 0.4, 4: 0.3, 5: 0.299, 6: 0.2995, 7: 0.2999, 8: 0.3, 9: 0.3}
        stopped_at = None
        for epoch, v in values.items():
            for tid in ("a", "b"):
                s(tid, {"epoch": epoch, "m": v + (0.01 if tid == "b" else 0.0)})
            if s.stop_all() and stopped_at is None:
                stopped_at = epoch
        self.assertIsNotNone(stopped_at)
        self.assertGreaterEqual(stopped_at, 7)

    def test_diverged(self) -> None:
        s = SearchStopper("m", "min", diverged_patience=2)
        self.assertFalse(s("a", {"epoch": 1, "m": 1.0, "penalised": True}))
        self.assertFalse(s("a", {"epoch": 2, "m": 1.0, "penalised": False}))
        self.assertFalse(s("a", {"epoch": 3, "m": math.nan}))
        self.assertTrue(s("a", {"epoch": 4, "m": 9.0, "penalised": True}))
        self.assertFalse(s.stop_all())

    def test_diverged_counts_only_evaluated_reports(self) -> None:
        """With evaluation.every > 1 the epochs between evaluations repeat the last flags
        (`evaluated: False`): they are not new penalised evaluations."""
        s = SearchStopper("m", "min", diverged_patience=2)
        bad = {"m": 1.0, "penalised": True}
        self.assertFalse(s("a", {"epoch": 1, **bad, "evaluated": True}))
        self.assertFalse(s("a", {"epoch": 2, **bad, "evaluated": False}))
        self.assertFalse(s("a", {"epoch": 3, **bad, "evaluated": False}))
        self.assertTrue(s("a", {"epoch": 4, **bad, "evaluated": True}))
        # a good evaluation resets the run; carried-forward epochs do not
        self.assertFalse(s("b", {"epoch": 1, **bad, "evaluated": True}))
        self.assertFalse(s("b", {"epoch": 2, "m": 0.5, "penalised": False, "evaluated": True}))
        self.assertFalse(s("b", {"epoch": 3, **bad, "evaluated": True}))
        self.assertFalse(s("b", {"epoch": 4, **bad, "evaluated": False}))
        self.assertTrue(s("b", {"epoch": 5, **bad, "evaluated": True}))


if __name__ == "__main__":
    unittest.main()


class PopulationSchedulers(unittest.TestCase):
    """PB2 explores only the continuous parameters; PBT uses Ray's public quantile exploit."""

    def _space(self, scheduler: dict) -> object:
        raw = _with("searcher/type", "random", _with("scheduler", scheduler))
        raw["space"] = {
            "training.learning_rate": {"loguniform": [1e-4, 1e-2], "bounds": [1e-5, 2e-2]},
            "loss.tv_coeff": {"uniform": [0.0, 0.1]},
            "training.evolve_multiple_steps": {"randint": [2, 6]},
            "training.time_units": {"choice": [10, 20]},
        }
        return parse_space(raw, "pb2.yaml")

    def test_pb2_bounds_cover_only_continuous_parameters(self) -> None:
        space = self._space({"type": "pb2", "perturbation_interval": 2})
        self.assertIsInstance(build_scheduler(space, 10), PB2)
        bounds = pb2_bounds(space)
        self.assertEqual(set(bounds), {"training.learning_rate", "loss.tv_coeff"})
        self.assertEqual(list(bounds["training.learning_rate"]), [1e-5, 2e-2])

    def test_pbt_is_the_public_scheduler(self) -> None:
        sched = build_scheduler(
            self._space({"type": "pbt", "perturbation_interval": 2, "quantile_fraction": 0.5}), 10
        )
        self.assertIs(type(sched), PopulationBasedTraining)

    def test_tournament_is_refused(self) -> None:
        raw = _with(
            "searcher/type",
            "random",
            _with(
                "scheduler", {"type": "pbt", "perturbation_interval": 2, "exploit": "tournament"}
            ),
        )
        with self.assertRaises(UserInputError) as ctx:
            parse_space(raw, "pbt.yaml")
        self.assertIn("scheduler", ctx.exception.key or "")
