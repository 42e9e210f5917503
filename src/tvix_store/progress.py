"""A tiny progress line on stderr for long imports, shown only when stderr is a terminal.

Counts files and bytes and redraws at most ten times a second; ``finish()`` erases the line so
that nothing of it remains in the terminal's scrollback (spec decision 3: quiet otherwise). The
line is cut to the terminal's width (a wrapped line could not be erased), and ``clear_line``
lets the log handler take it away before a log line goes to the same terminal; the next update
draws it again below.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

__all__ = ["Progress", "line_cleared"]

_INTERVAL = 0.1
_SPINNER = "|/-\\"
_ERASE = "\r\x1b[2K"
# The progress line drawn now, if any: drawing it and writing a log line take turns.
_lock = threading.Lock()
_drawn: Progress | None = None


@contextmanager
def line_cleared(stream: TextIO) -> Iterator[None]:
    """Erase the progress line from stream, if one is drawn there, and keep it away meanwhile.

    For whatever writes a line of its own to the terminal (the log handler), inside the block;
    the progress line comes back at its next update after it.
    """
    global _drawn
    with _lock:
        if _drawn is not None and _drawn._stream is stream:
            stream.write(_ERASE)
            _drawn = None
        yield


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
        global _drawn
        now = time.monotonic()
        self._next_draw = now + _INTERVAL
        elapsed = max(now - self._start, 1e-9)
        self._frame = (self._frame + 1) % len(_SPINNER)
        rate = _mib(int(self.bytes / elapsed))
        stats = f": {self.files} files, {_mib(self.bytes)} @ {rate}/s ({elapsed:.1f}s)"
        line = _fit(f"{_SPINNER[self._frame]} ", self.label, stats, self._width())
        with _lock:
            self._stream.write(_ERASE + line)
            self._stream.flush()
            _drawn = self

    def _width(self) -> int:
        try:
            columns = os.get_terminal_size(self._stream.fileno()).columns
        except (OSError, ValueError, AttributeError):  # not a terminal after all
            columns = 0
        return columns or 80  # 0: a terminal that was never given a size

    def finish(self) -> None:
        """Erase the line, if one was drawn."""
        global _drawn
        with _lock:
            if _drawn is self:
                self._stream.write(_ERASE)
                self._stream.flush()
                _drawn = None


def _fit(head: str, label: str, stats: str, width: int) -> str:
    """The line of head, label and stats, in fewer than width columns of the terminal.

    A label too long loses its middle ("importing /tmp/…/dir"): what is done, and to what.
    Characters the terminal would not show as one column each are measured as they show
    (wide ones as two), or replaced (control characters, undecodable bytes of a file name).
    """
    label = "".join(c if c.isprintable() and not 0xD800 <= ord(c) <= 0xDFFF else "?" for c in label)
    room = width - 1 - _columns(head) - _columns(stats)
    if _columns(label) > room:
        kept = room - 1  # beside the "…"
        label = _head(label, kept // 2) + "…" + _tail(label, kept - kept // 2) if kept > 0 else ""
    return _head(head + label + stats, max(width - 1, 0))


def _column_width(c: str) -> int:
    if unicodedata.combining(c):
        return 0
    return 2 if unicodedata.east_asian_width(c) in ("W", "F") else 1


def _columns(text: str) -> int:
    return sum(_column_width(c) for c in text)


def _head(text: str, columns: int) -> str:
    """The longest start of text that fits in columns."""
    used = 0
    for i, c in enumerate(text):
        used += _column_width(c)
        if used > columns:
            return text[:i]
    return text


def _tail(text: str, columns: int) -> str:
    """The longest end of text that fits in columns."""
    return _head(text[::-1], columns)[::-1]
