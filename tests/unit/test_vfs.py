"""The filesystem semantics of ``tvix_castore.fs`` without a kernel: inodes, vfs, root nodes.

Memory and LMDB backends seeded with tvix's fixtures (spec §7.7 names); every errno the mount
would answer is asserted here at the ``Vfs`` level.
"""

from __future__ import annotations

import bisect
import errno
import os
import random
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fixtures import (
    BLOB_A,
    BLOB_A_DIGEST,
    BLOB_B,
    BLOB_B_DIGEST,
    DIRECTORY_COMPLICATED,
    DIRECTORY_WITH_KEEP,
    HELLOWORLD_BLOB_CONTENTS,
    HELLOWORLD_BLOB_DIGEST,
)

from nix_compat.store_path import StorePath
from tvix_castore.blobservice.memory import MemoryBlobService
from tvix_castore.digests import EMPTY_BLOB_DIGEST, B3Digest
from tvix_castore.directory import Directory
from tvix_castore.directoryservice.memory import MemoryDirectoryService
from tvix_castore.errors import StorageError
from tvix_castore.fs import vfs as vfs_module
from tvix_castore.fs.inodes import MODE_DIRECTORY, ROOT_INO, InodeTracker, attr_of
from tvix_castore.fs.root_nodes import DictRootNodes
from tvix_castore.fs.vfs import XATTR_BLOB_DIGEST, XATTR_DIRECTORY_DIGEST, Vfs, VfsError
from tvix_castore.nodes import DirectoryNode, FileNode, Node, SymlinkNode
from tvix_store.path_info import PathInfo
from tvix_store.pathinfoservice.memory import MemoryPathInfoService
from tvix_store.root_nodes import PathInfoRootNodes

A = b"00000000000000000000000000000000-test"
B = b"55555555555555555555555555555555-test"
HELLO = b"66666666666666666666666666666666-test"
LINK_A = b"11111111111111111111111111111111-test"
LINK_ELSEWHERE = b"44444444444444444444444444444444-test"
WITH_KEEP = b"22222222222222222222222222222222-test"
COMPLICATED = b"33333333333333333333333333333333-test"
MISSING_DIR = b"77777777777777777777777777777777-test"
MISSING_BLOB = b"88888888888888888888888888888888-test"

ROOTS: dict[bytes, Node] = {
    A: FileNode(BLOB_A_DIGEST, len(BLOB_A)),
    B: FileNode(BLOB_B_DIGEST, len(BLOB_B)),
    HELLO: FileNode(HELLOWORLD_BLOB_DIGEST, len(HELLOWORLD_BLOB_CONTENTS), executable=True),
    LINK_A: SymlinkNode(A),
    LINK_ELSEWHERE: SymlinkNode(b"/nix/store/somewhereelse"),
    WITH_KEEP: DIRECTORY_WITH_KEEP.as_node(),
    COMPLICATED: DIRECTORY_COMPLICATED.as_node(),
    MISSING_DIR: DirectoryNode(B3Digest(b"\x42" * 32), 2),
    MISSING_BLOB: FileNode(B3Digest(b"\x43" * 32), 10),
}


def seeded_vfs(**kw: bool) -> Vfs:
    blobs = MemoryBlobService()
    for data in (BLOB_A, BLOB_B, HELLOWORLD_BLOB_CONTENTS, b""):
        blobs.put(data)
    dirs = MemoryDirectoryService()
    dirs.put(DIRECTORY_WITH_KEEP)
    dirs.put(DIRECTORY_COMPLICATED)
    return Vfs(DictRootNodes(ROOTS), blobs, dirs, **kw)


@pytest.fixture
def vfs() -> Iterator[Vfs]:
    v = seeded_vfs()
    yield v
    v.close()


def errno_of(fn: object, *args: object) -> int:
    with pytest.raises(VfsError) as info:
        fn(*args)  # type: ignore[operator]
    return info.value.errno


def read_all(vfs: Vfs, ino: int, step: int = 4096) -> bytes:
    fh = vfs.open(ino)
    out = bytearray()
    try:
        while True:
            data = vfs.read(fh, len(out), step)
            if not data:
                return bytes(out)
            out += data
    finally:
        vfs.release(fh)


# -- inodes ---------------------------------------------------------------------------------


def test_tracker_dedups_files_and_symlinks_by_content_and_starts_after_root() -> None:
    t = InodeTracker()
    f = t.put(FileNode(BLOB_A_DIGEST, 2), ROOT_INO, b"a")
    assert f == ROOT_INO + 1
    assert t.put(FileNode(BLOB_A_DIGEST, 2), 7, b"elsewhere") == f
    assert t.put(SymlinkNode(b"x"), ROOT_INO, b"l") == t.put(SymlinkNode(b"x"), 9, b"m") != f
    assert t.get(f) == FileNode(BLOB_A_DIGEST, 2)
    assert t.get(ROOT_INO) is None and t.get(999) is None


def test_tracker_gives_each_place_of_a_directory_its_own_inode() -> None:
    """Linux keeps one dentry per directory inode: a shared one would move between parents."""
    t = InodeTracker()
    node = DIRECTORY_WITH_KEEP.as_node()
    here = t.put(node, ROOT_INO, b"x")
    assert t.put(DirectoryNode(DIRECTORY_WITH_KEEP.digest(), 2), ROOT_INO, b"x") == here
    assert t.put(node, ROOT_INO, b"y") != here
    assert t.put(node, here, b"x") != here
    assert t.get(here) == node


def test_tracker_keeps_executable_copies_apart() -> None:
    """An executable and a plain copy of the same bytes both keep their own mode."""
    t = InodeTracker()
    plain = t.put(FileNode(BLOB_A_DIGEST, 2), ROOT_INO, b"a")
    exe = t.put(FileNode(BLOB_A_DIGEST, 2, executable=True), ROOT_INO, b"b")
    assert plain != exe
    assert attr_of(exe, t.get(exe)).mode == stat.S_IFREG | 0o555  # type: ignore[arg-type]
    assert attr_of(plain, t.get(plain)).mode == stat.S_IFREG | 0o444  # type: ignore[arg-type]


# -- lookups and attributes ------------------------------------------------------------------


def test_root_attr_and_listing_denied(vfs: Vfs) -> None:
    root = vfs.getattr(ROOT_INO)
    assert root.mode == MODE_DIRECTORY and root.ino == 1
    assert errno_of(vfs.opendir, ROOT_INO) == errno.EPERM
    assert errno_of(vfs.list_root) == errno.EPERM


def test_root_listing_enabled_is_sorted_with_all_entries() -> None:
    v = seeded_vfs(list_root=True)
    try:
        v.opendir(ROOT_INO)
        names = [e.name for e in v.list_root().entries]
        assert names == sorted(ROOTS)
        first = v.list_root().entries[0]
        assert first.name == A and first.attr.size == 2 and stat.S_ISREG(first.attr.mode)
    finally:
        v.close()


def test_attributes_follow_the_checklist(vfs: Vfs) -> None:
    """Modes 0444/0555, sizes; a directory's size is its DirectoryNode size."""
    a = vfs.lookup(ROOT_INO, A)
    hello = vfs.lookup(ROOT_INO, HELLO)
    d = vfs.lookup(ROOT_INO, WITH_KEEP)
    link = vfs.lookup(ROOT_INO, LINK_ELSEWHERE)
    assert a and hello and d and link
    assert (a.mode, a.size) == (stat.S_IFREG | 0o444, 2)
    assert hello.mode == stat.S_IFREG | 0o555
    assert (d.mode, d.size) == (stat.S_IFDIR | 0o555, DIRECTORY_WITH_KEEP.size())
    assert (link.mode, link.size) == (stat.S_IFLNK | 0o444, len(b"/nix/store/somewhereelse"))
    vfs.children(d.ino)  # listing must not change the size
    assert vfs.getattr(d.ino).size == DIRECTORY_WITH_KEEP.size()


def test_lookup_misses(vfs: Vfs) -> None:
    assert vfs.lookup(ROOT_INO, A[:-1]) is None
    assert vfs.lookup(ROOT_INO, b"0000000000000000000000000000000-test") is None
    d = vfs.lookup(ROOT_INO, COMPLICATED)
    assert d is not None
    assert vfs.lookup(d.ino, b"nope") is None
    a = vfs.lookup(ROOT_INO, A)
    assert a is not None
    assert errno_of(vfs.lookup, a.ino, b"x") == errno.ENOTDIR
    assert errno_of(vfs.getattr, 12345) == errno.ENOENT


def test_readdir_order_and_shared_inodes(vfs: Vfs) -> None:
    c = vfs.lookup(ROOT_INO, COMPLICATED)
    w = vfs.lookup(ROOT_INO, WITH_KEEP)
    ln = vfs.lookup(ROOT_INO, LINK_ELSEWHERE)
    assert c and w and ln
    entries = vfs.children(c.ino).entries
    assert [e.name for e in entries] == [b".keep", b"aa", b"keep"]
    by = {e.name: e.attr for e in entries}
    assert stat.S_ISREG(by[b".keep"].mode) and by[b".keep"].size == 0
    assert stat.S_ISLNK(by[b"aa"].mode) and stat.S_ISDIR(by[b"keep"].mode)
    assert by[b"keep"].ino != w.ino  # same Directory in another place: an inode of its own
    assert vfs.lookup(c.ino, b"keep") == by[b"keep"]  # the same place: the same inode
    assert by[b"aa"].ino == ln.ino  # same target, same inode
    deep = vfs.children(by[b"keep"].ino).entries
    assert [e.name for e in deep] == [b".keep"]
    assert deep[0].attr.ino == by[b".keep"].ino  # same file contents, same inode
    assert vfs.children(w.ino).entries == deep


def test_missing_directory_is_eio(vfs: Vfs, caplog: pytest.LogCaptureFixture) -> None:
    d = vfs.lookup(ROOT_INO, MISSING_DIR)
    assert d is not None and stat.S_ISDIR(d.mode)
    assert errno_of(vfs.children, d.ino) == errno.EIO
    assert errno_of(vfs.lookup, d.ino, b".keep") == errno.EIO
    assert "missing" in caplog.text


def test_readlink(vfs: Vfs) -> None:
    link = vfs.lookup(ROOT_INO, LINK_A)
    a = vfs.lookup(ROOT_INO, A)
    assert link and a
    assert vfs.readlink(link.ino) == A
    assert errno_of(vfs.readlink, a.ino) == errno.EINVAL
    assert errno_of(vfs.readlink, ROOT_INO) == errno.EINVAL


# -- contents ---------------------------------------------------------------------------------


def test_read_small_large_and_empty(vfs: Vfs) -> None:
    a = vfs.lookup(ROOT_INO, A)
    b = vfs.lookup(ROOT_INO, B)
    c = vfs.lookup(ROOT_INO, COMPLICATED)
    assert a and b and c
    assert read_all(vfs, a.ino) == BLOB_A
    assert read_all(vfs, b.ino, 128 * 1024) == BLOB_B
    keep = vfs.children(c.ino).get(b".keep")
    assert keep is not None
    assert read_all(vfs, keep.attr.ino) == b""


def test_open_errors(vfs: Vfs) -> None:
    d = vfs.lookup(ROOT_INO, WITH_KEEP)
    link = vfs.lookup(ROOT_INO, LINK_A)
    a = vfs.lookup(ROOT_INO, A)
    missing = vfs.lookup(ROOT_INO, MISSING_BLOB)
    assert d and link and a and missing
    assert errno_of(vfs.open, d.ino) == errno.EISDIR
    assert errno_of(vfs.open, link.ino) == errno.EISDIR
    assert errno_of(vfs.open, ROOT_INO) == errno.EISDIR
    assert errno_of(vfs.open, a.ino, os.O_WRONLY) == errno.EROFS
    assert errno_of(vfs.open, missing.ino) == errno.EIO
    assert errno_of(vfs.read, 999, 0, 10) == errno.EBADF


def test_xattrs(vfs: Vfs) -> None:
    d = vfs.lookup(ROOT_INO, WITH_KEEP)
    a = vfs.lookup(ROOT_INO, A)
    link = vfs.lookup(ROOT_INO, LINK_A)
    assert d and a and link
    assert vfs.listxattr(d.ino) == [XATTR_DIRECTORY_DIGEST]
    assert vfs.getxattr(d.ino, XATTR_DIRECTORY_DIGEST) == str(DIRECTORY_WITH_KEEP.digest()).encode()
    assert vfs.listxattr(a.ino) == [XATTR_BLOB_DIGEST]
    assert vfs.getxattr(a.ino, XATTR_BLOB_DIGEST) == str(BLOB_A_DIGEST).encode()
    assert vfs.getxattr(a.ino, XATTR_BLOB_DIGEST).startswith(b"b3:")
    assert errno_of(vfs.getxattr, a.ino, b"user.cheesecake") == errno.ENODATA
    assert errno_of(vfs.getxattr, a.ino, XATTR_DIRECTORY_DIGEST) == errno.ENODATA
    assert errno_of(vfs.getxattr, a.ino, b"system.posix_acl_access") == errno.ENOTSUP
    # ls stops asking for labels on a device that does not support them
    assert errno_of(vfs.getxattr, a.ino, b"security.selinux") == errno.ENOTSUP
    assert vfs.listxattr(link.ino) == [] and vfs.listxattr(ROOT_INO) == []
    assert errno_of(vfs.getxattr, ROOT_INO, XATTR_DIRECTORY_DIGEST) == errno.ENODATA


def test_xattrs_off_is_enosys() -> None:
    v = seeded_vfs(show_xattr=False)
    try:
        a = v.lookup(ROOT_INO, A)
        assert a is not None
        assert errno_of(v.getxattr, a.ino, XATTR_BLOB_DIGEST) == errno.ENOSYS
        assert errno_of(v.listxattr, a.ino) == errno.ENOSYS
    finally:
        v.close()


class _FailingDirs(MemoryDirectoryService):
    def get(self, digest: B3Digest) -> Directory | None:
        raise StorageError(f"backend down while getting {digest}")


def test_service_errors_become_eio(caplog: pytest.LogCaptureFixture) -> None:
    v = Vfs(DictRootNodes(ROOTS), MemoryBlobService(), _FailingDirs())
    try:
        d = v.lookup(ROOT_INO, WITH_KEEP)
        assert d is not None
        assert errno_of(v.children, d.ino) == errno.EIO
        assert "backend down" in caplog.text
    finally:
        v.close()


# -- chunked blobs on LMDB: chunk index, readahead, cache ------------------------------------


@pytest.fixture
def lmdb_vfs(tmp_path: Path) -> Iterator[tuple[Vfs, bytes, int]]:
    from tvix_castore.blobservice.lmdb_store import LmdbBlobService

    blobs = LmdbBlobService(str(tmp_path / "store"))
    data = random.Random(7).randbytes(5 * 1024 * 1024 + 123)
    digest = blobs.put(data)
    chunks = blobs.chunks(digest)
    assert chunks and len(chunks) > 4
    roots: dict[bytes, Node] = {A: FileNode(digest, len(data))}
    v = Vfs(DictRootNodes(roots), blobs, MemoryDirectoryService(), cache_bytes=2 * 1024 * 1024)
    a = v.lookup(ROOT_INO, A)
    assert a is not None
    yield v, data, a.ino
    v.close()
    blobs.close()


def test_chunked_sequential_and_random_reads(lmdb_vfs: tuple[Vfs, bytes, int]) -> None:
    v, data, ino = lmdb_vfs
    assert read_all(v, ino, 1 << 20) == data
    fh = v.open(ino)
    rng = random.Random(1)
    for _ in range(200):
        off = rng.randrange(0, len(data) + 10)
        n = rng.choice([1, 4096, 300_000, 1 << 20])
        assert bytes(v.read(fh, off, n)) == data[off : off + n]
    v.release(fh)


def test_read_nowait_checks_chunks_itself(lmdb_vfs: tuple[Vfs, bytes, int]) -> None:
    """Chunks in memory are verified by read_nowait on the spot; nothing is fetched ahead."""
    v, data, ino = lmdb_vfs
    fh = v.open(ino)
    starts = v._files[fh].starts
    for offset in range(0, 2 * 1024 * 1024, 128 * 1024):
        got = v.read_nowait(fh, offset, 128 * 1024)
        assert got is not None
        assert bytes(got) == data[offset : offset + 128 * 1024]
    assert not v._files[fh].prefetching
    touched = bisect.bisect_right(starts, 2 * 1024 * 1024 - 1)
    assert [c.digest in v._verified for c in v._files[fh].chunks or ()] == [
        i < touched for i in range(len(starts))
    ]
    v.release(fh)


def test_read_helper_prepares_sequential_reads(
    lmdb_vfs: tuple[Vfs, bytes, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the read helper started, sequential READs come from its windows, byte-exact."""
    import tvix_castore.fs.windows as windows_module

    # A READ waits this long for the window the helper is filling (5 ms in the mount): on a
    # loaded machine the helper can take longer, and the READ is then answered the usual way.
    monkeypatch.setattr(windows_module, "WAIT_SECONDS", 2.0)
    v, data, ino = lmdb_vfs
    v.start_helpers()
    assert v._windows is not None
    step = 256 * 1024
    reads = -(-len(data) // step)
    deadline = time.monotonic() + 30
    while True:  # the first passes may be over before the helper has started up
        fh = v.open(ino)
        served_from_windows = 0
        for offset in range(0, len(data), step):
            got = v.read_nowait(fh, offset, step)
            assert got is not None
            assert bytes(got) == data[offset : offset + step]
            served_from_windows += isinstance(got, memoryview)
        v.release(fh)
        if served_from_windows >= reads // 2 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert served_from_windows >= reads // 2  # once up, the helper is waited for, not raced
    assert v._windows._files == {}


def test_slow_check_starts_a_prefetching_spell(
    lmdb_vfs: tuple[Vfs, bytes, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a check slow enough to have read from disk, the prefetch threads verify the next
    chunks and read_nowait serves only those, until the spell's end."""
    monkeypatch.setattr(vfs_module, "_PREFETCH_SPELL_BYTES", 2 * 1024 * 1024)
    v, data, ino = lmdb_vfs
    v._slow_check = 0.0  # every check counts as slow
    fh = v.open(ino)
    of = v._files[fh]
    starts = of.starts
    assert starts[-1] > starts[1] + 2 * 1024 * 1024  # the last chunk lies past the spell
    first = v.read_nowait(fh, 0, starts[1])  # checks chunk 0 here, slowly
    assert first is not None and bytes(first) == data[: starts[1]]
    assert of.prefetching
    # Sequential: the prefetch threads fetch the next chunks; read_nowait waits for them.
    got = None
    for _ in range(200):
        got = v.read_nowait(fh, starts[1], 4096)
        if got is not None:
            break
        threading.Event().wait(0.01)
    assert got is not None and bytes(got) == data[starts[1] : starts[1] + 4096]
    # Within the spell, a chunk no prefetch reached is not checked here: the adapter must hop.
    assert v.read_nowait(fh, of.inline_from - 100, 5) is None
    # Past the spell's end read_nowait checks chunks itself again.
    end_of_spell = of.inline_from
    tail = v.read_nowait(fh, starts[-1], 100)
    assert tail is not None and bytes(tail) == data[starts[-1] : starts[-1] + 100]
    assert of.inline_from > end_of_spell  # and that slow check started a new spell
    v.release(fh)


def test_cache_is_bounded(lmdb_vfs: tuple[Vfs, bytes, int]) -> None:
    v, data, ino = lmdb_vfs
    assert read_all(v, ino, 1 << 20) == data
    assert v._cache.size_bytes <= 2 * 1024 * 1024


def test_concurrent_readers_threads(lmdb_vfs: tuple[Vfs, bytes, int]) -> None:
    v, data, ino = lmdb_vfs
    errors: list[BaseException] = []

    def reader(seed: int) -> None:
        try:
            fh = v.open(ino)
            rng = random.Random(seed)
            for _ in range(50):
                off = rng.randrange(0, len(data))
                n = rng.choice([4096, 1 << 20])
                assert bytes(v.read(fh, off, n)) == data[off : off + n]
            v.release(fh)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_missing_chunk_is_eio(tmp_path: Path) -> None:
    """A chunk gone from the LMDB store: bytes before it are served, a read touching it is EIO."""
    from tvix_castore._lmdb_env import open_env, release_env
    from tvix_castore.blobservice import ChunkMeta
    from tvix_castore.blobservice.lmdb_store import LmdbBlobService

    blobs = LmdbBlobService(str(tmp_path / "s"))
    data = random.Random(3).randbytes(3 * 1024 * 1024)
    digest = blobs.put(data)
    chunks: list[ChunkMeta] = blobs.chunks(digest) or []
    store = open_env(str(tmp_path / "s"))
    try:
        with store.env.begin(write=True) as txn:
            assert txn.delete(chunks[1].digest, db=store.table("chunks"))
    finally:
        release_env(store)
    v = Vfs(DictRootNodes({A: FileNode(digest, len(data))}), blobs, MemoryDirectoryService())
    try:
        a = v.lookup(ROOT_INO, A)
        assert a is not None
        fh = v.open(a.ino)
        assert bytes(v.read(fh, 0, 1000)) == data[:1000]
        assert errno_of(v.read, fh, chunks[0].size + 5, 10) == errno.EIO
        # The mount keeps serving what is there.
        assert bytes(v.read(fh, 10, 20)) == data[10:30]
        v.release(fh)
    finally:
        v.close()
        blobs.close()


@pytest.mark.parametrize("helper", [False, True], ids=["in-process", "read-helper"])
def test_corrupt_chunk_is_eio_and_never_served(tmp_path: Path, helper: bool) -> None:
    """A chunk whose stored bytes no longer hash to its digest is refused (decision 6), also
    when the read helper prepares the READs (its window fails; the READ is checked here)."""
    from tvix_castore._lmdb_env import open_env, release_env
    from tvix_castore.blobservice import ChunkMeta
    from tvix_castore.blobservice.lmdb_store import LmdbBlobService

    blobs = LmdbBlobService(str(tmp_path / "s"))
    data = random.Random(4).randbytes(3 * 1024 * 1024)
    digest = blobs.put(data)
    chunks: list[ChunkMeta] = blobs.chunks(digest) or []
    victim = chunks[1]
    start = chunks[0].size
    store = open_env(str(tmp_path / "s"))
    try:
        with store.env.begin(write=True) as txn:
            rotten = bytearray(data[start : start + victim.size])
            rotten[100] ^= 1
            txn.put(victim.digest, bytes(rotten), db=store.table("chunks"))
    finally:
        release_env(store)
    v = Vfs(DictRootNodes({A: FileNode(digest, len(data))}), blobs, MemoryDirectoryService())
    try:
        a = v.lookup(ROOT_INO, A)
        assert a is not None
        fh = v.open(a.ino)
        if helper:
            v.start_helpers()
            step = 64 * 1024
            offset = 0
            while offset + step <= start:  # sequential READs up to the bad chunk: fine
                got = v.read_nowait(fh, offset, step)
                assert got is not None and bytes(got) == data[offset : offset + step]
                offset += step
            assert errno_of(v.read_nowait, fh, offset, step) == errno.EIO  # the window failed
        assert errno_of(v.read_nowait, fh, start + 5, 4096) == errno.EIO  # checked in place
        assert errno_of(v.read, fh, start, 4096) == errno.EIO
        assert errno_of(v.read, fh, start - 10, 4096) == errno.EIO  # straddling into it
        assert bytes(v.read(fh, 0, 1000)) == data[:1000]
        v.release(fh)
    finally:
        v.close()
        blobs.close()


# -- root nodes over a PathInfoService --------------------------------------------------------


def test_pathinfo_root_nodes_match_whole_basename() -> None:
    svc = MemoryPathInfoService()
    sp = StorePath.from_bytes("00000000000000000000000000000000-test")
    node = FileNode(EMPTY_BLOB_DIGEST, 0)
    svc.put(PathInfo(store_path=sp, node=node, nar_size=0, nar_sha256=bytes(32)))
    roots = PathInfoRootNodes(svc)
    assert roots.get_by_basename(b"00000000000000000000000000000000-test") == node
    assert roots.get_by_basename(b"00000000000000000000000000000000-tes") is None
    assert roots.get_by_basename(b"00000000000000000000000000000000-other") is None
    assert roots.get_by_basename(b"0000000000000000000000000000000-test") is None
    assert roots.get_by_basename(b"not a store path") is None
    assert list(roots.list()) == [(b"00000000000000000000000000000000-test", node)]


def test_chunk_rotting_after_a_good_read_is_caught(tmp_path: Path) -> None:
    """A check holds only briefly (memo.CHECK_HOLDS): a chunk read fine once and damaged on disk
    afterwards is refused when read again later, not served from the earlier check."""
    import time

    from tvix_castore._lmdb_env import open_env, release_env
    from tvix_castore.blobservice.lmdb_store import LmdbBlobService
    from tvix_castore.blobservice.memo import CHECK_HOLDS

    blobs = LmdbBlobService(str(tmp_path / "s"))
    data = random.Random(5).randbytes(1024 * 1024)
    digest = blobs.put(data)
    chunks = blobs.chunks(digest) or []
    v = Vfs(DictRootNodes({A: FileNode(digest, len(data))}), blobs, MemoryDirectoryService())
    try:
        a = v.lookup(ROOT_INO, A)
        assert a is not None
        fh = v.open(a.ino)
        assert bytes(v.read(fh, 0, len(data))) == data
        store = open_env(str(tmp_path / "s"))
        try:
            with store.env.begin(write=True) as txn:
                rotten = bytearray(data[: chunks[0].size])
                rotten[7] ^= 1
                txn.put(chunks[0].digest, bytes(rotten), db=store.table("chunks"))
        finally:
            release_env(store)
        time.sleep(CHECK_HOLDS + 0.2)
        assert errno_of(v.read_nowait, fh, 0, 4096) == errno.EIO
        assert errno_of(v.read, fh, 0, 4096) == errno.EIO
        v.release(fh)
    finally:
        v.close()
        blobs.close()


def test_file_whose_blob_has_another_size_is_eio(tmp_path: Path) -> None:
    """A FileNode whose size differs from its blob's (a damaged PathInfo or Directory) cannot
    be opened: it would read short, or end before its st_size. nar refuses it too."""
    from tvix_castore.blobservice.lmdb_store import LmdbBlobService

    blobs = LmdbBlobService(str(tmp_path / "s"))
    data = random.Random(6).randbytes(2 * 1024 * 1024)
    digest = blobs.put(data)
    try:
        for claimed in (len(data) - 1, len(data) + 1):
            v = Vfs(DictRootNodes({A: FileNode(digest, claimed)}), blobs, MemoryDirectoryService())
            try:
                a = v.lookup(ROOT_INO, A)
                assert a is not None
                assert errno_of(v.open, a.ino) == errno.EIO
            finally:
                v.close()
    finally:
        blobs.close()
