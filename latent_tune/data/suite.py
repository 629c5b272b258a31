"""Suites (training dataset + cross-validation datasets of the same network) and the demo cache.

The demo suite is simulated once per (preset, seed) into the cache and shared by every trial:
generation happens in a temporary dir under an fcntl lock and is renamed into place, so trials
or nodes starting together wait for, then see, one complete suite (never half of one).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from latent_tune.data import simulate
from latent_tune.data.format import (
    HEADER_FILE,
    SUITE_FILE,
    CrossvalEntry,
    SuiteManifest,
    TrainEntry,
    parse_manifest,
    write_manifest,
)
from latent_tune.data.network import PRESETS
from latent_tune.data.reader import Dataset
from latent_tune.errors import UserInputError

__all__ = [
    "CrossvalEntry",
    "Suite",
    "SuiteManifest",
    "TrainEntry",
    "demo_suite_dir",
    "ensure_demo_suite",
    "write_manifest",
]

DATA_ENV = "LATENT_TUNE_DATA"

SUITE_EXPECTED = (
    f"is a dataset directory ({HEADER_FILE}), but a suite is expected here: a suite is a "
    f"directory with {SUITE_FILE} naming one training dataset (with its train and validation "
    "ranges) and the cross-validation datasets; make one with `python -m latent_tune.data "
    "suite --train DIR --crossval NAME=DIR --out SUITE`"
)


class Suite:
    """An opened, validated suite directory."""

    def __init__(
        self,
        path: Path,
        manifest: SuiteManifest,
        train: Dataset,
        crossval: list[tuple[str, Dataset, tuple[int, int]]],
    ) -> None:
        self._path = path
        self._manifest = manifest
        self._train = train
        self._crossval = crossval

    @classmethod
    def open(cls, path: Path | str) -> Suite:
        """Validate `suite.yaml`, open every dataset, check ranges and shapes agree."""
        path = Path(path)
        mfile = path / SUITE_FILE
        if not path.is_dir():
            raise UserInputError(path, None, "not a suite directory (does not exist)")
        if not mfile.is_file() and (path / HEADER_FILE).is_file():
            raise UserInputError(path, None, SUITE_EXPECTED)
        manifest = parse_manifest(mfile)
        opened: dict[str, Dataset] = {}

        def dataset(sub: str, key: str) -> Dataset:
            if sub not in opened:
                if not (path / sub).is_dir():
                    raise UserInputError(mfile, key, f"dataset directory {sub!r} is missing")
                opened[sub] = Dataset.open(path / sub)
            return opened[sub]

        train = dataset(manifest.train.dataset, "train.dataset")
        _check_in(mfile, "train.train_range", manifest.train.train_range, train)
        _check_in(mfile, "train.val_range", manifest.train.val_range, train)
        crossval = []
        for i, c in enumerate(manifest.crossval):
            ds = dataset(c.dataset, f"crossval.{i}.dataset")
            _check_in(mfile, f"crossval.{i}.range", c.range, ds)
            for attr in ("n_neurons", "n_stimulus"):
                if getattr(ds, attr) != getattr(train, attr):
                    raise UserInputError(
                        mfile,
                        f"crossval.{i}.dataset",
                        f"{c.dataset} has {attr} = {getattr(ds, attr)}, the training dataset "
                        f"{getattr(train, attr)} (must be the same network)",
                    )
            crossval.append((c.name, ds, (c.range[0], c.range[1])))
        return cls(path, manifest, train, crossval)

    def __repr__(self) -> str:
        names = [c[0] for c in self._crossval]
        return f"Suite({os.fspath(self._path)!r}, train={self._train!r}, crossval={names})"

    @property
    def path(self) -> Path:
        return self._path

    @property
    def manifest(self) -> SuiteManifest:
        return self._manifest

    @property
    def train(self) -> Dataset:
        return self._train

    @property
    def crossval(self) -> list[tuple[str, Dataset, tuple[int, int]]]:
        return list(self._crossval)


def _check_in(mfile: Path, key: str, r: tuple[int, int], ds: Dataset) -> None:
    if r[1] > ds.n_steps:
        raise UserInputError(
            mfile, key, f"{list(r)} exceeds n_steps = {ds.n_steps} of {ds.path.name}"
        )


def cache_root() -> Path:
    """Where demo suites are cached: $LATENT_TUNE_DATA or ~/.cache/latent_tune/suites."""
    env = os.environ.get(DATA_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "latent_tune" / "suites"


def demo_suite_dir(preset: str, seed: int) -> Path:
    """Cache directory of the demo suite of (preset, seed)."""
    return cache_root() / f"{preset}-seed{int(seed)}"


def _is_complete(path: Path) -> bool:
    if not (path / SUITE_FILE).is_file():
        return False
    try:
        Suite.open(path)
    except UserInputError:
        return False
    return True


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """Exclusive fcntl lock on `lock_path` (blocks until it is free)."""
    with open(lock_path, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


NOT_ON_FIRST_USE = ("lab",)  # presets a config must point at explicitly (data.suite)


def ensure_demo_suite(preset: str = "demo", seed: int = 0) -> Path:
    """Return the cached demo suite of (preset, seed), simulating it first if needed."""
    if preset not in PRESETS:
        raise UserInputError(
            None, "preset", f"unknown preset {preset!r} (one of {sorted(PRESETS)})"
        )
    final = demo_suite_dir(preset, seed)
    if (final / SUITE_FILE).is_file() and _is_complete(final):
        return final
    if preset in NOT_ON_FIRST_USE:  # never start a ~110 GB simulation as a side effect
        raise UserInputError(
            None,
            "data.suite",
            f"the {preset!r} preset is too large to simulate on first use: give data.suite "
            "(the lab's data via `python -m latent_tune.data import-zarr`, or a suite made "
            f"once with `python -m latent_tune.data simulate --preset {preset} --out DIR`)",
        )
    root = final.parent
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / f".{final.name}.lock"):
        if _is_complete(final):  # someone else made it while we waited
            return final
        for stale in root.glob(f".{final.name}.tmp-*"):  # left by a killed generator
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=root))
        try:
            simulate.simulate_suite(tmp / "suite", preset=preset, seed=int(seed))
            if final.exists():  # an incomplete or outdated suite: replace it
                old = tmp / "old"
                os.replace(final, old)
            os.replace(tmp / "suite", final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final
