"""How the servers (``daemon``, ``serve-cache``) stop on SIGINT, SIGTERM or SIGHUP.

The first signal starts a graceful stop: nothing new is taken, and the work in flight gets a
grace period to finish. A second signal ends that work at once. SIGHUP counts too: a server
started from a terminal that closes stops as cleanly as on SIGTERM. (The mount takes the same
signals through trio, in ``tvix_castore.fs.mount``.)
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

from tvix_castore.lazy_logging import get_logger

__all__ = ["GRACE_SECONDS", "STOP_SIGNALS", "stop_signals"]

log = get_logger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
GRACE_SECONDS = 30.0
"""How long the work in flight may take to finish after the first signal."""


@contextmanager
def stop_signals(
    in_flight: str, on_first: Callable[[], None], on_again: Callable[[], None]
) -> Iterator[None]:
    """Within the block, the first stop signal calls on_first and any later one on_again.

    Both run in the signal handler: they must only set events or start what does not block.
    in_flight names the work the grace period (``GRACE_SECONDS``) is for ("calls", "requests"),
    for the log.
    """
    seen = False

    def handler(signum: int, _frame: FrameType | None) -> None:
        nonlocal seen
        if not seen:
            seen = True
            log.info(
                "received signal %d, stopping: %s in flight get up to %.0f s to finish "
                "(signal again to end them now)",
                signum,
                in_flight,
                GRACE_SECONDS,
            )
            on_first()
        else:
            log.info("received signal %d again, ending the %s in flight now", signum, in_flight)
            on_again()

    previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
