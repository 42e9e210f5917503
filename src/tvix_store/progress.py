"""A tiny progress line on stderr for long imports, shown only when stderr is a terminal.

Counts files and bytes and redraws at most ten times a second; ``finish()`` erases the line so
that nothing of it remains in the terminal's scrollback (spec decision 3: quiet otherwise).
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress"]

_INTERVAL = 0.1
_SPINNER = "|/-\\"


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


class Progress:
    """Files and bytes done for one labelled task; draws nothing unless enabled."""

    def __init__(self, label: str, stream: TextIO | None = None, enabled: bool | None = None) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self.enabled = self._stream.isatty() if enabled is None else enabled
        self.label = label
        self.files = 0
        self.bytes = 0
        self._start = time.monotonic()
        self._next_draw = self._start + _INTERVAL
        self._frame = 0
        self._drawn = False

    def add_bytes(self, n: int) -> None:
        """Count n more bytes read."""
        self.bytes += n
        if self.enabled and time.monotonic() >= self._next_draw:
            self._draw()

    def add_file(self) -> None:
        """Count one more file done."""
        self.files += 1
        if self.enabled and time.monotonic() >= self._next_draw:
            self._draw()

    def _draw(self) -> None:
        now = time.monotonic()
        self._next_draw = now + _INTERVAL
        elapsed = max(now - self._start, 1e-9)
        self._frame = (self._frame + 1) % len(_SPINNER)
        line = (
            f"{_SPINNER[self._frame]} {self.label}: {self.files} files, {_mib(self.bytes)}"
            f" @ {_mib(int(self.bytes / elapsed))}/s ({elapsed:.1f}s)"
        )
        self._stream.write("\r\x1b[2K" + line)
        self._stream.flush()
        self._drawn = True

    def finish(self) -> None:
        """Erase the line, if one was drawn."""
        if self._drawn:
            self._stream.write("\r\x1b[2K")
            self._stream.flush()
            self._drawn = False
