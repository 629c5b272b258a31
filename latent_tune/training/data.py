"""The data of one training run: memory-mapped suite, training chunks, evaluation sets.

Why this shape: the training dataset can be far larger than RAM (lab: 1e6 x 13,741 float32),
so it stays a memory map and an epoch copies only its chunks, each ONE copy from the page
cache to the device; validation and cross-validation sets are small and are put on the device
once with their interpolations, so evaluation never touches the host. Opened suites are cached
per process by path: trials of a search that share a worker (Ray reuse_actors) share the maps
and the page cache; the cache holds no per-trial state, so reuse is safe.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from latent_tune.data.acquisition import Acquisition
from latent_tune.data.interpolation import interpolate_staggered
from latent_tune.data.reader import Dataset
from latent_tune.data.sampling import eval_starts
from latent_tune.data.suite import Suite, ensure_demo_suite
from latent_tune.errors import UserInputError
from latent_tune.training.config import BaseTrainConfig

__all__ = [
    "EvalSet",
    "RunData",
    "TrainChunk",
    "clear_suite_cache",
    "load_run_data",
    "open_suite",
    "resolve_suite_path",
    "split_test_range",
    "to_device",
]

_SUITES: dict[str, Suite] = {}
_SUITES_LOCK = threading.Lock()


def open_suite(path: str | os.PathLike) -> Suite:
    """Open a suite once per process (keyed by resolved path); later calls share its maps."""
    key = str(Path(path).expanduser().resolve())
    with _SUITES_LOCK:
        suite = _SUITES.get(key)
        if suite is None:
            suite = Suite.open(Path(key))
            _SUITES[key] = suite
        return suite


def clear_suite_cache() -> None:
    """Forget the opened suites (tests that rewrite a suite in place)."""
    with _SUITES_LOCK:
        _SUITES.clear()


def resolve_suite_path(cfg: BaseTrainConfig) -> Path:
    """data.suite, or the cached demo suite of data.preset (simulated on first use)."""
    if cfg.data.suite is not None:
        path = Path(cfg.data.suite).expanduser()
        if not path.exists():
            raise UserInputError(None, "data.suite", f"suite directory {path} does not exist")
        return path
    return ensure_demo_suite(cfg.data.preset, 0)


def to_device(view: np.ndarray, device: torch.device | str) -> torch.Tensor:
    """One copy of a (read-only, memory-mapped) numpy view into a tensor on `device`.

    torch.from_numpy of a read-only array warns and would alias the map; torch.tensor copies once.
    """
    return torch.tensor(view, dtype=torch.float32, device=device)


@dataclass
class EvalSet:
    """One evaluation dataset on the device: truth, its interpolation, stimulus, starts."""

    name: str  # "val" or the cross-val name
    x: torch.Tensor  # (T, N) full ground truth
    x_interp: torch.Tensor  # (T, N) interpolated from the run's staggered observations
    stim: torch.Tensor  # (T, S)
    starts: torch.Tensor  # (n,) int64 CPU


@dataclass
class TrainChunk:
    """One training chunk on the device (rows relative to the chunk start, a multiple of tu)."""

    start: int  # absolute row of the training dataset
    x: torch.Tensor  # (Tc, N) raw; batches interpolate their start frames from it
    stim: torch.Tensor  # (Tc, S)


def _range(
    value: tuple[int, int] | list[int] | None,
    default: tuple[int, int],
    length: int,
    key: str,
) -> tuple[int, int]:
    """A config row range (or the default), checked against the dataset length."""
    t0, t1 = (int(v) for v in (value if value is not None else default))
    if not 0 <= t0 < t1 <= length:
        raise UserInputError(None, key, f"range [{t0}, {t1}) does not fit the {length} rows")
    return t0, t1


def _train_range(
    cfg: BaseTrainConfig, suite: Suite, n_rows: int, val: tuple[int, int]
) -> tuple[int, int]:
    """Explicit range; the manifest's when val is the manifest's too; else the rows outside val."""
    manifest = suite.manifest.train
    if cfg.data.train_range is not None:
        rng = _range(cfg.data.train_range, (0, 0), n_rows, "data.train_range")
    elif cfg.data.val_range is None:
        rng = _range(manifest.train_range, (0, 0), n_rows, "data.train_range")
    else:
        before, after = (0, val[0]), (val[1], n_rows)
        rng = before if before[1] - before[0] >= after[1] - after[0] else after
        if rng[1] <= rng[0]:
            raise UserInputError(None, "data.val_range", "leaves no rows for training")
    if rng[0] < val[1] and val[0] < rng[1]:
        raise UserInputError(
            None, "data.train_range", f"{list(rng)} overlaps the validation range {list(val)}"
        )
    return rng


@dataclass
class RunData:
    """Everything a Trainer reads: the training memory map and the device-resident eval sets."""

    suite_path: Path
    quantity: str
    train: Dataset
    train_range: tuple[int, int]
    val_range: tuple[int, int]
    n_neurons: int
    n_stimulus: int
    cell_types: np.ndarray  # (N,) int64
    type_names: list[str]
    crossval_specs: list[tuple[str, Dataset, tuple[int, int]]]

    @property
    def train_len(self) -> int:
        """Rows of the training range."""
        return self.train_range[1] - self.train_range[0]

    def train_views(self, start: int, length: int) -> tuple[np.ndarray, np.ndarray]:
        """Zero-copy (activity, stimulus) views of rows [start, start+length) of the range."""
        a = self.train_range[0] + int(start)
        b = min(a + int(length), self.train_range[1])
        return self.train.activity(self.quantity)[a:b], self.train.stimulus()[a:b]

    def chunk(self, start: int, length: int, device: torch.device | str) -> TrainChunk:
        """Copy one chunk to the device (no interpolated copy: see `interpolate_rows`)."""
        xv, sv = self.train_views(start, length)
        return TrainChunk(start=int(start), x=to_device(xv, device), stim=to_device(sv, device))

    def eval_set(
        self,
        name: str,
        ds: Dataset,
        rng: tuple[int, int],
        *,
        acq: Acquisition,
        cfg: BaseTrainConfig,
        device: torch.device | str,
    ) -> EvalSet:
        """One evaluation set on the device, with interpolation and its fixed starts.

        The starts depend only on the range, `evaluation.{seed, start_margin, starts,
        rollout_steps}`: never on tu or the training seed, so runs are scored on the same windows.
        """
        x = to_device(ds.activity(self.quantity)[rng[0] : rng[1]], device)
        stim = to_device(ds.stimulus()[rng[0] : rng[1]], device)
        x_interp = interpolate_staggered(
            x, acq.phases, acq.effective_tu, cfg.acquisition.interpolation
        )
        key = "evaluation.rollout_steps"
        try:
            starts = eval_starts(
                rng[1] - rng[0],
                cfg.evaluation.rollout_steps,
                cfg.evaluation.starts,
                cfg.evaluation.start_margin,
                cfg.evaluation.seed,
            )
        except ValueError as exc:
            raise UserInputError(None, key, f"{name}: {exc}") from None
        return EvalSet(name=name, x=x, x_interp=x_interp, stim=stim, starts=starts)

    def window_ranges(
        self, cfg: BaseTrainConfig
    ) -> tuple[dict[str, tuple[int, int]], dict[str, tuple[int, int]]]:
        """(selection ranges: "val" and each cross-val name, test ranges by cross-val name).

        One place decides which rows are scored where, for the trainer and for the records a
        search keeps of its windows. A test part too short for one rollout after the start
        margin is left out (its dataset then has no test value).
        """
        ev = cfg.evaluation
        need = ev.rollout_steps + ev.start_margin + 1
        selection: dict[str, tuple[int, int]] = {"val": self.val_range}
        test: dict[str, tuple[int, int]] = {}
        for name, _, r in self.crossval_specs:
            selection[name], part = split_test_range(r, ev.test_fraction)
            if part is not None and part[1] - part[0] >= need:
                test[name] = part
        return selection, test

    def eval_sets(
        self, acq: Acquisition, cfg: BaseTrainConfig, device: torch.device | str
    ) -> tuple[EvalSet, list[EvalSet]]:
        """Validation set and the selection part of each cross-validation set, on the device."""
        sel, _ = self.window_ranges(cfg)
        val = self.eval_set("val", self.train, sel["val"], acq=acq, cfg=cfg, device=device)
        cvs = [
            self.eval_set(n, ds, sel[n], acq=acq, cfg=cfg, device=device)
            for n, ds, _ in self.crossval_specs
        ]
        return val, cvs

    def test_sets(
        self, acq: Acquisition, cfg: BaseTrainConfig, device: torch.device | str
    ) -> list[EvalSet]:
        """The held-out test part of each cross-validation set that can hold a rollout.

        Nothing selects on these windows (no best epoch, no ranking, no scheduler): they give
        an unbiased final-epoch value.
        """
        _, test = self.window_ranges(cfg)
        return [
            self.eval_set(n, ds, test[n], acq=acq, cfg=cfg, device=device)
            for n, ds, _ in self.crossval_specs
            if n in test
        ]


def split_test_range(
    rng: tuple[int, int], fraction: float
) -> tuple[tuple[int, int], tuple[int, int] | None]:
    """(selection part, test part or None): the test part is the last `fraction` of the rows."""
    t0, t1 = rng
    n_test = int(round((t1 - t0) * float(fraction)))
    if n_test <= 0:
        return (t0, t1), None
    return (t0, t1 - n_test), (t1 - n_test, t1)


def _crossval_specs(
    cfg: BaseTrainConfig, suite: Suite, quantity: str, n: int, s: int
) -> list[tuple[str, Dataset, tuple[int, int]]]:
    """The configured cross-val datasets (default: the suite's), checked against training."""
    by_name = {name: (ds, rng) for name, ds, rng in suite.crossval}
    specs: list[tuple[str, Dataset, tuple[int, int]]] = []
    if cfg.data.crossval is None:
        specs = [(name, ds, (int(r[0]), int(r[1]))) for name, ds, r in suite.crossval]
    else:
        for i, entry in enumerate(cfg.data.crossval):
            key = f"data.crossval.{i}"
            if entry.path is not None:
                path = Path(entry.path).expanduser()
                if not path.is_absolute() and not path.exists():
                    path = suite.path / path
                ds = Dataset.open(path)
                default = (0, ds.n_steps)
            elif entry.name in by_name:
                ds, default = by_name[entry.name]
            else:
                raise UserInputError(
                    None,
                    f"{key}.name",
                    f"no cross-val dataset {entry.name!r} in the suite "
                    f"(has {sorted(by_name)}); give a path",
                )
            rng = _range(entry.range, tuple(default), ds.n_steps, f"{key}.range")
            specs.append((entry.name, ds, rng))
    if not specs:
        raise UserInputError(None, "data.crossval", "no cross-validation dataset")
    if any(name == "val" for name, _, _ in specs):
        raise UserInputError(None, "data.crossval", "'val' is reserved for the validation split")
    for name, ds, _ in specs:
        if quantity not in ds.quantities:
            raise UserInputError(
                None, "data.quantity", f"{quantity!r} missing from cross-val {name}"
            )
        if (ds.n_neurons, ds.n_stimulus) != (n, s):
            raise UserInputError(
                None,
                "data.crossval",
                f"{name} has {ds.n_neurons} neurons / {ds.n_stimulus} stimulus inputs, "
                f"training data has {n} / {s}",
            )
    return specs


def load_run_data(cfg: BaseTrainConfig) -> RunData:
    """Resolve and open the run's data (memory-mapped; nothing is copied yet)."""
    suite = open_suite(resolve_suite_path(cfg))
    train = suite.train
    quantity = cfg.data.quantity
    if quantity not in train.quantities:
        raise UserInputError(
            None, "data.quantity", f"{quantity!r} is not in the data (has {list(train.quantities)})"
        )
    n_rows = train.n_steps
    val = _range(
        cfg.data.val_range, tuple(suite.manifest.train.val_range), n_rows, "data.val_range"
    )
    rng = _train_range(cfg, suite, n_rows, val)
    return RunData(
        suite_path=Path(suite.path),
        quantity=quantity,
        train=train,
        train_range=rng,
        val_range=val,
        n_neurons=train.n_neurons,
        n_stimulus=train.n_stimulus,
        cell_types=np.asarray(train.cell_types(), dtype=np.int64),
        type_names=list(train.type_names()),
        crossval_specs=_crossval_specs(cfg, suite, quantity, train.n_neurons, train.n_stimulus),
    )
