"""`python -m latent_tune.data`: simulate a demo suite, inspect a dataset/suite, import lab data.

Bad input (flags, paths, broken datasets) is reported as one stderr line
`<file>: <key>: <problem>` with exit status 2, and nothing is written.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from latent_tune.data.format import HEADER_FILE, STIMULUS, SUITE_FILE, arrow_file
from latent_tune.data.network import PRESETS
from latent_tune.data.reader import Dataset
from latent_tune.data.simulate import simulate_suite
from latent_tune.data.suite import Suite
from latent_tune.errors import CliParser, UserInputError, run_cli

__all__ = ["main"]

_ZARR_HINT = "needs the zarr extra: pip install 'latent-tune[zarr]'"


def _parser() -> argparse.ArgumentParser:
    p = CliParser(prog="python -m latent_tune.data", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True, parser_class=CliParser)
    s = sub.add_parser("simulate", help="simulate a demo suite (train + cross-val datasets)")
    s.add_argument("--out", required=True, type=Path, help="new suite directory")
    s.add_argument("--preset", default="demo", help=f"one of {', '.join(PRESETS)}")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--force", action="store_true", help="replace an existing --out")
    i = sub.add_parser("info", help="print a dataset's or suite's header and sizes")
    i.add_argument("path", type=Path, help="dataset or suite directory")
    i.add_argument("--check", action="store_true", help="also scan all arrays for NaN/inf")
    z = sub.add_parser("import-zarr", help="convert the lab's x_list_0/ zarr layout")
    z.add_argument("src", type=Path, help="the x_list_0/ directory")
    z.add_argument("--out", required=True, type=Path, help="new dataset directory")
    z.add_argument("--n-stimulus", type=int, default=1736, help="photoreceptor count S")
    z.add_argument("--force", action="store_true", help="replace an existing --out")
    return p


def _check_out(out: Path, force: bool) -> None:
    """Refuse to overwrite an existing non-empty directory unless --force."""
    if out.exists() and not force and (not out.is_dir() or any(out.iterdir())):
        raise UserInputError(out, "--out", "already exists (choose another path or --force)")


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def dataset_info(ds: Dataset) -> str:
    """Header as YAML plus per-file shapes and sizes."""
    header = ds.header.model_dump(mode="json")
    provenance = header.pop("provenance")
    lines = [f"dataset {ds.path}", yaml.safe_dump(header, sort_keys=False).rstrip()]
    if provenance:  # nested entries (simulator parameters...) stay in dataset.yaml
        lines.append("provenance:")
        for k, v in provenance.items():
            shown = f"({len(v)} entries, see {HEADER_FILE})" if isinstance(v, dict | list) else v
            lines.append(f"  {k}: {shown}")
    lines.append("files:")
    for key in [*ds.quantities, STIMULUS]:
        arr = ds.stimulus() if key == STIMULUS else ds.activity(key)
        size = (ds.path / arrow_file(key)).stat().st_size
        lines.append(
            f"  {arrow_file(key)}: {arr.shape[0]} x {arr.shape[1]} float32, {_human(size)}"
        )
    pre, _, _ = ds.connectome()
    n_types = len(ds.type_names())
    for name, what in (
        ("neurons.parquet", f"{ds.n_neurons} neurons, {n_types} cell types"),
        ("connectome.parquet", f"{pre.size} edges"),
    ):
        lines.append(f"  {name}: {what}, {_human((ds.path / name).stat().st_size)}")
    total = sum(p.stat().st_size for p in ds.path.iterdir() if p.is_file())
    lines.append(f"total: {_human(total)}, {ds.n_steps * ds.dt:.1f} s of activity")
    return "\n".join(lines)


def _info(path: Path, check: bool) -> int:
    if (path / SUITE_FILE).is_file():
        suite = Suite.open(path)
        m = suite.manifest
        print(f"suite {path}")
        print(yaml.safe_dump(m.model_dump(mode="json"), sort_keys=False).rstrip())
        datasets = {suite.train.path: suite.train}
        datasets.update({ds.path: ds for _, ds, _ in suite.crossval})
    elif (path / HEADER_FILE).is_file():
        ds = Dataset.open(path)
        datasets = {ds.path: ds}
    elif not path.exists():
        raise UserInputError(path, None, "does not exist")
    else:
        raise UserInputError(
            path, None, f"neither a dataset ({HEADER_FILE}) nor a suite ({SUITE_FILE})"
        )
    for ds in datasets.values():
        print(dataset_info(ds))
    if check:
        for ds in datasets.values():
            ds.check()
        print(f"check: ok (no NaN/inf in {len(datasets)} dataset(s))")
    return 0


def _simulate(out: Path, preset: str, seed: int, force: bool) -> int:
    if preset not in PRESETS:
        raise UserInputError(
            None, "--preset", f"unknown preset {preset!r} (one of {list(PRESETS)})"
        )
    _check_out(out, force)
    path = simulate_suite(out, preset=preset, seed=seed)
    print(f"wrote suite {path}")
    return 0


def _import_zarr(src: Path, out: Path, n_stimulus: int, force: bool) -> int:
    if not src.is_dir():
        raise UserInputError(src, None, "not a directory (expected the lab's x_list_0/)")
    if n_stimulus < 0:
        raise UserInputError(None, "--n-stimulus", f"must be >= 0, got {n_stimulus}")
    _check_out(out, force)
    try:
        importer = importlib.import_module("latent_tune.data.importer_zarr")
    except ImportError as e:
        if e.name in ("zarr", "numcodecs") or (e.name or "").startswith(("zarr.", "numcodecs.")):
            raise UserInputError(None, "import-zarr", _ZARR_HINT) from e
        raise
    path = importer.import_zarr(src, out, n_stimulus=n_stimulus)
    print(f"wrote dataset {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (2 on bad input)."""

    def body() -> int:
        try:
            args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
        except SystemExit as e:  # --help
            return int(e.code or 0)
        if args.command == "simulate":
            return _simulate(args.out, args.preset, args.seed, args.force)
        if args.command == "info":
            return _info(args.path, args.check)
        return _import_zarr(args.src, args.out, args.n_stimulus, args.force)

    return run_cli(body)
