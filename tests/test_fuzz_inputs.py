"""Bad input, fuzzed (issue 5, item 4): search spaces, training configs and datasets.

Why property-based: the hand-written cases in test_search_space.py cover the mistakes we
thought of; hypothesis draws wrong types, unknown keys, out-of-range and huge numbers, garbage
bytes and deep nesting. Whatever it draws, each command must answer with exit status 2 and one
stderr line naming the file (and the key where there is one), start no Ray, write nothing and
never show a traceback.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
import unittest
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import ray
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from latent_tune.data.cli import main as data_main
from latent_tune.data.reader import Dataset
from latent_tune.data.simulate import simulate_suite
from latent_tune.search import main as search_main
from latent_tune.train import main as train_main
from latent_tune.training.eed_config import TrainConfig
from latent_tune.tune.space import SearchSpace

ROOT = Path(__file__).resolve().parents[1]
FUZZ = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    derandomize=True,  # reproducible in CI; new seeds come with code changes, not reruns
)

SPACE: dict[str, Any] = {
    "name": "fz",
    "trainable": "eed_staggered",
    "base": "eed_staggered_tiny.yaml",
    "scheduler": {"type": "asha", "grace_period": 1},
    "searcher": {"type": "optuna", "seed": 0},
    "space": {
        "training.learning_rate": {"loguniform": [1.0e-4, 1.0e-2]},
        "loss.tv_coeff": {"uniform": [0.0, 0.01]},
    },
    "trials": {"num_samples": 2, "max_failures": 1},
    "resources": {"cpu": 1.0, "gpu": 0.0},
    "checkpoint": {"every": 1, "keep": 3},
    "stopping": {"diverged_patience": 3},
    "objective": {"metric": "crossval_rollout_mse", "mode": "min"},
}
CONFIG: dict[str, Any] = yaml.safe_load(
    (ROOT / "trainables" / "eed_staggered_tiny.yaml").read_text(encoding="utf-8")
)

# section path -> known keys (an unknown key drawn for it must not be one of these)
SPACE_SECTIONS = {
    "": set(SearchSpace.model_fields),
    "trials": {"num_samples", "max_concurrent", "max_failures"},
    "resources": {"cpu", "gpu"},
    "checkpoint": {"every", "keep"},
    "stopping": {"diverged_patience"},
    "objective": {"metric", "mode"},
    "searcher": {"type", "seed"},
    "scheduler": {"type", "max_t", "grace_period", "reduction_factor"},
    "space.loss.tv_coeff": {"choice", "uniform", "loguniform", "randint", "grid", "bounds"},
}
CONFIG_SECTIONS = {
    "": set(TrainConfig.model_fields),
    "training": set(CONFIG["training"]) | {"masked_decode", "bf16"},
    "loss": set(CONFIG["loss"]),
    "model": set(CONFIG["model"]),
    "evaluation": set(CONFIG["evaluation"]) | {"fast", "bf16"},
    "acquisition": set(CONFIG["acquisition"]),
}
# numeric leaves with a lower limit, and a value strategy below it
SPACE_LOW = {
    "trials.num_samples": st.integers(-(2**40), 0),
    "trials.max_failures": st.integers(-(2**40), -1),
    "checkpoint.keep": st.integers(-5, 2),
    "checkpoint.every": st.integers(-5, 0),
    "resources.cpu": st.floats(-1e6, 0.0),
    "stopping.diverged_patience": st.integers(-100, -1),
}
CONFIG_LOW = {
    "training.epochs": st.integers(-(2**40), 0),
    "training.batch_size": st.integers(-100, 0),
    "training.learning_rate": st.floats(-1e6, 0.0),
    "evaluation.penalty_factor": st.floats(-1e6, 1.0),
    "model.latent_dims": st.integers(-100, 0),
}
SPACE_NUMERIC = [*SPACE_LOW, "space.loss.tv_coeff.uniform.1", "scheduler.grace_period"]
CONFIG_NUMERIC = [*CONFIG_LOW, "loss.tv_coeff", "training.seed", "evaluation.starts"]

identifiers = st.from_regex(r"\A[a-z_][a-z0-9_]{0,11}\Z")
not_a_number = st.one_of(
    st.lists(st.integers(), min_size=1, max_size=3),
    st.dictionaries(identifiers, st.integers(), min_size=1, max_size=2),
    st.from_regex(r"\A[a-z]{1,8}\Z").filter(lambda s: s not in ("inf", "nan", "infinity")),
)
huge = st.one_of(
    st.integers(min_value=2**53 + 1, max_value=10**400),
    st.integers(min_value=-(10**400), max_value=-(2**53) - 1),
    st.floats(min_value=2.0**54, allow_infinity=True),
    st.sampled_from([float("inf"), float("-inf"), float("nan")]),
)


def _set(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """Set a dotted path; the space's own keys are dotted, so match the longest existing key."""
    out = yaml.safe_load(yaml.safe_dump(doc))
    node: Any = out
    parts = path.split(".")
    while parts:
        for n in range(len(parts), 0, -1):
            key = ".".join(parts[:n])
            if isinstance(node, dict) and key in node:
                break
        else:
            n, key = 1, parts[0]
        if n == len(parts):
            if isinstance(node, list):
                node[int(key)] = value
            else:
                node[key] = value
            return out
        node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
        parts = parts[n:]
    return out


def _mutation(doc: dict[str, Any], sections: dict[str, set[str]], low: dict, numeric: list):
    """A strategy of (mutated document as YAML bytes, key path the error must name or None)."""

    def dump(d: dict[str, Any]) -> bytes:
        return yaml.safe_dump(d, sort_keys=False, allow_unicode=True).encode()

    unknown = st.tuples(st.sampled_from(sorted(sections)), identifiers).filter(
        lambda t: t[1] not in sections[t[0]]
    )
    unknown_key = unknown.map(
        lambda t: (dump(_set(doc, f"{t[0]}.{t[1]}" if t[0] else t[1], 1)), t[0] or t[1])
    )
    wrong_type = st.tuples(st.sampled_from(numeric), not_a_number).map(
        lambda t: (dump(_set(doc, t[0], t[1])), t[0].rsplit(".", 1)[0])
    )
    out_of_range = st.sampled_from(sorted(low)).flatmap(
        lambda k: low[k].map(lambda v: (dump(_set(doc, k, v)), k))
    )
    too_big = st.tuples(st.sampled_from(numeric), huge).map(
        lambda t: (dump(_set(doc, t[0], t[1])), t[0].rsplit(".", 1)[0])
    )
    depth = st.integers(min_value=40, max_value=5000)
    nested = st.tuples(depth, st.sampled_from(["", "training"])).map(
        lambda t: (
            (f"{t[1]}: " if t[1] else "").encode() + b"[" * t[0] + b"1" + b"]" * t[0],
            None,
        )
    )
    garbage = st.one_of(
        st.binary(max_size=300),
        st.text(max_size=300).map(lambda s: s.encode("utf-8", "surrogatepass")),
        st.just(b""),
        st.just(b"\xff\xfe\x00\x01not utf-8"),
    ).map(lambda b: (b, None))
    return st.one_of(unknown_key, wrong_type, out_of_range, too_big, nested, garbage)


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


class _CliCase(unittest.TestCase):
    """A temp working dir per test; run a command in-process and capture stdout/stderr."""

    def setUp(self) -> None:
        self.old_cwd = Path.cwd()
        self.tmp = Path(tempfile.mkdtemp(prefix="lt-fuzz-"))
        os.chdir(self.tmp)

    def tearDown(self) -> None:
        os.chdir(self.old_cwd)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def run_cli(self, fn: Callable[[Sequence[str]], int], argv: list[str]) -> tuple[int, str]:
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                rc = fn(argv)
            except BaseException as exc:  # any escape would be a traceback for the user
                self.fail(f"{type(exc).__name__} escaped main({argv}): {exc}")
        return rc, err.getvalue()

    def check_refused(
        self, fn: Callable[[Sequence[str]], int], data: bytes, key: str | None, extra: list[str]
    ) -> None:
        path = self.tmp / "input.yaml"
        path.write_bytes(data)
        before = _listing(self.tmp)
        rc, err = self.run_cli(fn, [str(path), *extra])
        self.assertEqual(rc, 2, f"accepted {data[:200]!r}")
        lines = err.splitlines()
        self.assertEqual(len(lines), 1, err)
        self.assertTrue(lines[0].startswith(f"{path}: "), lines[0])
        if key is not None:
            self.assertIn(key, lines[0])
        self.assertNotIn("Traceback", err)
        self.assertEqual(_listing(self.tmp), before, "files written")
        self.assertFalse(ray.is_initialized(), "Ray was started")


class SpaceFuzz(_CliCase):
    """`search --dry-run` on fuzzed search-space files."""

    def test_good_space_accepted(self) -> None:
        """The base document is valid: the mutations below are what makes it fail."""
        path = self.tmp / "good.yaml"
        path.write_text(yaml.safe_dump(SPACE))
        rc, err = self.run_cli(search_main, [str(path), "--dry-run"])
        self.assertEqual((rc, err), (0, ""))
        self.assertFalse(ray.is_initialized())

    @FUZZ
    @given(_mutation(SPACE, SPACE_SECTIONS, SPACE_LOW, SPACE_NUMERIC))
    def test_bad_space_refused(self, case: tuple[bytes, str | None]) -> None:
        self.check_refused(search_main, case[0], case[1], ["--dry-run"])

    @FUZZ
    @given(st.sampled_from(SPACE_NUMERIC), st.one_of(huge, not_a_number))
    def test_bad_set_refused(self, key: str, value: Any) -> None:
        """`--set` edits go through the same checks, and the error names the key."""
        path = self.tmp / "input.yaml"
        path.write_text(yaml.safe_dump(SPACE))
        text = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
        before = _listing(self.tmp)
        rc, err = self.run_cli(search_main, [str(path), "--dry-run", "--set", f"{key}={text}"])
        self.assertEqual(rc, 2, f"--set {key}={text} accepted")
        self.assertEqual(len(err.splitlines()), 1, err)
        self.assertEqual(_listing(self.tmp), before)
        self.assertFalse(ray.is_initialized())


class ConfigFuzz(_CliCase):
    """`python -m latent_tune.train` on fuzzed training configs: nothing runs, nothing written."""

    def test_good_config_loads(self) -> None:
        TrainConfig.model_validate(CONFIG)

    @FUZZ
    @given(_mutation(CONFIG, CONFIG_SECTIONS, CONFIG_LOW, CONFIG_NUMERIC))
    def test_bad_config_refused(self, case: tuple[bytes, str | None]) -> None:
        self.check_refused(train_main, case[0], case[1], ["--out", str(self.tmp / "run")])


class DatasetFuzz(_CliCase):
    """`python -m latent_tune.data info [--check]` on broken datasets."""

    suite: Path

    @classmethod
    def setUpClass(cls) -> None:
        cls.root = Path(tempfile.mkdtemp(prefix="lt-fuzz-data-"))
        cls.suite = simulate_suite(cls.root / "suite", preset="tiny", seed=0)
        cls.dataset = next(p.parent for p in sorted(cls.suite.rglob("dataset.yaml")))

    @classmethod
    def tearDownClass(cls) -> None:
        shutil.rmtree(cls.root, ignore_errors=True)

    def broken_copy(self) -> Path:
        dst = self.tmp / "ds"
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(self.dataset, dst)
        return dst

    def check_info_refused(self, path: Path, names: str, check: bool = False) -> None:
        before = _listing(self.tmp)
        rc, err = self.run_cli(data_main, ["info", str(path), *(["--check"] if check else [])])
        self.assertEqual(rc, 2, err)
        lines = err.splitlines()
        self.assertEqual(len(lines), 1, err)
        self.assertIn(names, lines[0].split(": ")[0])
        self.assertEqual(_listing(self.tmp), before)

    def test_intact_dataset_passes(self) -> None:
        rc, err = self.run_cli(data_main, ["info", str(self.dataset), "--check"])
        self.assertEqual((rc, err), (0, ""))

    @FUZZ
    @given(st.floats(min_value=0.0, max_value=0.999))
    def test_truncated_arrow(self, fraction: float) -> None:
        ds = self.broken_copy()
        arrow = ds / "voltage.arrow"
        data = arrow.read_bytes()
        arrow.write_bytes(data[: int(len(data) * fraction)])
        self.check_info_refused(ds, "voltage.arrow")

    @FUZZ
    @given(st.sampled_from(["n_neurons", "n_steps", "n_stimulus"]), st.integers(1, 10**6))
    def test_wrong_shape(self, key: str, delta: int) -> None:
        ds = self.broken_copy()
        header = yaml.safe_load((ds / "dataset.yaml").read_text())
        header[key] = header[key] + delta
        (ds / "dataset.yaml").write_text(yaml.safe_dump(header))
        rc, err = self.run_cli(data_main, ["info", str(ds)])
        self.assertEqual(rc, 2, err)
        self.assertEqual(len(err.splitlines()), 1, err)
        self.assertTrue(err.startswith(str(ds)), err)

    def test_missing_parquet(self) -> None:
        for name in ("neurons.parquet", "connectome.parquet"):
            with self.subTest(name):
                ds = self.broken_copy()
                (ds / name).unlink()
                self.check_info_refused(ds, name)

    @FUZZ
    @given(st.data())
    def test_nan_row_found_by_check(self, data: st.DataObject) -> None:
        ds = self.broken_copy()
        arr = Dataset.open(ds).activity("voltage")
        n_steps, n = arr.shape
        row = data.draw(st.integers(0, n_steps - 1))
        col = data.draw(st.integers(0, n - 1))
        bad = data.draw(st.sampled_from([np.nan, np.inf, -np.inf]))
        raw = bytearray((ds / "voltage.arrow").read_bytes())
        start = bytes(raw).find(np.ascontiguousarray(arr).tobytes())
        self.assertGreaterEqual(start, 0)
        del arr
        pos = start + (row * n + col) * 4
        raw[pos : pos + 4] = np.array([bad], dtype=np.float32).tobytes()
        (ds / "voltage.arrow").write_bytes(bytes(raw))
        rc, _ = self.run_cli(data_main, ["info", str(ds)])
        self.assertEqual(rc, 0)  # without --check the values are not scanned
        self.check_info_refused(ds, "voltage.arrow", check=True)
        _, err = self.run_cli(data_main, ["info", str(ds), "--check"])
        self.assertIn(str(row), err)


if __name__ == "__main__":
    unittest.main()
