"""A helper process that prepares a reader's next bytes from an LMDB store, beside its GIL.

A FUSE mount serves every READ on one thread, which also holds the GIL while it writes the
reply. Checking the chunks a READ covers (BLAKE3 over bytes from the map) and copying its
range out of them took as long again as the reply itself, and threads of the same process
could not take that work over: they waited for the GIL and fell behind. A second process has a
GIL of its own. It opens the same store and, for each *window* the reader asks for (the byte
ranges of the chunks one future READ covers), checks those chunks and copies the ranges, one
after another, into a slot of memory shared with the reader. The reader then answers that
READ straight from the slot. It trusts the helper's check as its own (our code, over the same
immutable store); a chunk that is absent or fails its check fails the whole window, and the
reader falls back to its own path, which reports the error.

Shared memory: ``slots`` slots of ``slot_bytes`` each, in a memfd the child inherits. A slot
is the parent's to hand out: the child writes one only when asked, and the parent asks again
only after it has answered the READ the slot served (see ``tvix_castore.fs.windows``).

Wire format (raw bytes over the child's stdin and stdout):
  parent -> child  ``b"W" slot:u16 seq:u32 n:u16`` then n ranges ``digest:32s start:u32 end:u32
                   size:u32`` (size: the chunk's size as the reader knows it; at most PIPE_BUF
                   bytes a request, so a non-blocking write is all or nothing);
                   ``b"X" slot:u16 seq:u32``: that request is no longer wanted (the reader
                   passed it), to be skipped if not begun;
  child -> parent  ``b"W" slot:u16 seq:u32 length:u32`` when the window is in its slot
                   (``FAILED`` as the length when it is not), and ``b"C" digest:32s size:u32``
                   for each chunk it checked, which the reader may then serve by itself too.
Before each window the child takes in every message that has arrived, so cancellations reach
it in time. It exits when its stdin closes (the parent closed it, or died) and ignores SIGINT:
a Ctrl-C in the mount's terminal is the parent's to handle. It runs with ``python -P``, so that
nothing from the directory the mount was started in can shadow our modules.
"""

from __future__ import annotations

import mmap
import os
import select
import signal
import struct
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING

from tvix_castore.blobservice import ChunkMeta
from tvix_castore.blobservice.memo import VerifiedChunks
from tvix_castore.digests import B3_LEN, B3Digest
from tvix_castore.lazy_logging import get_logger

if TYPE_CHECKING:
    from tvix_castore.blobservice.lmdb_store import LmdbBlobService

__all__ = ["FAILED", "MAX_RANGES", "ReadHelper"]

log = get_logger(__name__)

FAILED = 0xFFFFFFFF
_REQUEST = struct.Struct("<cHIH")
_RANGE = struct.Struct(f"<{B3_LEN}sIII")
_CANCEL = struct.Struct("<cHI")
_WINDOW_DONE = struct.Struct("<cHII")
_CHECKED = struct.Struct(f"<c{B3_LEN}sI")
# A request must fit in PIPE_BUF (4096 on Linux) to go into the pipe whole or not at all.
MAX_RANGES = (4096 - _REQUEST.size) // _RANGE.size
# Chunks the child remembers as just checked (a chunk two windows share is checked once).
_REMEMBERED = 4096


class ReadHelper:
    """The parent's end. ``request`` windows, ``collect`` what the child finished since.

    Neither call blocks (a request that does not fit in the pipe is refused, and the caller
    answers that READ itself). Thread-safe. When the child is gone, requests are refused and
    nothing more arrives.
    """

    def __init__(self, store_path: str, slots: int, slot_bytes: int) -> None:
        self.slots = slots
        self.slot_bytes = slot_bytes
        self._lock = threading.Lock()
        self._pending = b""
        fd = os.memfd_create("tvix-read-windows", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, slots * slot_bytes)
            self._shared: mmap.mmap | None = mmap.mmap(fd, slots * slot_bytes)
            self._proc: subprocess.Popen[bytes] | None = subprocess.Popen(
                [sys.executable, "-P", "-m", __name__, store_path, str(fd), str(slots), str(slot_bytes)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                pass_fds=(fd,),
            )
        finally:
            os.close(fd)
        assert self._proc.stdin is not None and self._proc.stdout is not None
        os.set_blocking(self._proc.stdin.fileno(), False)
        os.set_blocking(self._proc.stdout.fileno(), False)
        self._view = memoryview(self._shared)

    @property
    def alive(self) -> bool:
        """Whether the child still takes requests."""
        return self._proc is not None

    def request(self, slot: int, seq: int, ranges: Sequence[tuple[ChunkMeta, int, int]]) -> bool:
        """Ask for these ranges ``(chunk, start, end)``, concatenated, in slot.

        False when the request was refused.
        """
        if not 0 < len(ranges) <= MAX_RANGES or not 0 <= slot < self.slots or not 0 <= seq < FAILED:
            return False
        message = _REQUEST.pack(b"W", slot, seq, len(ranges)) + b"".join(
            _RANGE.pack(chunk.digest, start, end, chunk.size) for chunk, start, end in ranges
        )
        return self._send(message)

    def cancel(self, slot: int, seq: int) -> None:
        """That request is no longer wanted; it still gets its report (FAILED if skipped)."""
        self._send(_CANCEL.pack(b"X", slot, seq))

    def _send(self, message: bytes) -> bool:
        with self._lock:
            proc = self._proc
            if proc is None:
                return False
            assert proc.stdin is not None
            try:
                os.write(proc.stdin.fileno(), message)
            except BlockingIOError:
                return False
            except OSError as exc:
                self._stop(proc, f"its request pipe failed ({exc})")
                return False
            return True

    def collect(self) -> tuple[list[tuple[B3Digest, int]], list[tuple[int, int, int]]]:
        """What the child did since the last call.

        The chunks it checked ``(digest, size)``, and the windows it finished ``(slot, seq,
        length)``, length ``FAILED`` for a window it could not fill.
        """
        checked: list[tuple[B3Digest, int]] = []
        windows: list[tuple[int, int, int]] = []
        with self._lock:
            proc = self._proc
            if proc is None:
                return checked, windows
            assert proc.stdout is not None
            try:
                got = os.read(proc.stdout.fileno(), 1 << 16)
            except BlockingIOError:
                return checked, windows
            except OSError:
                got = b""
            if not got:
                self._stop(proc, "it exited")
                return checked, windows
            data = self._pending + got
            pos = 0
            while pos < len(data):
                kind = data[pos : pos + 1]
                if kind == b"C":
                    if pos + _CHECKED.size > len(data):
                        break  # cut off at the end of this read: the rest comes next time
                    _, digest, size = _CHECKED.unpack_from(data, pos)
                    checked.append((B3Digest(digest), size))
                    pos += _CHECKED.size
                elif kind == b"W":
                    if pos + _WINDOW_DONE.size > len(data):
                        break
                    _, slot, seq, length = _WINDOW_DONE.unpack_from(data, pos)
                    windows.append((slot, seq, length))
                    pos += _WINDOW_DONE.size
                else:
                    self._stop(proc, f"it sent an unknown message {kind!r}")
                    return [], []
            self._pending = data[pos:]
        return checked, windows

    def wait(self, timeout: float) -> bool:
        """Wait up to timeout seconds for news from the child; whether there is any."""
        proc = self._proc
        if proc is None or proc.stdout is None:
            return False
        try:
            ready, _, _ = select.select([proc.stdout.fileno()], [], [], timeout)
        except (OSError, ValueError):  # closed meanwhile
            return False
        return bool(ready)

    def slot_view(self, slot: int, length: int) -> memoryview:
        """The first length bytes of a slot, as the child left them."""
        start = slot * self.slot_bytes
        return self._view[start : start + length]

    def close(self) -> None:
        """Stop the child and wait for it; idempotent. Views from ``slot_view`` must be gone."""
        with self._lock:
            if self._proc is not None:
                self._stop(self._proc)
            if self._shared is not None:
                shared, self._shared = self._shared, None
                try:
                    self._view.release()
                    shared.close()
                except BufferError:
                    pass  # a slot's view is still referenced: the map goes when it does

    def _stop(self, proc: subprocess.Popen[bytes], why: str | None = None) -> None:
        """End the child (why: what went wrong, when it is not ours to end); lock held."""
        self._proc = None
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()
        try:
            proc.wait(timeout=1)  # it keeps no state: no need to wait long for it
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if why is not None:
            log.warning(
                "read helper (pid %d) stopped: %s (exit status %s); READs are prepared in process",
                proc.pid,
                why,
                proc.returncode,
            )


def _serve(store_path: str, fd: int, slots: int, slot_bytes: int) -> None:
    """The child: fill each requested window into its slot, report what was done on stdout."""
    from tvix_castore.blobservice.lmdb_store import LmdbBlobService

    shared = mmap.mmap(fd, slots * slot_bytes)
    os.close(fd)
    service = LmdbBlobService(store_path)
    checked = VerifiedChunks(_REMEMBERED)
    queue: deque[tuple[int, int, list[tuple[bytes, int, int, int]]]] = deque()
    cancelled: set[tuple[int, int]] = set()
    pending = b""
    os.set_blocking(0, False)
    try:
        while True:
            try:
                got = os.read(0, 1 << 16)
            except BlockingIOError:
                got = None
            if got == b"":
                break  # the parent closed our stdin, or died
            if got:
                pending = _take_in(pending + got, queue, cancelled)
                continue  # until nothing more has arrived
            if not queue:
                select.select([0], [], [])
                continue
            slot, seq, ranges = queue.popleft()
            if (slot, seq) in cancelled:
                cancelled.discard((slot, seq))
                os.write(1, _WINDOW_DONE.pack(b"W", slot, seq, FAILED))
                continue
            length, newly = _fill(service, shared, slot * slot_bytes, slot_bytes, ranges, checked)
            reply = b"".join(_CHECKED.pack(b"C", d, size) for d, size in newly)
            os.write(1, reply + _WINDOW_DONE.pack(b"W", slot, seq, length))
    except BrokenPipeError:
        pass  # the parent stopped listening
    finally:
        service.close()
        shared.close()


def _take_in(
    data: bytes,
    queue: deque[tuple[int, int, list[tuple[bytes, int, int, int]]]],
    cancelled: set[tuple[int, int]],
) -> bytes:
    """Queue the requests in data and note the cancellations; returns what is left over."""
    pos = 0
    while pos < len(data):
        kind = data[pos : pos + 1]
        if kind == b"X":
            if pos + _CANCEL.size > len(data):
                break
            _, slot, seq = _CANCEL.unpack_from(data, pos)
            if any(q[0] == slot and q[1] == seq for q in queue):
                cancelled.add((slot, seq))
            pos += _CANCEL.size
        elif kind == b"W":
            if pos + _REQUEST.size > len(data):
                break
            _, slot, seq, count = _REQUEST.unpack_from(data, pos)
            end = pos + _REQUEST.size + count * _RANGE.size
            if end > len(data):
                break
            ranges = [_RANGE.unpack_from(data, pos + _REQUEST.size + i * _RANGE.size) for i in range(count)]
            queue.append((slot, seq, ranges))
            pos = end
        else:
            raise SystemExit(f"unknown request {kind!r}")  # not our parent talking
    return data[pos:]


def _fill(
    service: LmdbBlobService,
    shared: mmap.mmap,
    base: int,
    slot_bytes: int,
    ranges: list[tuple[bytes, int, int, int]],
    checked: VerifiedChunks,
) -> tuple[int, list[tuple[bytes, int]]]:
    """Check each range's chunk (once) and copy the range into shared[base:].

    Returns the window's length (FAILED when a chunk is absent, bad, or not of the size the
    reader knows, or a range does not fit) and the chunks checked on the way.
    """
    from tvix_castore.errors import StoreError

    newly: list[tuple[bytes, int]] = []
    pos = base
    try:
        for raw, start, end, expected in ranges:
            if end - start > base + slot_bytes - pos or not start <= end <= expected:
                return FAILED, newly
            digest = B3Digest(raw)
            known = checked.size_of(digest)
            size = service.copy_chunk_range(digest, start, end, shared, pos, check=known is None)
            if size is None:
                return FAILED, newly
            if known is None:
                checked.add(digest, size)
                newly.append((digest, size))
            if size != expected:
                return FAILED, newly
            pos += end - start
    except StoreError:
        return FAILED, newly
    return pos - base, newly


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _serve(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
