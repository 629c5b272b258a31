"""Reading every YAML a user hands us (configs, search spaces, dataset headers), safely.

Why: a pydantic schema checks types and ranges field by field, but two kinds of bad input slip
past it or crash before it runs: deeply nested YAML (PyYAML's composer recurses, so
`[[[[...]]]]` raises RecursionError, a traceback instead of a one-line error) and absurd
numbers (an epoch count of 1e40, an infinite learning rate) that validate as "positive" and
then hang or crash a run days later. Both become a `UserInputError` naming the file and key,
as do an unreadable file, bytes that are not UTF-8, a syntax error (with its line) and a
document that is not a mapping: one reader, so every command words them the same way.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import yaml

from latent_tune.errors import UserInputError

__all__ = [
    "MAX_ABS_NUMBER",
    "MAX_DEPTH",
    "check_values",
    "check_yaml_depth",
    "load_yaml_mapping",
    "parse_assignment",
    "parse_yaml",
    "parse_yaml_mapping",
    "read_text",
]

MAX_DEPTH = 32  # configs nest 4 levels; anything deeper is garbage, not a config
MAX_ABS_NUMBER = 2**53  # beyond this float64 (JSON, Parquet, Tune) cannot hold an int exactly


def check_yaml_depth(text: str, file: str | os.PathLike[str] | None) -> None:
    """Refuse YAML nested deeper than MAX_DEPTH, using the parser's events (no recursion)."""
    depth = 0
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_DEPTH:
                    mark = event.start_mark
                    where = f"line {mark.line + 1}" if mark is not None else None
                    raise UserInputError(
                        file, where, f"nested deeper than {MAX_DEPTH} levels (not a config)"
                    )
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
    except yaml.YAMLError:
        return  # the real load reports the syntax error with its own wording


def check_values(node: Any, file: str | os.PathLike[str] | None, prefix: str = "") -> None:
    """Every number in a parsed document is finite and at most MAX_ABS_NUMBER in magnitude.

    YAML aliases may share (or contain) a node: each container is checked once, so a
    "billion laughs" document costs linear time, and a cycle is refused outright.
    """
    _walk(node, file, prefix, set(), set())


def _walk(node: Any, file: Any, prefix: str, path: set[int], seen: set[int]) -> None:
    if isinstance(node, dict | list | tuple):
        if id(node) in path:
            raise UserInputError(file, prefix or None, "refers to itself (recursive YAML alias)")
        if id(node) in seen:
            return
        seen.add(id(node))
        path.add(id(node))
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for k, v in items:
            _walk(v, file, f"{prefix}.{k}" if prefix else str(k), path, seen)
        path.discard(id(node))
    elif isinstance(node, bool):
        return
    elif isinstance(node, float) and not math.isfinite(node):
        raise UserInputError(file, prefix or None, f"{node} is not a finite number")
    elif isinstance(node, int | float) and abs(node) > MAX_ABS_NUMBER:
        raise UserInputError(file, prefix or None, "number too large (limit 2**53)")


def read_text(path: str | os.PathLike[str]) -> str:
    """A user's file as UTF-8 text; a missing, unreadable or binary file is one clear line."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise UserInputError(path, None, "missing file") from None
    except OSError as exc:
        raise UserInputError(path, None, f"cannot read: {exc.strerror or exc}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UserInputError(path, None, "not UTF-8 text") from None


def parse_yaml(text: str, file: str | os.PathLike[str] | None) -> Any:
    """`yaml.safe_load` behind the depth limit; a syntax error names its line."""
    check_yaml_depth(text, file)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else None
        problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
        raise UserInputError(file, where, f"not valid YAML: {problem}") from None


def parse_yaml_mapping(text: str, file: str | os.PathLike[str] | None) -> dict[str, Any]:
    """A YAML document that must be a mapping (every config file is one)."""
    data = parse_yaml(text, file)
    if data is None:
        raise UserInputError(file, None, "empty file (expected a mapping)")
    if not isinstance(data, dict):
        raise UserInputError(file, None, f"expected a mapping, got {type(data).__name__}")
    return data


def load_yaml_mapping(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and parse a YAML file that must hold a mapping."""
    return parse_yaml_mapping(read_text(path), path)


def parse_assignment(item: str, file: str | os.PathLike[str] | None) -> tuple[str, Any]:
    """A command-line `key.path=value` (the value read as YAML) -> (key, value)."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key or not all(key.split(".")):
        raise UserInputError(file, item, "expected key.path=value")
    try:
        check_yaml_depth(text, file)
    except UserInputError as exc:  # name the key, not "line 1" of a one-line value
        raise UserInputError(file, key, exc.problem) from None
    try:
        return key, yaml.safe_load(text)
    except yaml.YAMLError:
        raise UserInputError(file, key, f"value is not valid YAML: {text!r}") from None
