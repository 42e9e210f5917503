"""Content-defined chunking: FastCDC 2020 with tvix's parameters, fed incrementally. Pure, no IO.

tvix cuts blobs with ``fastcdc::v2020`` (avg 256 KiB, min = avg/2, max = 2*avg, normalization
level 1); pyfastcdc ports the same algorithm and gear table, so with these parameters our cut
points, and therefore our chunk digests, match tvix's (spec decision 6).

``Chunker`` is push-style: ``feed()`` bytes as they arrive and get the chunks that are complete;
``finish()`` returns the rest. The result equals cutting the whole input at once. That works
because a FastCDC cut depends only on the bytes from the chunk's start up to ``max_size`` after
it: a chunk is final once a cut point was found strictly inside the buffered data, or once
``max_size`` bytes follow its start. A chunk that merely runs to the end of the buffer is held
back until more data (or EOF) arrives.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyfastcdc import FastCDC

__all__ = ["AVG_SIZE", "MAX_SIZE", "MIN_SIZE", "Chunker", "chunk_bytes"]

AVG_SIZE = 256 * 1024
MIN_SIZE = AVG_SIZE // 2
MAX_SIZE = AVG_SIZE * 2

# Buffered input is cut only after this much new data arrived: every cut pass rescans the held
# back tail (< MAX_SIZE), so batching keeps that rescan a small fraction of the input.
_DEFAULT_BATCH = 2 * 1024 * 1024


def _fastcdc(avg_size: int, min_size: int, max_size: int) -> FastCDC:
    # Imported on first use: commands that only read (nar) never chunk and skip its import.
    from pyfastcdc import FastCDC

    return FastCDC(avg_size, min_size=min_size, max_size=max_size, normalized_chunking=1)


def chunk_bytes(
    data: bytes | bytearray | memoryview,
    avg_size: int = AVG_SIZE,
    min_size: int = MIN_SIZE,
    max_size: int = MAX_SIZE,
) -> list[bytes]:
    """Cut a whole buffer at once (the reference the incremental Chunker must match)."""
    return [bytes(c.data) for c in _fastcdc(avg_size, min_size, max_size).cut_buf(data)]


class Chunker:
    """Incremental FastCDC: feed bytes, receive the complete chunks.

    A chunk is a read-only view into an immutable buffer, which the view keeps alive: the fed
    ``bytes`` (or view of bytes) when that is all the chunker holds at a cut, else the one copy
    joining what it holds. Other input (a bytearray the caller may reuse) is copied when fed,
    and so is the tail held back at a cut (under ``max_size``): past a cut, the chunker itself
    keeps no caller's buffer alive. So each byte is copied about once on its way into a chunk.

    Holds back at most ``batch + max_size`` bytes plus the last fed piece.
    """

    def __init__(
        self,
        avg_size: int = AVG_SIZE,
        min_size: int = MIN_SIZE,
        max_size: int = MAX_SIZE,
        batch: int = _DEFAULT_BATCH,
    ) -> None:
        self._cdc = _fastcdc(avg_size, min_size, max_size)
        self._max = max_size
        self._batch = batch
        # Fed input not yet cut, oldest first; every piece immutable.
        self._held: list[bytes | memoryview] = []
        self._held_bytes = 0
        self._scan_at = batch
        self._finished = False

    @property
    def pending(self) -> int:
        """Bytes fed but not yet returned as chunks."""
        return self._held_bytes

    @property
    def max_size(self) -> int:
        """The largest chunk this chunker produces."""
        return self._max

    def feed(self, data: bytes | bytearray | memoryview) -> list[memoryview]:
        """Add data; return the chunks that are now complete, in order."""
        if self._finished:
            raise ValueError("chunker already finished")
        if not data:
            return []
        piece = _immutable(data)
        self._held.append(piece)
        self._held_bytes += len(piece)
        if self._held_bytes < self._scan_at:
            return []
        return self._cut(eof=False)

    def finish(self) -> list[memoryview]:
        """Signal EOF; return the remaining chunks (none for empty input)."""
        if self._finished:
            return []
        self._finished = True
        if not self._held:
            return []
        return self._cut(eof=True)

    def _cut(self, eof: bool) -> list[memoryview]:
        held = self._held
        whole = memoryview(held[0] if len(held) == 1 else b"".join(held)).cast("B")
        out, consumed = _final_chunks(self._cdc, whole, self._max, eof)
        rest = whole[consumed:]
        if rest and len(held) == 1:
            # whole is a fed piece: copy the short tail rather than keep all of it alive.
            rest = memoryview(bytes(rest))
        # The rest is joined again at the next cut: at most max_size bytes per batch.
        self._held = [rest] if rest else []
        self._held_bytes = len(rest)
        self._scan_at = len(rest) + self._batch
        return out


def _immutable(data: bytes | bytearray | memoryview) -> bytes | memoryview:
    """The bytes of data: shared if no one can change them (bytes, a plain view of bytes), else a copy."""
    # Exactly bytes: a subclass may export another object's (mutable) buffer (__buffer__, 3.12+).
    if type(data) is bytes:
        return data
    if isinstance(data, memoryview) and type(data.obj) is bytes and data.c_contiguous:
        # Until the next cut this keeps all of data.obj alive, not just the slice: the caller's
        # buffer, which it is feeding from anyway.
        return data.cast("B")
    return bytes(data)


def _final_chunks(cdc: FastCDC, data: memoryview, max_size: int, eof: bool) -> tuple[list[memoryview], int]:
    """The chunks of data whose cut points cannot change with more input, and their total length."""
    total = len(data)
    out: list[memoryview] = []
    consumed = 0
    for chunk in cdc.cut_buf(data):
        end = chunk.offset + chunk.length
        if not eof and end >= total and total - chunk.offset < max_size:
            break
        out.append(data[chunk.offset : end])
        consumed = end
    return out, consumed
