"""Module loggers that import the standard ``logging`` only when a record is due.

``logging`` and what it pulls in (traceback, linecache, tokenize, string, weakref, …) cost
about 5 ms of CPU at start-up, a sixth of ``tvix-store nar`` of a small path, and the short
commands log nothing at the default level. Every module takes its logger as
``log = get_logger(name)``, which answers the ``logging.Logger`` calls we make.

The command line parses its log levels first and hands the set-up to ``defer_setup``. Until
``logging`` is imported, a record below the level configured for its logger is dropped at
once; any other record imports ``logging``, runs the pending set-up and goes to the real
logger. Once anything has imported ``logging`` (a test harness, grpcio), every call goes to
the real logger, after the pending set-up, so that changes made there (pytest's ``caplog``)
take effect.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import logging

__all__ = ["DEBUG", "ERROR", "INFO", "WARNING", "Logger", "defer_setup", "get_logger", "setup_now"]

# The standard levels, without importing logging for them.
DEBUG = 10
INFO = 20
WARNING = 30
ERROR = 40

# (lowest level that would be emitted, by logger name; the set-up that makes it so).
_pending: tuple[Callable[[str], int], Callable[[], None]] | None = None


def defer_setup(threshold: Callable[[str], int], setup: Callable[[], None]) -> None:
    """Run setup before the first record at or above threshold(logger name) is logged.

    If ``logging`` is imported already, nothing is saved by waiting: setup runs now.
    """
    global _pending
    _pending = (threshold, setup)
    if "logging" in sys.modules:
        setup_now()


def setup_now() -> None:
    """Run the pending set-up, if any (for code about to let libraries log on their own)."""
    global _pending
    pending, _pending = _pending, None
    if pending is not None:
        pending[1]()


class Logger:
    """A named logger; the real ``logging.Logger`` is looked up when first needed."""

    __slots__ = ("_real", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self._real: logging.Logger | None = None

    def debug(self, msg: object, *args: object, **kwargs: Any) -> None:
        """Log msg % args at DEBUG, as ``logging.Logger.debug``."""
        self._emit(DEBUG, msg, args, kwargs)

    def info(self, msg: object, *args: object, **kwargs: Any) -> None:
        """Log msg % args at INFO, as ``logging.Logger.info``."""
        self._emit(INFO, msg, args, kwargs)

    def warning(self, msg: object, *args: object, **kwargs: Any) -> None:
        """Log msg % args at WARNING, as ``logging.Logger.warning``."""
        self._emit(WARNING, msg, args, kwargs)

    def error(self, msg: object, *args: object, **kwargs: Any) -> None:
        """Log msg % args at ERROR, as ``logging.Logger.error``."""
        self._emit(ERROR, msg, args, kwargs)

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        """Log msg % args at level, as ``logging.Logger.log``."""
        self._emit(level, msg, args, kwargs)

    def _emit(self, level: int, msg: object, args: tuple[object, ...], kwargs: dict[str, Any]) -> None:
        real = self._real
        if real is None:
            pending = _pending
            if pending is not None and "logging" not in sys.modules and level < pending[0](self.name):
                return
            real = self.real()
        if real.isEnabledFor(level):
            # The record names the caller of debug()/info()/…, two frames above this one.
            kwargs["stacklevel"] = kwargs.get("stacklevel", 1) + 2
            real.log(level, msg, *args, **kwargs)

    def real(self) -> logging.Logger:
        """The ``logging.Logger`` of this name, after any pending set-up."""
        if self._real is None:
            setup_now()
            import logging

            self._real = logging.getLogger(self.name)
        return self._real


def get_logger(name: str) -> Logger:
    """The logger for name (a module's ``__name__``, or the tvix target it logs under)."""
    return Logger(name)
