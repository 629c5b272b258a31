"""`python -m latent_tune.data`: simulate, inspect, import data, build a suite of datasets.

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
from latent_tune.data.importer_arrays import import_arrays, parse_source
from latent_tune.data.network import PRESETS
from latent_tune.data.reader import Dataset
from latent_tune.data.simulate import simulate_suite
from latent_tune.data.suite import Suite
from latent_tune.data.suite_builder import (
    DEFAULT_MARGIN,
    DEFAULT_ROLLOUT_STEPS,
    build_suite,
    describe_ranges,
    parse_crossval,
    parse_range,
)
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
    z = sub.add_parser(
        "import-zarr",
        help="convert the lab's x_list_0/ zarr layout (several stores: a suite)",
    )
    z.add_argument("src", type=Path, help="the x_list_0/ directory (or its parent): training")
    z.add_argument(
        "--out", required=True, type=Path, help="new dataset (or, with --crossval, suite)"
    )
    z.add_argument(
        "--n-stimulus",
        type=int,
        default=None,
        help="photoreceptor count S (default: read from the metadata; refused if it disagrees)",
    )
    z.add_argument(
        "--quantities",
        default="voltage,calcium",
        help="comma list of voltage, calcium, fluorescence (default voltage,calcium)",
    )
    z.add_argument("--dt", type=float, default=0.02, help="seconds per step (default 0.02)")
    names = z.add_mutually_exclusive_group()
    names.add_argument("--type-names", type=Path, help="text file, one type name per line (id i)")
    names.add_argument(
        "--lab-types", action="store_true", help="name types with the lab's 65 cell-type names"
    )
    z.add_argument(
        "--input-types",
        default=None,
        help="comma list of photoreceptor type ids (default: the lab's R1-R8), or 'none'",
    )
    _suite_args(z, "STORE")
    z.add_argument("--force", action="store_true", help="replace an existing --out")
    a = sub.add_parser("import-arrays", help="convert .npy/.npz/HDF5 arrays (dense recordings)")
    a.add_argument(
        "--activity",
        action="append",
        required=True,
        metavar="[QUANTITY=]FILE[:KEY]",
        help="activity array (T, N) or (N, T); QUANTITY defaults to voltage; repeat for more",
    )
    a.add_argument(
        "--stimulus", required=True, metavar="FILE[:KEY]", help="stimulus (T, S), (S, T) or (T,)"
    )
    a.add_argument("--out", required=True, type=Path, help="new dataset directory")
    a.add_argument("--layout", choices=("tn", "nt"), help="activity axes (default: inferred)")
    a.add_argument("--stimulus-layout", choices=("tn", "nt"), help="stimulus axes")
    a.add_argument("--connectome", type=Path, help="edge list pre, post[, weight] (.npy/.csv)")
    a.add_argument("--dt", type=float, default=0.02, help="seconds per step (default 0.02)")
    a.add_argument("--name", help="dataset name (default: the --out directory's name)")
    a.add_argument("--force", action="store_true", help="replace an existing --out")
    b = sub.add_parser("suite", help="make a suite of existing datasets (links, no copy)")
    b.add_argument("--train", required=True, type=Path, help="the training dataset directory")
    b.add_argument("--out", required=True, type=Path, help="new suite directory")
    b.add_argument("--name", help="suite name (default: the --out directory's name)")
    _suite_args(b, "DIR", required=True)
    b.add_argument("--force", action="store_true", help="replace an existing --out")
    return p


def _suite_args(p: argparse.ArgumentParser, what: str, required: bool = False) -> None:
    p.add_argument(
        "--crossval",
        action="append",
        required=required,
        default=[],
        metavar=f"NAME={what}[@A:B]",
        help="a cross-validation recording (another stimulus family); repeat for more",
    )
    p.add_argument(
        "--train-range",
        metavar="A:B",
        help="training rows (default: from row min(5000, 10%% of T) to --val-range)",
    )
    p.add_argument("--val-range", metavar="A:B", help="validation rows (default: last 20%%)")
    p.add_argument(
        "--rollout-steps",
        type=int,
        default=DEFAULT_ROLLOUT_STEPS,
        help=f"evaluation.rollout_steps each evaluation range must hold "
        f"(default {DEFAULT_ROLLOUT_STEPS})",
    )
    p.add_argument(
        "--margin",
        type=int,
        default=DEFAULT_MARGIN,
        help=f"rows before the first evaluation start (default {DEFAULT_MARGIN})",
    )


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


def _zarr_module():
    try:
        return importlib.import_module("latent_tune.data.importer_zarr")
    except ImportError as e:
        if e.name in ("zarr", "numcodecs") or (e.name or "").startswith(("zarr.", "numcodecs.")):
            raise UserInputError(None, "import-zarr", _ZARR_HINT) from e
        raise


def _ranges(args: argparse.Namespace) -> dict:
    return {
        "train_range": parse_range(args.train_range, "--train-range") if args.train_range else None,
        "val_range": parse_range(args.val_range, "--val-range") if args.val_range else None,
        "rollout_steps": args.rollout_steps,
        "margin": args.margin,
    }


def _input_types(text: str | None, default: tuple[int, ...]) -> tuple[int, ...]:
    if text is None:
        return default
    if text.strip().lower() == "none":
        return ()
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UserInputError(
            None, "--input-types", f"{text!r} is not a comma list of ids"
        ) from None


def _import_zarr(args: argparse.Namespace) -> int:
    src, out = args.src, args.out
    if not src.is_dir():
        raise UserInputError(src, None, "not a directory (expected the lab's x_list_0/)")
    if args.n_stimulus is not None and args.n_stimulus < 0:
        raise UserInputError(None, "--n-stimulus", f"must be >= 0, got {args.n_stimulus}")
    crossval = [parse_crossval(c) for c in args.crossval]
    ranges = _ranges(args)
    if not crossval and any(ranges[k] is not None for k in ("train_range", "val_range")):
        raise UserInputError(None, "--train-range", "ranges need --crossval (a suite)")
    _check_out(out, args.force)
    importer = _zarr_module()
    type_names = importer.read_type_names(args.type_names) if args.type_names else None
    quantities = [q.strip() for q in args.quantities.split(",") if q.strip()]
    kw = {
        "quantities": quantities,
        "dt": args.dt,
        "type_names": type_names,
        "lab_types": args.lab_types,
        "input_types": _input_types(args.input_types, importer.LAB_INPUT_TYPES),
        "n_stimulus": args.n_stimulus,
    }
    if not crossval:
        path = importer.import_zarr(src, out, **kw)
        print(f"wrote dataset {path}")
        return 0
    path, manifest, sources = importer.import_zarr_suite(src, crossval, out, **ranges, **kw)
    print("\n".join(describe_ranges(manifest, sources)))
    print(f"wrote suite {path}")
    return 0


def _import_arrays(args: argparse.Namespace) -> int:
    activity = []
    for text in args.activity:
        q, sep, rest = text.partition("=")
        if not sep or "/" in q or not q:
            q, rest = "voltage", text
        activity.append((q, parse_source(rest)))
    names = [q for q, _ in activity]
    if len(set(names)) != len(names):
        raise UserInputError(None, "--activity", f"quantities {names} are given more than once")
    _check_out(args.out, args.force)
    summary = import_arrays(
        activity,
        parse_source(args.stimulus),
        args.out,
        layout=args.layout,
        stimulus_layout=args.stimulus_layout,
        connectome=args.connectome,
        dt=args.dt,
        name=args.name,
    )
    for line in summary.warnings:
        print(line, file=sys.stderr)
    print(
        f"layout {summary.layout}: T = {summary.n_steps}, N = {summary.n_neurons}, "
        f"S = {summary.n_stimulus}, {summary.n_edges} connectome edges"
    )
    print(f"wrote dataset {summary.path}")
    return 0


def _suite(args: argparse.Namespace) -> int:
    crossval = [parse_crossval(c) for c in args.crossval]
    ranges = _ranges(args)
    _check_out(args.out, args.force)
    path, manifest, sources = build_suite(args.train, crossval, args.out, name=args.name, **ranges)
    print("\n".join(describe_ranges(manifest, sources)))
    print(f"wrote suite {path} (links, no data copied)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (2 on bad input)."""

    def body() -> int:
        args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
        if args.command == "simulate":
            return _simulate(args.out, args.preset, args.seed, args.force)
        if args.command == "info":
            return _info(args.path, args.check)
        commands = {"import-zarr": _import_zarr, "import-arrays": _import_arrays, "suite": _suite}
        return commands[args.command](args)

    return run_cli(body)
