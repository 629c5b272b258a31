"""User-facing errors: one line naming the file, the key and the problem.

Every command reports bad input the same way (`<file>: <key>: <problem>` on stderr, exit
status 2), so users can fix their files without reading a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import NoReturn

__all__ = ["CliParser", "UserInputError", "run_cli"]


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


class _ParserExit(Exception):
    """argparse finished on purpose (--help): the command returns this status."""

    def __init__(self, status: int) -> None:
        self.status = status
        super().__init__(status)


class CliParser(argparse.ArgumentParser):
    """The argument parser of every command: a usage error is a UserInputError (one line, status
    2 through run_cli) and --help returns 0 from `main(argv)` instead of exiting the caller's
    process. Parse inside the run_cli body."""

    def error(self, message: str) -> NoReturn:
        raise UserInputError(None, self.prog.split()[-1], message)

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if message:
            print(message, end="", file=sys.stderr)
        raise _ParserExit(status)


def run_cli(body: Callable[[], int]) -> int:
    """Run a command body; bad input becomes one stderr line and status 2, Ctrl-C status 130."""
    try:
        return int(body())
    except _ParserExit as e:
        return e.status
    except UserInputError as e:
        print(str(e), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
