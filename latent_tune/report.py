"""`python -m latent_tune.report EXP_DIR [EXP_DIR ...]`: rank the trials of finished searches."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from latent_tune.tune.report import main as _main

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """In-process entry point (tests call it directly)."""
    return _main(argv)


if __name__ == "__main__":
    sys.exit(main())
