"""Flushing a local store's data file to disk early, while a long write runs.

``BackgroundWriteback`` is used by ``import``, ``copy`` and the daemon: anything that streams a
lot of data into the LMDB blob store and ends with the durability sync of a PathInfo put.
"""

from __future__ import annotations

import os
import threading

from tvix_castore.blobservice import BlobService

__all__ = ["BackgroundWriteback"]


class BackgroundWriteback:
    """Flushes a local store's data file to disk in a helper thread while an import runs.

    The path-info service makes every blob durable (fsync) before it puts a PathInfo; left to
    that moment, the whole import's data is written back at once while the command waits.
    Flushing as the data arrives overlaps that disk work with reading and hashing, so the final
    sync finds little left to do. This is only an early start of work that happens anyway: it
    changes nothing about what is stored or when it becomes visible. Stores without a local
    LMDB data file (memory, gRPC) are left alone.
    """

    _INTERVAL = 0.05
    _IDLE_INTERVAL = 1.6

    def __init__(self, blob_service: BlobService) -> None:
        self._stop = threading.Event()
        self._fd = -1
        self._thread: threading.Thread | None = None
        store_dir = getattr(blob_service, "path", None)
        if not isinstance(store_dir, str) or not store_dir:
            return
        try:
            self._fd = os.open(os.path.join(store_dir, "data.mdb"), os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return
        self._thread = threading.Thread(target=self._run, name="writeback", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        # Only a file that changed since the last flush is flushed, and while nothing changes the
        # checks slow down to one every _IDLE_INTERVAL: an idle daemon does not wake 20 times a
        # second for nothing.
        interval = self._INTERVAL
        flushed: tuple[int, int] | None = None
        while not self._stop.wait(interval):
            try:
                st = os.fstat(self._fd)
                stamp = (st.st_mtime_ns, st.st_size)
                if stamp == flushed:
                    interval = min(interval * 2, self._IDLE_INTERVAL)
                    continue
                interval = self._INTERVAL
                self._flush()
                flushed = stamp
            except OSError:
                return  # the final sync reports real problems; this is only a head start

    def _flush(self) -> None:
        os.fdatasync(self._fd)

    def __enter__(self) -> BackgroundWriteback:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the helper thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._fd != -1:
            os.close(self._fd)
            self._fd = -1
