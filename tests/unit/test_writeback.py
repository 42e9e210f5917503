"""The background write-back flushes a real LMDB data file after writes, and not while idle."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from tvix_castore.blobservice.lmdb_store import LmdbBlobService
from tvix_castore.blobservice.memory import MemoryBlobService
from tvix_store.writeback import BackgroundWriteback


class _Counting(BackgroundWriteback):
    def __init__(self, blobs: object) -> None:
        self.flushes = 0
        self.changed = threading.Event()
        super().__init__(blobs)  # type: ignore[arg-type]

    def _flush(self) -> None:
        super()._flush()
        self.flushes += 1
        self.changed.set()


def _wait_for_flush(wb: _Counting, timeout: float = 5.0) -> None:
    assert wb.changed.wait(timeout), "no flush after a write"
    wb.changed.clear()


def test_flushes_after_writes_only(tmp_path: Path) -> None:
    blobs = LmdbBlobService(str(tmp_path))
    wb = _Counting(blobs)
    try:
        blobs.put(os.urandom(1 << 20))
        _wait_for_flush(wb)
        time.sleep(0.3)  # settle: a write just before the first flush may cause one more
        wb.changed.clear()
        settled = wb.flushes
        time.sleep(1.0)
        assert wb.flushes == settled, "flushed while nothing was written"
        blobs.put(os.urandom(1 << 20))
        _wait_for_flush(wb)
        assert wb.flushes > settled
    finally:
        wb.close()
        blobs.close()


def test_stores_without_a_data_file_get_no_thread() -> None:
    wb = _Counting(MemoryBlobService())
    assert wb._thread is None
    wb.close()
