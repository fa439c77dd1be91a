"""Errors the `pemt` command reports as one line, by kind: a usage error (exit status 2) or a runtime error (1)."""

from __future__ import annotations

from typing import NoReturn


class PemtUsageError(ValueError):
    """The command line asks for something that cannot work (a bad value, a conflicting pair of options, an output
    folder owned by another run). Raised before any work is done; `pemt` prints it and exits with status 2."""


class NonFiniteLossError(RuntimeError):
    """Training met a NaN or infinite loss or gradient and stopped before saving anything from that step on."""


def one_line(error: BaseException) -> str:
    """The message of `error` on one line; the exception's type is named where the message alone may not say what
    went wrong (errors raised outside pemt)."""
    message = " ".join(str(error).split()) or type(error).__name__
    if isinstance(error, (PemtUsageError, NonFiniteLossError)):
        return message
    return f"{type(error).__name__}: {message}"


def usage_exit(prog: str, message: str) -> NoReturn:
    """Prints `prog: error: message (see prog --help)` to stderr and exits with status 2 (argparse's code)."""
    import sys

    sys.stderr.write(f"{prog}: error: {message} (see {prog} --help)\n")
    raise SystemExit(2)
