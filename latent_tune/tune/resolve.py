"""Resolve what a search space names: the trainable function, its base config, the trial configs.

Why: latent_tune never imports `trainables` except here, by name, and only in two forms a user
wrote: a bare name (`eed_staggered` -> `trainables.eed_staggered.train`, restricted to that
package) or an explicit `package.module:function`. The same resolution turns a trial's sampled
values into a validated training config (its recipe's class), in the driver (before Ray
starts) and in the trial.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from latent_tune.bundled import bundled_dir
from latent_tune.errors import UserInputError
from latent_tune.sanity import check_values, load_yaml_mapping
from latent_tune.training.config import BaseTrainConfig
from latent_tune.training.config_loading import apply_overrides, flatten, validate_config
from latent_tune.training.eed_config import config_paths
from latent_tune.tune.records import check_fixed_evaluation
from latent_tune.tune.space import SearchSpace

__all__ = [
    "META_KEY",
    "Resolved",
    "bundled_dir",
    "coerce_value",
    "find_base_config",
    "make_trial_fn",
    "resolve",
    "resolve_trainable",
    "trial_config",
]

META_KEY = "_latent_tune"  # the fixed part of every trial's Tune config (base config etc.)
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MODULE_FN = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_]*$")


def resolve_trainable(name: str, *, file: str | os.PathLike | None = None) -> Callable:
    """`eed_staggered` -> trainables.eed_staggered.train; `pkg.mod:fn` -> that function."""
    key = "trainable"
    if _NAME.match(name):
        module_name, fn_name = f"trainables.{name}", "train"
        if (
            bundled_dir("trainables") is None
            or not (
                bundled_dir("trainables") / f"{name}.py"  # type: ignore[operator]
            ).is_file()
        ):
            raise UserInputError(
                file,
                key,
                f"no bundled trainable '{name}' (trainables/{name}.py); "
                "name your own as package.module:function",
            )
    elif _MODULE_FN.match(name):
        module_name, fn_name = name.split(":")
    else:
        raise UserInputError(file, key, f"'{name}' is neither a bundled name nor module:function")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserInputError(file, key, f"cannot import {module_name}: {exc}") from None
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise UserInputError(file, key, f"{module_name} has no function {fn_name}")
    return fn


def find_base_config(base: str, space_file: Path) -> Path:
    """A path (as given, or relative to the space file), else a bundled name in trainables/."""
    p = Path(base)
    candidates = [p] if p.is_absolute() else [Path.cwd() / p, space_file.parent / p]
    tdir = bundled_dir("trainables")
    if tdir is not None:
        candidates.append(tdir / p.name)
    for c in candidates:
        if c.is_file():
            return c.resolve()
    raise UserInputError(space_file, "base", f"no such config file '{base}' (nor in trainables/)")


def coerce_value(value: Any, like: Any) -> Any:
    """Keep integer config leaves integers (an explore step or float sampler may give 20.0)."""
    if isinstance(like, bool) or isinstance(value, bool):
        return value
    if isinstance(like, int) and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


@dataclass
class Resolved:
    """Everything the driver knows about a space before Ray starts."""

    space: SearchSpace
    space_file: Path
    trainable: Callable
    recipe: str | None
    base_file: Path
    base_dict: dict[str, Any]  # base config with the space's overrides applied (not validated)
    base_config: BaseTrainConfig
    leaf_defaults: dict[str, Any] = field(default_factory=dict)

    def meta(self) -> dict:
        """The constant part of each trial's Tune config (what the trainable needs)."""
        sch = self.space.scheduler
        interval = getattr(sch, "perturbation_interval", None)
        return {
            "base": yaml.safe_dump(self.base_dict, sort_keys=False),
            "space_file": str(self.space_file),
            # population-based: only on boundaries, so PBT's donor checkpoint is the newest
            "checkpoint_every": interval or self.space.checkpoint.every,
            "perturbation_interval": interval or 0,
            "cpu": self.space.resources.cpu,
            "gpu": self.space.resources.gpu,
            "metric": self.space.objective.metric,
            "recipe": self.recipe,
        }


def make_trial_fn(trainable: str, meta: Mapping[str, Any], name: str) -> Callable:
    """The function Tune runs: the named trainable, with the fixed metadata added to its config.

    Why not put the metadata in param_space: Tune would list it in every trial's name and
    results; passing it here keeps trial names and tables to the sampled values. The trainable
    is re-resolved in the worker by name, so nothing but the name and the metadata is pickled.
    """
    fixed = dict(meta)

    def trial(config: dict[str, Any]) -> Any:
        fn = resolve_trainable(trainable)
        return fn({**config, META_KEY: fixed})

    trial.__name__ = trial.__qualname__ = name
    return trial


def trial_config(
    base_dict: Mapping[str, Any],
    params: Mapping[str, Any],
    *,
    recipe: str | None,
    file: str | os.PathLike | None,
    defaults: Mapping[str, Any] | None = None,
) -> BaseTrainConfig:
    """Base config + sampled dotted values -> validated training config (its recipe's class)."""
    d = dict(base_dict)
    if recipe is not None:
        d["recipe"] = recipe
    if defaults:
        params = {k: coerce_value(v, defaults.get(k)) for k, v in params.items()}
    d = apply_overrides(d, params, file=file)
    return validate_config(d, file=file)


def _read_yaml(path: Path) -> dict[str, Any]:
    raw = load_yaml_mapping(path)
    check_values(raw, path)
    return raw


def _absolute_paths(d: dict[str, Any], root: Path) -> dict[str, Any]:
    """Make data paths absolute: trials run in their own working dirs, maybe on other nodes."""
    data = d.get("data")
    if isinstance(data, dict):
        suite = data.get("suite")
        if (
            isinstance(suite, str)
            and suite
            and "://" not in suite
            and not Path(suite).is_absolute()
        ):
            data["suite"] = str((root / suite).resolve())
        for entry in data.get("crossval") or []:
            p = entry.get("path") if isinstance(entry, dict) else None
            if isinstance(p, str) and p and not Path(p).is_absolute():
                entry["path"] = str((root / p).resolve())
    return d


def resolve(space: SearchSpace, space_file: Path) -> Resolved:
    """Resolve and validate everything a space refers to, before Ray starts.

    Checks: the trainable imports; the base config exists; overrides apply and validate; every
    space key is a leaf of the training config; each range end / option validates alone, and
    all lows together and all highs together validate.
    """
    check_fixed_evaluation(space, space_file)
    fn = resolve_trainable(space.trainable, file=space_file)
    recipe = getattr(importlib.import_module(fn.__module__), "RECIPE", None)
    base_name = space.base or f"{space.trainable.split(':')[-1]}.yaml"
    base_file = find_base_config(base_name, space_file)
    d = _read_yaml(base_file)
    overrides = dict(space.overrides)
    if space.data.suite is not None:
        overrides["data.suite"] = space.data.suite
    if space.data.preset is not None:
        overrides["data.preset"] = space.data.preset
    if recipe is not None:
        d["recipe"] = recipe
    try:
        d = apply_overrides(d, overrides, file=space_file)
    except UserInputError as exc:
        raise UserInputError(space_file, f"overrides.{exc.key}", exc.problem) from None
    d = _absolute_paths(d, Path.cwd())
    try:
        cfg = validate_config(d, file=space_file)
    except UserInputError as exc:
        raise UserInputError(
            space_file, exc.key, f"{exc.problem} (base config {base_file.name} + overrides)"
        ) from None
    paths = config_paths(cfg)
    leaves = flatten(cfg)
    for key in space.space:
        if key not in paths:
            raise UserInputError(
                space_file, f"space.{key}", f"not a key of the training config ({base_file.name})"
            )
    res = Resolved(space, space_file, fn, recipe, base_file, d, cfg, leaves)
    _check_extremes(res)
    return res


def _config_error(res: Resolved, params: dict[str, Any]) -> UserInputError | None:
    """Why `params` on the base config give no valid trial config (None when they do)."""
    try:
        trial_config(
            res.base_dict,
            params,
            recipe=res.recipe,
            file=res.space_file,
            defaults=res.leaf_defaults,
        )
    except UserInputError as exc:
        return exc
    return None


def _check_extremes(res: Resolved) -> None:
    """Every range end and option must give a valid config (else trials would crash later)."""
    space = res.space.space
    for key, entry in space.items():
        for value in entry.extremes():
            exc = _config_error(res, {key: value})
            if exc is not None:
                raise UserInputError(
                    res.space_file,
                    f"space.{key}",
                    f"value {value!r} gives an invalid config: {exc.key}: {exc.problem}",
                )
    numeric = {k: e for k, e in space.items() if e.kind in ("uniform", "loguniform", "randint")}
    if len(numeric) > 1:
        for pick in (0, 1):
            params = {k: e.extremes()[pick] for k, e in numeric.items()}
            label = "all lows together" if pick == 0 else "all highs together"
            exc = _config_error(res, params)
            if exc is not None:
                raise UserInputError(
                    res.space_file,
                    f"space.{exc.key}",
                    f"{label} give an invalid config: {exc.problem}",
                )
