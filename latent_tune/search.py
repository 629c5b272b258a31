"""`python -m latent_tune.search SPACE.yaml ...`: run a hyperparameter search (see tune/cli.py)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from latent_tune.tune.cli import main as _main

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """In-process entry point (tests call it directly)."""
    return _main(argv)


if __name__ == "__main__":
    sys.exit(main())
