"""The pyfuse3 adapter under real trio, without a kernel: errno mapping and the one-log-line rule.

Handlers are called directly inside ``trio.run``; pyfuse3's types work without a mount.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import pyfuse3
import pytest
import trio
from fixtures import BLOB_A, BLOB_A_DIGEST, DIRECTORY_WITH_KEEP

from tvix_castore.blobservice.memory import MemoryBlobService
from tvix_castore.directoryservice.memory import MemoryDirectoryService
from tvix_castore.fs.fuse import FuseOperations
from tvix_castore.fs.inodes import ROOT_INO
from tvix_castore.fs.root_nodes import DictRootNodes
from tvix_castore.fs.vfs import Vfs
from tvix_castore.nodes import FileNode

NAME = b"00000000000000000000000000000000-test"
DIR = b"22222222222222222222222222222222-test"


class ExplodingVfs(Vfs):
    """A Vfs whose readlink has a bug."""

    def readlink(self, ino: int) -> bytes:
        raise RuntimeError("a bug in readlink")


def make_ops(cls: type[Vfs] = Vfs, **kw: bool) -> FuseOperations:
    blobs = MemoryBlobService()
    blobs.put(BLOB_A)
    blobs.put(b"")
    dirs = MemoryDirectoryService()
    dirs.put(DIRECTORY_WITH_KEEP)
    roots = DictRootNodes({NAME: FileNode(BLOB_A_DIGEST, 2), DIR: DIRECTORY_WITH_KEEP.as_node()})
    return FuseOperations(cls(roots, blobs, dirs, **kw), threads=2)


def run(fn: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    return trio.run(fn)


def fuse_errno(fn: Callable[[], Coroutine[Any, Any, Any]]) -> int:
    with pytest.raises(pyfuse3.FUSEError) as info:
        run(fn)
    return info.value.errno


CTX: Any = None  # handlers here never look at the request context


def test_lookup_getattr_open_read() -> None:
    ops = make_ops()

    async def go() -> bytes:
        e = await ops.lookup(pyfuse3.ROOT_INODE, pyfuse3.FileNameT(NAME), CTX)
        assert e.st_size == 2 and e.attr_timeout > 1e6 and e.entry_timeout > 1e6
        assert (await ops.getattr(e.st_ino, CTX)).st_size == 2
        fi = await ops.open(e.st_ino, 0, CTX)
        assert fi.keep_cache
        data = await ops.read(fi.fh, 0, 100)
        await ops.release(fi.fh)
        return bytes(data)

    assert run(go) == BLOB_A


def test_misses_are_cached_negative_entries() -> None:
    ops = make_ops()

    async def go() -> tuple[float, float]:
        root_miss = await ops.lookup(pyfuse3.ROOT_INODE, pyfuse3.FileNameT(b"nope"), CTX)
        d = await ops.lookup(pyfuse3.ROOT_INODE, pyfuse3.FileNameT(DIR), CTX)
        inner_miss = await ops.lookup(d.st_ino, pyfuse3.FileNameT(b"nope"), CTX)
        assert root_miss.st_ino == 0 and inner_miss.st_ino == 0
        return root_miss.entry_timeout, inner_miss.entry_timeout

    root_timeout, inner_timeout = run(go)
    # The top level may gain store paths while mounted; directories never change.
    assert root_timeout <= 1 < 1e6 < inner_timeout


def test_errno_mapping() -> None:
    ops = make_ops()
    assert fuse_errno(lambda: ops.opendir(pyfuse3.ROOT_INODE, CTX)) == errno.EPERM
    assert fuse_errno(lambda: ops.getattr(pyfuse3.InodeT(4242), CTX)) == errno.ENOENT
    assert fuse_errno(lambda: ops.read(pyfuse3.FileHandleT(77), 0, 1)) == errno.EBADF
    assert fuse_errno(lambda: ops.mkdir(ROOT_INO, b"x", 0o755, CTX)) == errno.EROFS


def test_unexpected_exception_is_eio_with_one_log_line(caplog: pytest.LogCaptureFixture) -> None:
    ops = make_ops(ExplodingVfs)
    with caplog.at_level(logging.INFO, logger="tvix_castore.fs.fuse"):
        assert fuse_errno(lambda: ops.readlink(pyfuse3.InodeT(2), CTX)) == errno.EIO
    records = [r for r in caplog.records if r.name == "tvix_castore.fs.fuse"]
    assert len(records) == 1 and "a bug in readlink" in records[0].getMessage()
    # the adapter keeps answering afterwards
    assert run(lambda: ops.getattr(pyfuse3.ROOT_INODE, CTX)).st_ino == 1


def test_readdir_root_listing_snapshot() -> None:
    ops = make_ops(list_root=True)

    async def go() -> int:
        fh = await ops.opendir(pyfuse3.ROOT_INODE, CTX)
        handle = ops._dir_handles[fh]
        assert handle == ROOT_INO
        await ops.releasedir(fh)
        return len(ops._dir_handles)

    assert run(go) == 0
