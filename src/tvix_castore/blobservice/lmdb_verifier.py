"""A helper process that checks chunks of an LMDB store ahead of a reader, beside its GIL.

A FUSE mount serves every READ on one thread, and verifying a chunk (BLAKE3 over bytes read
from the map) took about as long as the rest of a READ. Threads of the same process could not
take that work over: the FUSE thread holds the GIL while it replies, so they got it too late
and fell behind. A second process has a GIL of its own: it opens the same store, hashes the
chunks a reader will want next, and reports those that hashed right. The reader trusts the
report as if it had checked them itself (it is our code, over the same immutable store) and
checks everything else itself, as before; a failed check is not reported at all.

Wire format, both ways raw bytes over the child's stdin and stdout:
  parent -> child  one 32-byte chunk digest per chunk to check;
  child -> parent  ``digest (32 B) | size (u32 LE)`` for each chunk that hashed to its digest.
The child exits when its stdin closes (the parent closed it, or died), and ignores SIGINT: a
Ctrl-C in the mount's terminal is the parent's to handle.
"""

from __future__ import annotations

import logging
import os
import signal
import struct
import subprocess
import sys
import threading

from tvix_castore.digests import B3_LEN, B3Digest

__all__ = ["ChunkVerifier"]

log = logging.getLogger(__name__)

_REPORT = struct.Struct(f"<{B3_LEN}sI")
# The most digests one pipe write carries: PIPE_BUF (4096 on Linux) is the atomic limit.
_PIECE = 4096 // B3_LEN * B3_LEN


class ChunkVerifier:
    """The parent's end: ``submit`` digests, ``collect`` the (digest, size) pairs checked since.

    Neither call blocks (beyond a pipe write, which never fills: the child reads as fast as
    digests come). Thread-safe. When the child is gone, both quietly do nothing.
    """

    def __init__(self, store_path: str) -> None:
        self._lock = threading.Lock()
        self._pending = b""
        self._proc: subprocess.Popen[bytes] | None = subprocess.Popen(
            [sys.executable, "-m", __name__, store_path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert self._proc.stdin is not None and self._proc.stdout is not None
        # Neither end may ever block the caller (an event loop): a full pipe drops requests.
        os.set_blocking(self._proc.stdin.fileno(), False)
        os.set_blocking(self._proc.stdout.fileno(), False)

    def submit(self, digests: list[B3Digest]) -> None:
        """Ask the child to check these chunks; those that do not fit in the pipe are dropped."""
        with self._lock:
            proc = self._proc
            if proc is None or not digests:
                return
            assert proc.stdin is not None
            data = b"".join(digests)
            try:
                # Pieces of at most PIPE_BUF bytes go in whole or not at all: no torn digest.
                for start in range(0, len(data), _PIECE):
                    os.write(proc.stdin.fileno(), data[start : start + _PIECE])
            except BlockingIOError:
                pass
            except OSError as exc:
                log.debug("chunk verifier gone (%s); checking chunks in process", exc)
                self._stop(proc)

    def collect(self) -> list[tuple[B3Digest, int]]:
        """The chunks the child reported as checked since the last call."""
        with self._lock:
            proc = self._proc
            if proc is None:
                return []
            assert proc.stdout is not None
            try:
                got = os.read(proc.stdout.fileno(), 1 << 16)
            except BlockingIOError:
                return []
            except OSError:
                got = b""
            if not got:
                log.debug("chunk verifier exited; checking chunks in process")
                self._stop(proc)
                return []
            data = self._pending + got
            whole = len(data) - len(data) % _REPORT.size
            self._pending = data[whole:]
            return [(B3Digest(d), size) for d, size in _REPORT.iter_unpack(data[:whole])]

    def close(self) -> None:
        """Stop the child and wait for it; idempotent."""
        with self._lock:
            if self._proc is not None:
                self._stop(self._proc)

    def _stop(self, proc: subprocess.Popen[bytes]) -> None:
        self._proc = None
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _serve(store_path: str) -> None:
    """The child: check each digest read from stdin, report the good ones on stdout."""
    from tvix_castore.blobservice.lmdb_store import LmdbBlobService
    from tvix_castore.errors import StoreError

    service = LmdbBlobService(store_path)
    pending = b""
    try:
        while chunk := os.read(0, 1 << 16):
            data = pending + chunk
            whole = len(data) - len(data) % B3_LEN
            pending = data[whole:]
            for start in range(0, whole, B3_LEN):
                digest = B3Digest(data[start : start + B3_LEN])
                try:
                    size = service.verify_chunk(digest)
                except StoreError:
                    continue  # absent or corrupt: the reader finds out for itself
                if size is not None:
                    os.write(1, _REPORT.pack(digest, size))
    except BrokenPipeError:
        pass  # the parent stopped listening
    finally:
        service.close()


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _serve(sys.argv[1])
