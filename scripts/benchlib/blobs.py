"""Blob storage: dedup of near-identical files, and LMDB blob write/read throughput vs plain files.

All figures come from one run on one machine: ours against a plain file written and read the same
way (1 MiB pieces, no fsync on either side, page cache warm for reads).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from benchlib.common import BenchContext, Row, timed

SECTION = "blobs"
MiB = 1024 * 1024
PIECE = MiB


def _import_service() -> type:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
    from tvix_castore.blobservice.lmdb_store import LmdbBlobService

    return LmdbBlobService


def _near_identical(ctx: BenchContext) -> tuple[bytes, bytes]:
    a = ctx.random_file("blobs-64m-a", 64 * MiB).read_bytes()
    b = bytearray(a)
    b[1000:1000] = os.urandom(24)  # an insert near the start shifts everything after it
    mid = len(b) // 2
    b[mid : mid + 16] = os.urandom(16)  # and an overwrite in the middle
    return a, bytes(b)


def _dedup_rows(ctx: BenchContext, service_cls: type) -> list[Row]:
    a, b = _near_identical(ctx)
    store = ctx.dir("blobs-dedup")
    shutil.rmtree(store)
    svc = service_cls(str(store))
    try:
        svc.put(a)
        one = os.path.getsize(store / "data.mdb")
        svc.put(b)
        both = os.path.getsize(store / "data.mdb")
    finally:
        svc.close()
    return [
        Row(
            SECTION,
            "2 near-identical 64 MiB files on disk (vs one plain file)",
            both / MiB,
            len(a) / MiB,
            "MiB",
            target=1.2,
        ),
        Row(
            SECTION,
            "2 near-identical 64 MiB files on disk (vs one in LMDB)",
            both / MiB,
            one / MiB,
            "MiB",
            target=1.2,
        ),
    ]


def _throughput_rows(ctx: BenchContext, service_cls: type) -> list[Row]:
    src = ctx.random_file("blobs-256m", 256 * MiB, seed=1)
    data = src.read_bytes()
    view = memoryview(data)
    size_mb = len(data) / 1e6
    out_dir = ctx.dir("blobs-throughput")
    plain = out_dir / "plain.bin"
    store = out_dir / "lmdb"
    digest = None

    def write_plain() -> None:
        with open(plain, "wb") as f:
            for i in range(0, len(data), PIECE):
                f.write(view[i : i + PIECE])

    def read_plain() -> None:
        with open(plain, "rb", buffering=0) as f:
            while f.read(PIECE):
                pass

    def write_ours() -> None:
        nonlocal digest
        shutil.rmtree(store, ignore_errors=True)
        svc = service_cls(str(store))
        try:
            w = svc.open_write()
            for i in range(0, len(data), PIECE):
                w.write(view[i : i + PIECE])
            digest = w.close()
        finally:
            svc.close()

    def read_ours() -> None:
        svc = service_cls(str(store))
        try:
            r = svc.open_read(digest)
            with r:
                while r.read(PIECE):
                    pass
        finally:
            svc.close()

    t_plain_w = timed(write_plain, repeat=2)
    t_ours_w = timed(write_ours, repeat=2)
    t_plain_r = timed(read_plain, repeat=3)
    t_ours_r = timed(read_ours, repeat=3)
    return [
        Row(
            SECTION,
            "write 256 MiB random blob (vs plain file)",
            size_mb / t_ours_w,
            size_mb / t_plain_w,
            "MB/s",
            better="higher",
        ),
        Row(
            SECTION,
            "read 256 MiB blob, verified (vs plain file, cached)",
            size_mb / t_ours_r,
            size_mb / t_plain_r,
            "MB/s",
            better="higher",
        ),
    ]


def run(ctx: BenchContext) -> list[Row]:
    service_cls = _import_service()
    return _dedup_rows(ctx, service_cls) + _throughput_rows(ctx, service_cls)
