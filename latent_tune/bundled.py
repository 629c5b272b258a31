"""Where the files bundled with latent_tune live (`trainables/`, `search_spaces/`).

Why a base-layer module: both `train` (layer training) and the search (layer tune) look up
bundled configs by name, and they must find them from any working directory, through the
installed packages rather than a path relative to where the command runs.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

__all__ = ["bundled_dir", "bundled_file"]


def bundled_dir(package: str) -> Path | None:
    """Directory of a bundled data package (`trainables`, `search_spaces`), if importable."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def bundled_file(package: str, name: str, suffix: str = ".yaml") -> Path | None:
    """`<package dir>/<name><suffix>` when `name` is a bare file name and that file exists."""
    if Path(name).name != name:
        return None
    root = bundled_dir(package)
    if root is None:
        return None
    path = root / (name if name.endswith(suffix) else f"{name}{suffix}")
    return path if path.is_file() else None
