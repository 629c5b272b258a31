"""Build a suite from existing datasets: pick and check the row ranges, link, write suite.yaml.

Why: a suite is only a small manifest over datasets that may be tens of GB each, so building one
must not copy data. The suite directory holds one symbolic link per dataset (to its absolute
path) and `suite.yaml`; it is assembled in a temporary sibling, opened with `Suite.open`, and
only then renamed into place, so a bad range or a mismatched dataset leaves nothing behind.

Default ranges: the first min(5000, 10% of T) rows of every recording are skipped (the
transient after the simulation or recording starts), the last 20% of the training recording is
held out for validation. Every evaluation range (validation and cross-validation) must hold a
rollout plus the evaluation start margin plus one row, or evaluation could not start in it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from latent_tune.atomic import atomic_dir
from latent_tune.data.format import (
    FORMAT_VERSION,
    CrossvalEntry,
    SuiteManifest,
    TrainEntry,
    write_manifest,
)
from latent_tune.data.reader import Dataset
from latent_tune.data.suite import Suite
from latent_tune.errors import UserInputError

__all__ = [
    "DEFAULT_MARGIN",
    "DEFAULT_ROLLOUT_STEPS",
    "TRAIN_DIR",
    "CrossvalSource",
    "build_suite",
    "check_name",
    "describe_ranges",
    "parse_crossval",
    "parse_range",
    "plan_manifest",
    "skip_rows",
]

DEFAULT_ROLLOUT_STEPS = 2000  # evaluation.rollout_steps of the default config
DEFAULT_MARGIN = 100  # evaluation starts lie at least this many rows into a range
MAX_SKIP = 5000
VAL_FRACTION = 0.2
TRAIN_DIR = "train"
_RESERVED_NAMES = (TRAIN_DIR, "val")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class CrossvalSource:
    """A cross-validation dataset named on the command line, with its range if given."""

    name: str
    path: Path
    range: tuple[int, int] | None = None


def skip_rows(n_steps: int) -> int:
    """Rows skipped at the start of a recording by default: min(5000, 10% of T)."""
    return min(MAX_SKIP, n_steps // 10)


def parse_range(text: str, key: str) -> tuple[int, int]:
    """`A:B` -> (A, B); anything else is a one-line error naming `key`."""
    parts = text.split(":")
    try:
        if len(parts) != 2:
            raise ValueError
        a, b = int(parts[0]), int(parts[1])
    except ValueError:
        raise UserInputError(None, key, f"{text!r} is not a row range A:B") from None
    if not 0 <= a < b:
        raise UserInputError(None, key, f"{text!r} must satisfy 0 <= A < B")
    return a, b


def check_name(name: str, key: str) -> str:
    """A cross-validation name: a plain directory name, not `train` or `val`."""
    if not _NAME_RE.match(name):
        raise UserInputError(None, key, f"name {name!r} must match {_NAME_RE.pattern}")
    if name in _RESERVED_NAMES:
        raise UserInputError(None, key, f"name {name!r} is reserved (train and val)")
    return name


def parse_crossval(text: str, key: str = "--crossval") -> CrossvalSource:
    """`NAME=DIR` or `NAME=DIR@A:B`."""
    name, sep, rest = text.partition("=")
    if not sep or not rest:
        raise UserInputError(None, key, f"{text!r} is not NAME=DIR (or NAME=DIR@A:B)")
    check_name(name, key)
    rng = None
    if "@" in rest:
        rest, _, r = rest.rpartition("@")
        rng = parse_range(r, f"{key} {name}")
    return CrossvalSource(name=name, path=Path(rest), range=rng)


def _eval_need(rollout_steps: int, margin: int) -> int:
    return rollout_steps + margin + 1


def _check_range(
    rng: tuple[int, int], n_steps: int, file: Path, key: str, need: int | None, *, why: str = ""
) -> None:
    a, b = rng
    if not 0 <= a < b <= n_steps:
        raise UserInputError(file, key, f"[{a}, {b}) does not fit the recording's {n_steps} rows")
    if need is not None and b - a < need:
        raise UserInputError(
            file,
            key,
            f"[{a}, {b}) holds {b - a} rows; an evaluation range needs rollout_steps + margin "
            f"+ 1 = {need}{why} (give a longer range, or a smaller --rollout-steps to match "
            "evaluation.rollout_steps of the runs)",
        )


def _default_split(n_steps: int) -> tuple[tuple[int, int], tuple[int, int]]:
    n_val = max(1, round(n_steps * VAL_FRACTION))
    v0 = n_steps - n_val
    return (skip_rows(n_steps), v0), (v0, n_steps)


def _train_split(
    n_steps: int, train: tuple[int, int] | None, val: tuple[int, int] | None
) -> tuple[tuple[int, int], tuple[int, int]]:
    """The (train, val) ranges: given ones kept, missing ones chosen around them."""
    dtrain, dval = _default_split(n_steps)
    if train is None and val is None:
        return dtrain, dval
    if val is None:
        return train, dval  # type: ignore[return-value]
    if train is None:
        before, after = (skip_rows(n_steps), val[0]), (val[1], n_steps)
        train = before if before[1] - before[0] >= after[1] - after[0] else after
    return train, val


def plan_manifest(
    name: str,
    train_steps: int,
    crossval: Sequence[tuple[str, int, tuple[int, int] | None]],
    *,
    train_range: tuple[int, int] | None = None,
    val_range: tuple[int, int] | None = None,
    rollout_steps: int = DEFAULT_ROLLOUT_STEPS,
    margin: int = DEFAULT_MARGIN,
    train_file: Path | None = None,
    crossval_files: Sequence[Path] | None = None,
) -> SuiteManifest:
    """The manifest of a suite from recording lengths (T) alone: ranges chosen and checked.

    `crossval` holds (name, T, range or None); errors name the dataset and the flag."""
    if rollout_steps < 1:
        raise UserInputError(None, "--rollout-steps", f"must be >= 1, got {rollout_steps}")
    if margin < 0:
        raise UserInputError(None, "--margin", f"must be >= 0, got {margin}")
    if not crossval:
        raise UserInputError(None, "--crossval", "a suite needs at least one NAME=DIR")
    names = [c[0] for c in crossval]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise UserInputError(None, "--crossval", f"names {dup} are given more than once")
    need = _eval_need(rollout_steps, margin)
    why = f" ({rollout_steps} + {margin} + 1)"
    tr, va = _train_split(train_steps, train_range, val_range)
    _check_range(tr, train_steps, train_file or Path(TRAIN_DIR), "--train-range", None)
    _check_range(va, train_steps, train_file or Path(TRAIN_DIR), "--val-range", need, why=why)
    if tr[0] < va[1] and va[0] < tr[1]:
        raise UserInputError(
            train_file, "--train-range", f"{list(tr)} overlaps the validation range {list(va)}"
        )
    entries = []
    for i, (cname, n_steps, given) in enumerate(crossval):
        file = crossval_files[i] if crossval_files else Path(cname)
        rng = given if given is not None else (skip_rows(n_steps), n_steps)
        _check_range(rng, n_steps, file, f"--crossval {cname}", need, why=why)
        entries.append(CrossvalEntry(name=cname, dataset=cname, range=rng))
    return SuiteManifest(
        format_version=FORMAT_VERSION,
        name=name,
        train=TrainEntry(dataset=TRAIN_DIR, train_range=tr, val_range=va),
        crossval=entries,
    )


def describe_ranges(manifest: SuiteManifest, sources: dict[str, Path]) -> list[str]:
    """Lines stating the chosen ranges (printed by the commands, so defaults are visible)."""
    t = manifest.train
    lines = [
        f"train    {sources[TRAIN_DIR]}: train_range [{t.train_range[0]}, {t.train_range[1]}), "
        f"val_range [{t.val_range[0]}, {t.val_range[1]})"
    ]
    for c in manifest.crossval:
        lines.append(f"crossval {c.name} {sources[c.name]}: range [{c.range[0]}, {c.range[1]})")
    return lines


def _same_network(train: Dataset, ds: Dataset, name: str) -> None:
    for attr, what in (("n_neurons", "neurons"), ("n_stimulus", "stimulus inputs")):
        a, b = getattr(ds, attr), getattr(train, attr)
        if a != b:
            raise UserInputError(
                ds.path,
                f"--crossval {name}",
                f"has {a} {what}, the training dataset {train.path} has {b} "
                "(a suite's datasets must record the same network)",
            )


def build_suite(
    train: Path,
    crossval: Sequence[CrossvalSource],
    out: Path,
    *,
    train_range: tuple[int, int] | None = None,
    val_range: tuple[int, int] | None = None,
    rollout_steps: int = DEFAULT_ROLLOUT_STEPS,
    margin: int = DEFAULT_MARGIN,
    name: str | None = None,
) -> tuple[Path, SuiteManifest, dict[str, Path]]:
    """Link existing datasets into the new suite dir `out` (atomically); return its manifest."""
    out = Path(out)
    train_ds = Dataset.open(train)
    cvs = []
    for c in crossval:
        check_name(c.name, "--crossval")
        ds = Dataset.open(c.path)
        _same_network(train_ds, ds, c.name)
        cvs.append((c.name, ds.n_steps, c.range))
    manifest = plan_manifest(
        name or out.name or "suite",
        train_ds.n_steps,
        cvs,
        train_range=train_range,
        val_range=val_range,
        rollout_steps=rollout_steps,
        margin=margin,
        train_file=Path(train),
        crossval_files=[c.path for c in crossval],
    )
    sources = {TRAIN_DIR: Path(train).resolve(), **{c.name: c.path.resolve() for c in crossval}}
    with atomic_dir(out) as tmp:
        for sub, target in sources.items():
            os.symlink(target, tmp / sub, target_is_directory=True)
        write_manifest(tmp, manifest)
        Suite.open(tmp)  # the same checks a run makes, before anything is published
    return out, manifest, sources
