"""Loading a training config: YAML file, ``key.path=value`` overrides, validation, flattening.

Why: every command and every trial reads its config the same way, and every failure
(unreadable, not YAML, unknown key, bad value) is one ``UserInputError`` naming the file and the
dotted key. The config class comes from the ``recipe:`` key, resolved by name at call time, so
this module imports no config class.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, get_args, get_origin

from pydantic import BaseModel, ValidationError

from latent_tune.errors import UserInputError
from latent_tune.sanity import check_values, load_yaml_mapping, parse_assignment
from latent_tune.training.recipes.registry import resolve_recipe

__all__ = [
    "KeyedValueError",
    "apply_overrides",
    "config_class",
    "flatten",
    "load_config",
    "parse_overrides",
    "validate_config",
]


class KeyedValueError(ValueError):
    """A validation error that knows the dotted key (relative to its model) it is about.

    Why: cross-field validators run at model level, where pydantic reports no field location;
    carrying the key lets ``validate_config`` name the offending leaf anyway.
    """

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(problem)
        self.key = key
        self.problem = problem


def _kind(value: Any) -> str:
    return type(value).__name__


def load_config(path: Path | str, overrides: Sequence[str] = ()) -> Any:
    """Read a YAML config, apply ``key.path=value`` overrides, validate.

    Every failure (unreadable, not UTF-8, not YAML, not a mapping, unknown key, bad value) is a
    ``UserInputError`` naming the file and, where there is one, the dotted key.
    """
    path = Path(path)
    data = load_yaml_mapping(path)
    data = apply_overrides(data, parse_overrides(overrides, file=path), file=path)
    check_values(data, path)
    return validate_config(data, file=path)


def parse_overrides(
    overrides: Sequence[str], *, file: str | os.PathLike[str] | None = None
) -> dict[str, Any]:
    """``["a.b=1", "c=[1, 2]"]`` -> ``{"a.b": 1, "c": [1, 2]}`` (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for item in overrides:
        key, value = parse_assignment(item, file)
        out[key] = value
    return out


def _model_class(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model class inside an annotation (``X``, ``X | None``), else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) is not None:
        for arg in get_args(annotation):
            found = _model_class(arg)
            if found is not None:
                return found
    return None


def config_class(recipe: Any, *, file: str | os.PathLike[str] | None = None) -> type[Any]:
    """The config class of a recipe name (bundled, registered or `package.module:Class`)."""
    name = "staggered" if recipe is None else recipe
    if not isinstance(name, str):
        raise UserInputError(file, "recipe", f"expected a recipe name, got {_kind(name)}")
    return resolve_recipe(name, file=file).config_class


def _check_path(parts: list[str], root: type[BaseModel]) -> bool:
    """Whether ``parts`` names a field of config class ``root`` (a leaf or a whole section)."""
    cls: type[BaseModel] | None = root
    for part in parts:
        if cls is None or part not in cls.model_fields:
            return False
        cls = _model_class(cls.model_fields[part].annotation)
    return True


def apply_overrides(
    cfg_dict: dict[str, Any],
    overrides: Mapping[str, Any],
    *,
    file: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Return a copy of ``cfg_dict`` with each dotted key set to its value.

    Keys are checked against the schema (not the dict, which may omit defaults): an unknown
    path is a ``UserInputError(file, path, "unknown key ...")``. Values are validated later.
    """
    out = copy.deepcopy(cfg_dict)
    root = config_class(overrides.get("recipe", out.get("recipe")), file=file)
    for key, value in overrides.items():
        parts = key.split(".")
        if not all(parts) or not _check_path(parts, root):
            raise UserInputError(file, key, "unknown key (not a field of the training config)")
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                where = ".".join(parts[: i + 1])
                raise UserInputError(file, where, f"expected a mapping, got {_kind(child)}")
            node = child
        node[parts[-1]] = copy.deepcopy(value)
    return out


def _first_error(exc: ValidationError) -> tuple[str, str]:
    err = exc.errors(include_url=False)[0]
    loc = [str(p) for p in err.get("loc", ())]
    problem = err.get("msg", "invalid value")
    cause = (err.get("ctx") or {}).get("error")
    if isinstance(cause, KeyedValueError):
        loc = [*loc, cause.key]
        problem = cause.problem
    elif err.get("type") == "extra_forbidden":
        problem = "unknown key (not a field of the training config)"
    elif problem.startswith("Value error, "):
        problem = problem[len("Value error, ") :]
    return ".".join(loc) or "-", problem


def validate_config(d: Mapping[str, Any], *, file: str | os.PathLike[str] | None = None) -> Any:
    """Validate a plain dict into its recipe's config class (``recipe:``, default staggered);
    the first pydantic error becomes UserInputError(file, key, msg)."""
    if not isinstance(d, Mapping):
        raise UserInputError(file, None, f"expected a mapping at top level, got {_kind(d)}")
    cls = config_class(d.get("recipe"), file=file)
    try:
        return cls.model_validate(dict(d))
    except ValidationError as exc:
        key, problem = _first_error(exc)
        raise UserInputError(file, key, problem) from None


def flatten(cfg: BaseModel) -> dict[str, Any]:
    """Dotted leaf path -> JSON-able value (lists, e.g. ranges, stay whole leaves)."""
    out: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            out[prefix] = node

    walk("", cfg.model_dump(mode="json"))
    return out
