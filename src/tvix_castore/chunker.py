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
    """Incremental FastCDC: feed bytes, receive complete chunks (copies, owned by the caller).

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
        self._buf = bytearray()
        self._scan_at = batch
        self._finished = False

    @property
    def pending(self) -> int:
        """Bytes fed but not yet returned as chunks."""
        return len(self._buf)

    @property
    def max_size(self) -> int:
        """The largest chunk this chunker produces."""
        return self._max

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """Add data; return the chunks that are now complete, in order."""
        if self._finished:
            raise ValueError("chunker already finished")
        if not data:
            return []
        if not self._buf and len(data) >= self._scan_at:
            # Cut the caller's buffer directly instead of copying it into ours first.
            return self._cut(memoryview(data).cast("B"), eof=False)
        self._buf += data
        if len(self._buf) < self._scan_at:
            return []
        return self._cut(None, eof=False)

    def finish(self) -> list[bytes]:
        """Signal EOF; return the remaining chunks (none for empty input)."""
        if self._finished:
            return []
        self._finished = True
        return self._cut(None, eof=True)

    def _cut(self, source: memoryview | None, eof: bool) -> list[bytes]:
        data: bytes | bytearray | memoryview = self._buf if source is None else source
        out, consumed = _final_chunks(self._cdc, data, self._max, eof)
        # _final_chunks has returned, so no view into self._buf is alive and it may be resized.
        if source is None:
            del self._buf[:consumed]
        else:
            self._buf = bytearray(source[consumed:])
        self._scan_at = len(self._buf) + self._batch
        return out


def _final_chunks(
    cdc: FastCDC, data: bytes | bytearray | memoryview, max_size: int, eof: bool
) -> tuple[list[bytes], int]:
    """The chunks of data whose cut points cannot change with more input, and their total length."""
    total = len(data)
    out: list[bytes] = []
    consumed = 0
    for chunk in cdc.cut_buf(data):
        end = chunk.offset + chunk.length
        if not eof and end >= total and total - chunk.offset < max_size:
            break
        out.append(bytes(chunk.data))
        consumed = end
    return out, consumed
