"""The files a binary cache keeps beside narinfos and NARs (``binary_cache.cache_files``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tvix_castore._lmdb_env import open_env, release_env
from tvix_castore.errors import DataCorruption
from tvix_store.binary_cache.cache_files import (
    MAX_FILE_BYTES,
    CacheFile,
    LmdbCacheFiles,
    MemoryCacheFiles,
    cache_files_for,
)
from tvix_store.pathinfoservice.cache import CachePathInfoService
from tvix_store.pathinfoservice.lmdb_store import LmdbPathInfoService
from tvix_store.pathinfoservice.memory import MemoryPathInfoService

LOG = "log/00bgd045z0d4icpbc2yyz4gx48ak44la-hello.drv"


def test_a_file_keeps_how_it_was_sent(tmp_path: Path) -> None:
    files = LmdbCacheFiles(str(tmp_path / "s"))
    try:
        assert files.get(LOG) is None
        files.put(CacheFile(LOG, "text/plain; charset=utf-8", "xz", b"\xfd7zXZ\x00 log"))
        files.put(CacheFile("00bgd045z0d4icpbc2yyz4gx48ak44la.ls", "application/json", "", b"{}"))
        files.put(CacheFile(LOG, "text/plain; charset=utf-8", "", b"uploaded again"))  # replaces
    finally:
        files.close()
    again = LmdbCacheFiles(str(tmp_path / "s"))
    try:
        assert again.get(LOG) == CacheFile(LOG, "text/plain; charset=utf-8", "", b"uploaded again")
        listing = again.get("00bgd045z0d4icpbc2yyz4gx48ak44la.ls")
        assert listing is not None and (listing.content_type, listing.data) == ("application/json", b"{}")
    finally:
        again.close()


@pytest.mark.parametrize(
    "value",
    [b"\x09\x00\x00\x00text", b"\x01"],
    ids=["headers past the end", "shorter than the header"],
)
def test_a_damaged_value_is_an_error_not_a_file(tmp_path: Path, value: bytes) -> None:
    store = open_env(str(tmp_path / "s"))
    try:
        with store.env.begin(write=True) as txn:
            txn.put(LOG.encode(), value, db=store.table("cachefiles"))
    finally:
        release_env(store)
    files = LmdbCacheFiles(str(tmp_path / "s"))
    try:
        with pytest.raises(DataCorruption, match=LOG):
            files.get(LOG)
    finally:
        files.close()


@pytest.mark.parametrize(
    ("content_type", "encoding", "size"),
    [
        ("text/plain\r\nX-Injected: 1", "", 1),
        ("text/plain", "x\x00", 1),
        ("é", "", 1),
        ("a", "", MAX_FILE_BYTES + 1),
    ],
)
def test_unusable_headers_or_sizes_are_refused(content_type: str, encoding: str, size: int) -> None:
    with pytest.raises(ValueError, match=LOG):
        CacheFile(LOG, content_type, encoding, bytes(size))


def test_memory_files_drop_the_oldest_beyond_their_capacity() -> None:
    files = MemoryCacheFiles(capacity=10)
    for i in range(4):
        files.put(CacheFile(f"debuginfo/{i:02}", "application/json", "", b"1234"))
    assert [files.get(f"debuginfo/{i:02}") is not None for i in range(4)] == [False, False, True, True]
    files.put(CacheFile("debuginfo/big", "application/json", "", bytes(50)))  # alone, it stays
    assert files.get("debuginfo/big") is not None and files.get("debuginfo/03") is None


def test_the_lmdb_store_of_the_path_infos_keeps_them(tmp_path: Path) -> None:
    lmdb_infos = LmdbPathInfoService(str(tmp_path / "s"))
    memory_infos = MemoryPathInfoService()
    try:
        for service, kind in (
            (lmdb_infos, LmdbCacheFiles),
            (CachePathInfoService(lmdb_infos, memory_infos), LmdbCacheFiles),  # its near side
            (memory_infos, MemoryCacheFiles),
            (CachePathInfoService(memory_infos, lmdb_infos), MemoryCacheFiles),
        ):
            files = cache_files_for(service)
            try:
                assert type(files) is kind
            finally:
                files.close()
    finally:
        lmdb_infos.close()


def test_names_are_bounded_in_bytes_and_files_may_be_empty(tmp_path: Path) -> None:
    """A name of up to 511 bytes (LMDB's key limit), counted in bytes; an empty file (an empty
    build log) is kept as one."""
    with pytest.raises(ValueError, match="511 bytes"):
        CacheFile("debuginfo/" + "a" * 502, "", "", b"")  # 512 bytes
    with pytest.raises(ValueError, match="511 bytes"):
        CacheFile("debuginfo/" + "é" * 251, "", "", b"")  # 251 characters, 512 bytes
    files = LmdbCacheFiles(str(tmp_path / "s"))
    try:
        longest = CacheFile("debuginfo/" + "a" * 501, "application/json", "", b"{}")
        empty = CacheFile(LOG, "", "", b"")
        files.put(longest)
        files.put(empty)
        assert files.get(longest.name) == longest and files.get(LOG) == empty
    finally:
        files.close()


def test_a_replaced_memory_file_counts_once() -> None:
    files = MemoryCacheFiles(capacity=10)
    for _ in range(5):
        files.put(CacheFile("debuginfo/00", "", "", b"1234"))
    files.put(CacheFile("debuginfo/01", "", "", b"1234"))
    assert files.get("debuginfo/00") is not None and files.get("debuginfo/01") is not None


def test_only_alias_records_are_aliases() -> None:
    from tvix_castore.digests import EMPTY_BLOB_DIGEST
    from tvix_castore.nodes import FileNode
    from tvix_store.binary_cache.cache_files import nar_alias, read_nar_alias

    alias = nar_alias("nar/x.nar", "xz", FileNode(EMPTY_BLOB_DIGEST, 0), 112, bytes(32))
    assert read_nar_alias(alias) == ("xz", FileNode(EMPTY_BLOB_DIGEST, 0), 112, bytes(32))
    assert read_nar_alias(CacheFile(alias.name, "application/octet-stream", "", alias.data)) is None


def test_closing_one_use_twice_releases_it_once(tmp_path: Path) -> None:
    """Another user of the shared store (a PathInfo service) goes on working."""
    infos = LmdbPathInfoService(str(tmp_path / "s"))
    files = LmdbCacheFiles(str(tmp_path / "s"))
    try:
        files.close()
        files.close()
        assert infos.get(bytes(20)) is None
    finally:
        infos.close()
