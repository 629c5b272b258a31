"""Recipe names -> Recipe classes: the bundled ones, in-process registrations, or user code.

Why a registry of import paths instead of imports: config validation needs a recipe's config
class, and recipes import the config module; resolving by import path at call time keeps the
import graph acyclic. A config's `recipe:` is a registered name or `package.module:Class`;
naming a module in a config runs its code, so only train configs you trust.
"""

from __future__ import annotations

import importlib
import os
import re
from typing import Any

from latent_tune.errors import UserInputError

__all__ = ["BUNDLED", "recipe_names", "register_recipe", "resolve_recipe"]

BUNDLED = {
    "staggered": "latent_tune.training.recipes.eed:StaggeredRecipe",
    "aligned": "latent_tune.training.recipes.eed:AlignedRecipe",
    "lfads": "latent_tune.training.recipes.lfads:LFADSRecipe",
}
_REGISTERED: dict[str, Any] = {}
_MODULE_CLASS = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_]*$")


def register_recipe(name: str, cls: Any) -> None:
    """Register a Recipe class under `name` in this process (tests, notebooks)."""
    _REGISTERED[name] = cls


def recipe_names() -> list[str]:
    """The names a config's `recipe:` accepts without a module path."""
    return sorted({*BUNDLED, *_REGISTERED})


def resolve_recipe(name: str, *, file: str | os.PathLike[str] | None = None) -> Any:
    """The Recipe class of `name`: registered, bundled, or `package.module:Class`."""
    if name in _REGISTERED:
        return _REGISTERED[name]
    path = BUNDLED.get(name, name)
    if not _MODULE_CLASS.match(path):
        raise UserInputError(
            file,
            "recipe",
            f"unknown recipe {name!r} (bundled: {', '.join(recipe_names())}; "
            "or name your own as package.module:Class)",
        )
    module_name, cls_name = path.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserInputError(file, "recipe", f"cannot import {module_name}: {exc}") from None
    cls = getattr(module, cls_name, None)
    if cls is None or not hasattr(cls, "config_class"):
        raise UserInputError(file, "recipe", f"{module_name} has no recipe class {cls_name}")
    return cls
