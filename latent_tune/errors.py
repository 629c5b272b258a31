"""User-facing errors: one line naming the file, the key and the problem.

Every command reports bad input the same way (`<file>: <key>: <problem>` on stderr, exit
status 2), so users can fix their files without reading a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import sys
from collections.abc import Callable
from typing import NoReturn

__all__ = ["EXIT_BROKEN_PIPE", "CliParser", "UserInputError", "run_cli", "stdout_gone"]

EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what `yes | head` reports for `yes`


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


def stdout_gone() -> bool:
    """True when stdout is a pipe whose reader left (`cmd | head`); stdout then goes to devnull.

    Python ignores SIGPIPE, so writing to such a pipe raises BrokenPipeError, and the interpreter
    would raise it again when it flushes stdout at exit; pointing the descriptor at /dev/null
    lets the command end quietly, as shell tools do.
    """
    try:
        fd = sys.stdout.fileno()
        sys.stdout.flush()
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        broken = any(ev & select.POLLERR for _, ev in poller.poll(0))  # reader closed
    except BrokenPipeError:
        broken = True
    except (OSError, ValueError, AttributeError):  # not a real file (tests): nothing to do
        return False
    if broken:
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, fd)
            os.close(devnull)
    return broken


def run_cli(body: Callable[[], int]) -> int:
    """Run a command body; bad input becomes one stderr line and status 2, Ctrl-C status 130,
    a closed stdout pipe (`... | head`) status 141 without a traceback."""
    try:
        status = int(body())
        if stdout_gone():
            return EXIT_BROKEN_PIPE
        return status
    except BrokenPipeError:
        if stdout_gone():
            return EXIT_BROKEN_PIPE
        raise
    except _ParserExit as e:
        return e.status
    except UserInputError as e:
        print(str(e), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
