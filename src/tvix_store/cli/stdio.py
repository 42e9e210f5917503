"""The standard streams of a command: closed ones made harmless, failed writes named.

A command started with a standard stream closed (``>&-``, ``<&-``) finds ``sys.stdout`` or
``sys.stdin`` set to None by Python. Its file descriptor is free, so the first file the store
opens (``data.mdb``, say) would get it, and anything later written to "stdout" by any library
would land in the store. ``occupy_closed_descriptors`` puts /dev/null there first; the None
stays, and is how a command learns that the stream it needs is closed.
"""

from __future__ import annotations

import errno
import os
import sys
from typing import BinaryIO


class OutputError(Exception):
    """Writing a command's result to stdout failed (closed, a full disk); not a store error."""

    def __init__(self, what: str, cause: OSError) -> None:
        super().__init__(f"cannot write {what} to stdout: {cause.strerror}")


def occupy_closed_descriptors() -> None:
    """Open /dev/null on each of fds 0, 1 and 2 that is closed; a closed stderr discards."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:  # lower ones are open now, so null is fd; this is belt and braces
                os.dup2(null, fd)
                os.close(null)
    if sys.stderr is None:
        # Errors and logs of a command whose stderr was closed go nowhere, as asked.
        sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115 - lives as long as the process


def _closed_stdout_error(what: str) -> OutputError:
    """The error for writing what to a stdout that was closed at start."""
    return OutputError(what, OSError(errno.EBADF, os.strerror(errno.EBADF)))


def stdout_binary(what: str) -> BinaryIO:
    """The binary stdout, or OutputError naming what the command would have written."""
    if sys.stdout is None:
        raise _closed_stdout_error(what)
    return sys.stdout.buffer


def write_stdout_text(what: str, text: str) -> None:
    """Write text to stdout and flush it; a failure is an OutputError naming what."""
    if sys.stdout is None:
        raise _closed_stdout_error(what)
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except OSError as exc:
        raise OutputError(what, exc) from exc


def exit_now(status: int) -> None:
    """Flush the output and leave, skipping interpreter teardown (~20 ms: a fifth of a small nar)."""
    try:
        if sys.stdout is not None:  # None: closed at start
            sys.stdout.flush()
        sys.stderr.flush()
    except OSError:
        status = status or 1
    logging = sys.modules.get("logging")
    if logging is not None:  # imported only when something was logged (or by a library)
        logging.shutdown()
    os._exit(status)
