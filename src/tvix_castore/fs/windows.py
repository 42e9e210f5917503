"""Read windows: the next READs of sequential readers, prepared ahead in a helper process.

The kernel reads a file sequentially in READs of one size (1 MiB with our readahead) at
consecutive offsets. After each sequential READ the mount asks the LMDB read helper
(``tvix_castore.blobservice.lmdb_read_helper``) for the byte ranges of the next few READs,
one *window* each, to be checked and copied into a slot of shared memory. A READ that finds
its window ready is answered straight from the slot: no hashing and no copying on the FUSE
thread. One that does not (the helper behind, another size or offset, a failed window) is
answered the usual way.

Slots are handed out here, and a slot is asked for again only in a later call than the one
that served from it: by then the FUSE thread has written that READ's reply (it does so right
after the handler returns, before it runs anything else). Used from the event loop only.
"""

from __future__ import annotations

import bisect
import itertools
import time
from collections.abc import Sequence
from typing import Protocol

from tvix_castore.blobservice import ChunkMeta
from tvix_castore.digests import B3Digest

__all__ = ["ReadWindows", "chunk_ranges"]

# One window per future READ; this many READs ahead per file.
WINDOWS_AHEAD = 8
# A READ whose window is the helper's oldest unfinished request (so the helper is on it now)
# waits this long for it, rather than doing the same work beside the helper.
WAIT_SECONDS = 0.005
# Sequence numbers go over the wire as u32 (0xFFFFFFFF is not one).
_SEQ_MODULUS = 0xFFFFFFFF


class Helper(Protocol):
    """What ``start_read_helper`` gives; see ``lmdb_read_helper.ReadHelper``."""

    slots: int
    slot_bytes: int

    @property
    def alive(self) -> bool: ...

    def request(self, slot: int, seq: int, ranges: Sequence[tuple[ChunkMeta, int, int]]) -> bool: ...

    def cancel(self, slot: int, seq: int) -> None: ...

    def collect(self) -> tuple[list[tuple[B3Digest, int]], list[tuple[int, int, int]]]: ...

    def wait(self, timeout: float) -> bool: ...

    def slot_view(self, slot: int, length: int) -> memoryview: ...

    def close(self) -> None: ...


class ChunkedFile(Protocol):
    """An open file as windows see it: its chunks, the offsets they start at, its size."""

    chunks: tuple[ChunkMeta, ...] | None
    starts: list[int]
    size: int


class _Window:
    """A slot's request: for which file and offset, in what order asked, and its state."""

    __slots__ = ("fh", "length", "offset", "order", "orphan", "ready", "seq")

    def __init__(self, fh: int, offset: int, length: int, order: int) -> None:
        self.fh = fh
        self.offset = offset
        self.length = length
        self.order = order  # grows for ever; seq is its wire form
        self.seq = order % _SEQ_MODULUS
        self.ready = False
        self.orphan = False  # no longer wanted; the slot comes back with the helper's report


class ReadWindows:
    """Windows of every open file, in the helper's slots."""

    def __init__(self, helper: Helper) -> None:
        self._helper = helper
        self._free = list(range(helper.slots))
        self._slots: dict[int, _Window] = {}  # slot -> the request it holds
        self._files: dict[int, dict[int, int]] = {}  # fh -> {offset: slot}
        self._order = itertools.count(1)
        self._last_planned: dict[int, int] = {}  # fh -> when it last planned (an order)

    def close(self) -> None:
        """Stop the helper."""
        self._helper.close()

    def collect(self, wait_for: tuple[int, int] | None = None) -> list[tuple[B3Digest, int]]:
        """Take in the helper's news; returns the chunks it checked, ``(digest, size)``.

        wait_for ``(fh, offset)``: if that window is the helper's oldest unfinished request,
        wait up to WAIT_SECONDS for it first. A window further back in the helper's queue is
        not waited for: the READ is answered the usual way, and the window dropped.
        """
        checked = self._collect()
        if wait_for is not None:
            fh, offset = wait_for
            slot = self._files.get(fh, {}).get(offset, -1)
            window = self._slots.get(slot)
            if window is not None and not window.ready and self._oldest_pending() is window:
                deadline = time.monotonic() + WAIT_SECONDS
                while not window.ready and self._slots.get(slot) is window:
                    left = deadline - time.monotonic()
                    if left <= 0 or not self._helper.wait(left):
                        break
                    checked += self._collect()
        return checked

    def _oldest_pending(self) -> _Window | None:
        # Cancelled requests do not count: the helper skips them.
        pending = (w for w in self._slots.values() if not w.ready and not w.orphan)
        return min(pending, key=lambda w: w.order, default=None)

    def _collect(self) -> list[tuple[B3Digest, int]]:
        checked, done = self._helper.collect()
        for slot, seq, length in done:
            window = self._slots.get(slot)
            if window is None or window.seq != seq:
                continue  # not a request we have out: ignore it
            if window.orphan or length != window.length:  # unwanted, failed, or not as asked
                if not window.orphan:
                    self._files.get(window.fh, {}).pop(window.offset, None)
                self._release(slot)
            else:
                window.ready = True
        return checked

    def serve(self, fh: int, f: ChunkedFile, offset: int, size: int, sequential: bool) -> memoryview | None:
        """The READ's bytes from its window if ready, else None; plans the next windows."""
        slot = self._files.get(fh, {}).get(offset, -1)
        window = self._slots.get(slot)
        view = None
        if (
            window is not None
            and window.ready
            and window.fh == fh
            and window.offset == offset
            and window.length == min(size, f.size - offset)
        ):
            view = self._helper.slot_view(slot, window.length)
        if sequential:
            self._plan(fh, f, offset, size)
        if view is not None:
            self._drop(fh, offset)  # free again, but asked for no earlier than the next call
        return view

    def forget(self, fh: int) -> None:
        """A file was released: its windows' slots go back (pending ones once they report)."""
        for offset in list(self._files.get(fh, ())):
            self._drop(fh, offset)
        self._files.pop(fh, None)
        self._last_planned.pop(fh, None)

    def _plan(self, fh: int, f: ChunkedFile, offset: int, size: int) -> None:
        assert f.chunks is not None
        helper = self._helper
        windows = self._files.setdefault(fh, {})
        self._last_planned[fh] = next(self._order)
        for stale in [o for o in windows if o < offset]:
            self._drop(fh, stale)  # passed by: the reader skipped them, or they were served
        if size > helper.slot_bytes or not helper.alive:
            return
        end_of_plan = min(offset + size * (WINDOWS_AHEAD + 1), f.size)
        for start in range(offset + size, end_of_plan, size):
            length = min(size, f.size - start)
            planned = windows.get(start)
            if planned is not None:
                if self._slots[planned].length == length:
                    continue
                self._drop(fh, start)  # planned for READs of another size
            if not self._free and not self._reclaim(fh):
                break
            ranges = chunk_ranges(f.chunks, f.starts, start, start + length)
            slot = self._free.pop()
            window = _Window(fh, start, length, next(self._order))
            if not helper.request(slot, window.seq, ranges):
                self._free.append(slot)
                break
            windows[start] = slot
            self._slots[slot] = window

    def _reclaim(self, fh: int) -> bool:
        """Free the ready windows of the file (other than fh) that went longest unread."""
        idle = [
            other
            for other, windows in self._files.items()
            if other != fh and any(self._slots[s].ready for s in windows.values())
        ]
        if not idle:
            return False
        victim = min(idle, key=lambda other: self._last_planned.get(other, 0))
        for offset, slot in list(self._files[victim].items()):
            if self._slots[slot].ready:
                self._drop(victim, offset)
        return bool(self._free)

    def _drop(self, fh: int, offset: int) -> None:
        slot = self._files.get(fh, {}).pop(offset, None)
        if slot is None:
            return
        window = self._slots[slot]
        if window.ready:
            self._release(slot)
        else:  # still being filled: free once the helper reports, and ask it to skip it
            window.orphan = True
            self._helper.cancel(slot, window.seq)

    def _release(self, slot: int) -> None:
        if slot in self._slots:
            del self._slots[slot]
            self._free.append(slot)


def chunk_ranges(
    chunks: tuple[ChunkMeta, ...], starts: list[int], offset: int, end: int
) -> list[tuple[ChunkMeta, int, int]]:
    """The ``(chunk, start, end)`` pieces that make up bytes offset..end of a file.

    starts are the offsets where its chunks begin; offset < end <= the file's size.
    """
    first = bisect.bisect_right(starts, offset) - 1
    last = bisect.bisect_right(starts, end - 1) - 1
    return [
        (chunks[i], max(offset - starts[i], 0), min(end - starts[i], chunks[i].size))
        for i in range(first, last + 1)
    ]
