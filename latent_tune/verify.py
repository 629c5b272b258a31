"""`python -m latent_tune.verify EXP_DIR [--top K] [--seeds S]`: re-train a search's best
configurations and its base recipe with new seeds, paired (see tune/verify.py)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from latent_tune.tune.verify import main as _main

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """In-process entry point (tests call it directly)."""
    return _main(argv)


if __name__ == "__main__":
    sys.exit(main())
