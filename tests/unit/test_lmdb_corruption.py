"""LMDB directory and path-info backends refuse stored bytes that are damaged (spec §3.2).

The damage is written straight into the tables through the shared environment, as a disk
error or a foreign writer would leave it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fixtures import DIRECTORY_COMPLICATED, DIRECTORY_WITH_KEEP, PATH_INFO

from tvix_castore import blobservice, directoryservice
from tvix_castore._lmdb_env import LmdbStore, open_env, release_env
from tvix_castore.directoryservice import DirectoryService
from tvix_castore.errors import DataCorruption
from tvix_store import pathinfoservice
from tvix_store.pathinfoservice import PathInfoService
from tvix_store.proto_conv import encode_path_info


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    """The store directory."""
    return tmp_path / "store"


@pytest.fixture
def raw(store_dir: Path) -> Iterator[LmdbStore]:
    """The shared environment, for writing damage directly."""
    store = open_env(str(store_dir))
    yield store
    release_env(store)


@pytest.fixture
def dirs(store_dir: Path, raw: LmdbStore) -> Iterator[DirectoryService]:
    """The LMDB directory service on the same environment."""
    service = directoryservice.from_addr(f"lmdb://{store_dir}")
    yield service
    service.close()


@pytest.fixture
def infos(store_dir: Path, raw: LmdbStore) -> Iterator[PathInfoService]:
    """The LMDB path-info service on the same environment."""
    url = f"lmdb://{store_dir}"
    blobs, directories = blobservice.from_addr(url), directoryservice.from_addr(url)
    service = pathinfoservice.from_addr(url, blobs, directories)
    yield service
    service.close()
    directories.close()
    blobs.close()


def _put_raw(store: LmdbStore, table: str, key: bytes, value: bytes) -> None:
    db: Any = store.table(table)
    with store.env.begin(write=True, db=db) as txn:
        txn.put(key, value)


def test_directory_bytes_not_matching_key(raw: LmdbStore, dirs: DirectoryService) -> None:
    """A Directory stored under another Directory's digest is refused by get and get_recursive."""
    _put_raw(raw, "directories", DIRECTORY_COMPLICATED.digest(), DIRECTORY_WITH_KEEP.encode())
    with pytest.raises(DataCorruption, match=re.escape(str(DIRECTORY_COMPLICATED.digest()))):
        dirs.get(DIRECTORY_COMPLICATED.digest())
    with pytest.raises(DataCorruption):
        list(dirs.get_recursive(DIRECTORY_COMPLICATED.digest()))


def test_corrupt_child_in_closure(raw: LmdbStore, dirs: DirectoryService) -> None:
    """A damaged Directory below the root stops the recursive get."""
    dirs.put(DIRECTORY_COMPLICATED)
    _put_raw(raw, "directories", DIRECTORY_WITH_KEEP.digest(), DIRECTORY_WITH_KEEP.encode()[:-1] + b"\x00")
    stream = dirs.get_recursive(DIRECTORY_COMPLICATED.digest())
    assert next(stream) == DIRECTORY_COMPLICATED
    with pytest.raises(DataCorruption):
        next(stream)


def test_undecodable_path_info(raw: LmdbStore, infos: PathInfoService) -> None:
    """A PathInfo value that does not decode is refused by get and list."""
    _put_raw(raw, "pathinfos", PATH_INFO.store_path.digest, b"\x0a\xff")
    with pytest.raises(DataCorruption):
        infos.get(PATH_INFO.store_path.digest)
    with pytest.raises(DataCorruption):
        list(infos.list())


def test_path_info_under_wrong_key(raw: LmdbStore, infos: PathInfoService) -> None:
    """A valid PathInfo stored under another store path's digest is refused."""
    _put_raw(raw, "pathinfos", b"\x01" * 20, encode_path_info(PATH_INFO))
    with pytest.raises(DataCorruption):
        infos.get(b"\x01" * 20)


def test_damaged_byte_in_a_path_info(raw: LmdbStore, infos: PathInfoService) -> None:
    """A PathInfo carries the digest of its encoding: one damaged byte in it is refused, where
    it would have decoded into other metadata."""
    infos.put(PATH_INFO)
    db: Any = raw.table("pathinfos")
    with raw.env.begin(db=db) as txn:
        stored = bytearray(txn.get(PATH_INFO.store_path.digest))
    stored[-40] ^= 1
    _put_raw(raw, "pathinfos", PATH_INFO.store_path.digest, bytes(stored))
    with pytest.raises(DataCorruption, match="does not match its digest"):
        infos.get(PATH_INFO.store_path.digest)
    with pytest.raises(DataCorruption):
        list(infos.list())


def test_path_info_written_before_digests_still_reads(raw: LmdbStore, infos: PathInfoService) -> None:
    """A bare encoding, as stores written before the digest was added hold, is read as it is."""
    _put_raw(raw, "pathinfos", PATH_INFO.store_path.digest, encode_path_info(PATH_INFO))
    assert infos.get(PATH_INFO.store_path.digest) == PATH_INFO
    assert list(infos.list()) == [PATH_INFO]


_HOLD = """
import sys, time, lmdb
env = lmdb.open(sys.argv[1], max_dbs=10, map_size=1 << 40, max_readers=1024)
print("open", flush=True)
time.sleep(120)
"""
_DIE_READING = """
import os, signal, sys, lmdb
env = lmdb.open(sys.argv[1], max_dbs=10, map_size=1 << 40, max_readers=1024)
txn = env.begin()
print(os.getpid(), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""
_READERS = """
import sys, lmdb
print(lmdb.open(sys.argv[1], max_dbs=10, map_size=1 << 40, max_readers=1024).readers())
"""


def test_readers_of_killed_processes_are_cleared(tmp_path: Path) -> None:
    """A process killed inside a read transaction leaves its reader slot taken while another
    process keeps the store open (a mount, a daemon); the next command to open the store frees
    it, so the file does not grow for ever and the slots do not run out."""
    import subprocess
    import sys

    from tvix_cli import tvix

    store = tmp_path / "store"
    (tmp_path / "f").write_bytes(b"x")
    tvix(store, "import", tmp_path / "f")
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(store)], stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"open\n"
        dead = subprocess.run(
            [sys.executable, "-c", _DIE_READING, str(store)], capture_output=True, timeout=60
        ).stdout.split()[0]

        def readers() -> list[bytes]:
            out = subprocess.run(
                [sys.executable, "-c", _READERS, str(store)], capture_output=True, check=True, timeout=60
            ).stdout
            return [line.split()[0] for line in out.splitlines()[1:] if line.strip()]

        assert dead in readers()
        tvix(store, "path-info", "--all")
        assert dead not in readers()
    finally:
        holder.kill()
        holder.wait()


def test_a_process_keeping_the_store_open_clears_stale_readers(tmp_path: Path) -> None:
    """A daemon or mount keeps the store open for days, and no other process may open it
    meanwhile: its own writes clear the slots of readers killed mid-read (at most once a
    minute), so they do not pin old pages for ever."""
    import subprocess
    import sys

    from tvix_castore import _lmdb_env
    from tvix_castore.blobservice.lmdb_store import LmdbBlobService

    blobs = LmdbBlobService(str(tmp_path / "store"))  # this process is the long-running one
    try:
        blobs.put(b"first")
        env = blobs._env
        dead = subprocess.run(
            [sys.executable, "-c", _DIE_READING, str(tmp_path / "store")], capture_output=True, timeout=60
        ).stdout.split()[0]

        def readers() -> list[bytes]:
            return [line.split()[0] for line in env.readers().encode().splitlines()[1:] if line.strip()]

        assert dead in readers()
        blobs.put(b"second, within the minute")
        assert dead in readers()
        _lmdb_env._reader_checked.clear()  # as if a minute had passed
        blobs.put(b"third")
        assert dead not in readers()
    finally:
        blobs.close()
