"""User-facing errors: one line naming the file, the key and the problem.

Every command reports bad input the same way (`<file>: <key>: <problem>` on stderr, exit
status 2), so users can fix their files without reading a traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

__all__ = ["UserInputError", "run_cli"]


class UserInputError(Exception):
    """Bad input from the user (a file, a flag, a config key); never a bug in latent_tune."""

    def __init__(self, file: str | os.PathLike | None, key: str | None, problem: str) -> None:
        self.file = file
        self.key = key
        self.problem = problem
        super().__init__(str(self))

    def __str__(self) -> str:
        file = "-" if self.file is None else os.fspath(self.file)
        key = "-" if self.key is None else self.key
        problem = " ".join(str(self.problem).split())  # always one line
        return f"{file}: {key}: {problem}"

    def __reduce__(self):  # picklable across Ray workers
        return (type(self), (self.file, self.key, self.problem))


def run_cli(body: Callable[[], int]) -> int:
    """Run a command body; bad input becomes one stderr line and status 2, Ctrl-C status 130."""
    try:
        return int(body())
    except UserInputError as e:
        print(str(e), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
