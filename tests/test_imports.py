"""Every module of latent_tune imports, and the layering data -> model -> training -> tune holds.

Why parse imports instead of trusting the import test alone: an upward import can work by
accident (the upper module happens to be importable) and still create the cycles and heavy
import chains the layering exists to prevent.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import unittest
from pathlib import Path

import latent_tune

PACKAGE = "latent_tune"
ROOT = Path(latent_tune.__file__).resolve().parent
# Sub-package -> layer; a module may import only its own layer or lower ones.
LAYERS = {"data": 1, "model": 2, "training": 3, "tune": 4}
# Top-level command modules belong to the layer of the sub-package they front.
TOP_LEVEL = {"train": 3, "search": 4, "report": 4, "verify": 4}
BASE = 0  # errors, atomic, __init__: import no sub-package at all


def all_modules() -> list[str]:
    """Dotted names of every module and package under latent_tune (not imported)."""
    names = [PACKAGE]
    for info in pkgutil.walk_packages([str(ROOT)], prefix=f"{PACKAGE}."):
        names.append(info.name)
    return sorted(names)


def module_file(name: str) -> Path:
    parts = name.split(".")[1:]
    path = ROOT.joinpath(*parts)
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def layer_of(name: str) -> int:
    parts = name.split(".")
    if len(parts) == 1:
        return BASE
    if parts[1] in LAYERS:
        return LAYERS[parts[1]]
    return TOP_LEVEL.get(parts[1], BASE)


def imported_names(name: str) -> list[tuple[str, int]]:
    """(absolute module name, line) of every import statement in a module, relative resolved."""
    path = module_file(name)
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_pkg = path.name == "__init__.py"
    package_parts = name.split(".") if is_pkg else name.split(".")[:-1]
    out: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package_parts[: len(package_parts) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.append((mod, node.lineno))
            # `from latent_tune import training` imports a sub-package too.
            out.extend((f"{mod}.{alias.name}", node.lineno) for alias in node.names)
    return out


class TestImports(unittest.TestCase):
    def test_every_module_imports(self) -> None:
        names = all_modules()
        self.assertIn("latent_tune.training.trainer", names)
        self.assertIn("latent_tune.data.reader", names)
        for name in names:
            with self.subTest(module=name):
                importlib.import_module(name)

    def test_layering_never_imports_upward(self) -> None:
        problems = []
        for name in all_modules():
            own = layer_of(name)
            for target, line in imported_names(name):
                top = target.split(".")[0]
                if top == "trainables":
                    problems.append(f"{name}:{line} imports trainables ({target})")
                if top != PACKAGE or target == PACKAGE:
                    continue
                parts = target.split(".")
                if parts[1] not in LAYERS and parts[1] not in TOP_LEVEL:
                    continue  # a base module (errors, atomic) or a name inside the package root
                if layer_of(target) > own:
                    problems.append(f"{name}:{line} imports {target} (a higher layer)")
        self.assertEqual(problems, [], "\n".join(problems))

    def test_layer_table_covers_every_subpackage(self) -> None:
        subpackages = {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()}
        self.assertEqual(subpackages - set(LAYERS), set())


if __name__ == "__main__":
    unittest.main()
