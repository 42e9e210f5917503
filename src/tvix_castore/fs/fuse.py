"""pyfuse3 adapter: turns FUSE requests into ``vfs.Vfs`` calls. A protocol adapter only.

What the filesystem looks like is decided in ``vfs.py``. Here: each handler runs the Vfs call
in a worker thread (``trio.to_thread.run_sync`` under one CapacityLimiter sized by
``--threads``) unless the answer is already in memory, converts the result into pyfuse3 types,
and maps errors. Only ``FUSEError`` may leave a handler (pyfuse3 lets anything else end the
main loop): ``VfsError`` keeps its errno, anything else is logged in one line and becomes EIO.

The store is immutable, so the kernel may cache everything for as long as it likes: entry and
attribute timeouts are a year, negative lookups inside directories are cached as long, open
files keep their page cache. Only the top level can change (an import may run beside the
mount), so a miss there is cached for a second. Each directory's readdir reply is built once
from pre-made ``EntryAttributes``.
"""

from __future__ import annotations

import errno
import itertools
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Concatenate, ParamSpec, TypeVar

import pyfuse3
import trio

from tvix_castore.fs.inodes import MTIME, ROOT_INO, Attr
from tvix_castore.fs.vfs import Listing, Vfs, VfsError
from tvix_castore.lazy_logging import get_logger
from tvix_castore.path import MAX_NAME_LEN

__all__ = ["FuseOperations"]

log = get_logger(__name__)

_FOREVER = 365 * 24 * 3600.0
_ROOT_NEGATIVE_TIMEOUT = 1.0
_MTIME_NS = MTIME * 1_000_000_000

P = ParamSpec("P")
R = TypeVar("R")


def _handler(
    fn: Callable[Concatenate[FuseOperations, P], Coroutine[Any, Any, R]],
) -> Callable[Concatenate[FuseOperations, P], Coroutine[Any, Any, R]]:
    """Map every exception a handler raises onto a FUSEError."""

    async def wrapper(self: FuseOperations, /, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(self, *args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except VfsError as exc:
            raise pyfuse3.FUSEError(exc.errno) from None
        except Exception as exc:
            log.error("%s%r failed unexpectedly: %s: %s", fn.__name__, args, type(exc).__name__, exc)
            log.debug("traceback of the failed %s", fn.__name__, exc_info=True)
            raise pyfuse3.FUSEError(errno.EIO) from None

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper


def _entry(attr: Attr) -> pyfuse3.EntryAttributes:
    e = pyfuse3.EntryAttributes()
    e.st_ino = pyfuse3.InodeT(attr.ino)
    e.st_mode = pyfuse3.ModeT(attr.mode)
    e.st_size = attr.size
    e.st_nlink = 1
    e.st_uid = 0
    e.st_gid = 0
    e.st_blksize = 4096
    e.st_blocks = 0 if attr.is_dir else (attr.size + 511) // 512
    e.st_atime_ns = e.st_mtime_ns = e.st_ctime_ns = _MTIME_NS
    e.entry_timeout = _FOREVER
    e.attr_timeout = _FOREVER
    return e


def _negative(timeout: float) -> pyfuse3.EntryAttributes:
    e = pyfuse3.EntryAttributes()
    e.st_ino = pyfuse3.InodeT(0)
    e.entry_timeout = timeout
    return e


class _DirEntries:
    """A listing ready for readdir replies and lookups: names with pre-built attributes."""

    __slots__ = ("by_name", "items")

    def __init__(self, listing: Listing) -> None:
        self.items = [(e.name, _entry(e.attr)) for e in listing.entries]
        self.by_name = dict(self.items)


class FuseOperations(pyfuse3.Operations):
    """The request handlers of a read-only castore mount."""

    # No POSIX ACL support: with it the kernel would cache ACL answers, but every readdirplus
    # drops that cache for the listed inodes, so ``ls -l`` would still cost a round trip per
    # file. Instead ``vfs.getxattr`` answers ACL names with ENOTSUP, and ls stops asking.
    enable_acl = False

    def __init__(self, vfs: Vfs, threads: int) -> None:
        super().__init__()
        self._vfs = vfs
        self._limiter = trio.CapacityLimiter(max(1, threads))
        self._dirs: dict[int, _DirEntries] = {}
        self._attrs: dict[int, pyfuse3.EntryAttributes] = {}
        self._root_entries: dict[bytes, pyfuse3.EntryAttributes] = {}
        # Open directory handles: the directory's inode, or a root listing snapshot.
        self._dir_handles: dict[int, int | _DirEntries] = {}
        self._dir_fh = itertools.count(1)
        # Set once the kernel's INIT is answered; see ``init``.
        self.initialized = trio.Event()

    def init(self) -> None:
        """Note that INIT arrived; the reply goes out right after this returns.

        The kernel resets our readahead when it processes the INIT reply (to the smaller of
        its value and libfuse's), so whoever tunes it waits for ``initialized``: waiters run
        only after this handler has returned and the reply has been written.
        """
        self.initialized.set()

    async def _run(self, fn: Callable[..., R], *args: object) -> R:
        return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)

    def _remember(self, entry: pyfuse3.EntryAttributes) -> pyfuse3.EntryAttributes:
        self._attrs.setdefault(entry.st_ino, entry)
        return entry

    async def _dir_entries(self, ino: int) -> _DirEntries:
        entries = self._dirs.get(ino)
        if entries is None:
            listing = self._vfs.cached_children(ino)
            if listing is None:
                listing = await self._run(self._vfs.children, ino)
            entries = self._dirs.setdefault(ino, _DirEntries(listing))
            for _, e in entries.items:
                self._remember(e)
        return entries

    @_handler
    async def lookup(
        self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        """Find name in a directory; misses are answered as cacheable negative entries."""
        if len(name) > MAX_NAME_LEN:
            # No entry can have such a name; say so as native filesystems do.
            raise pyfuse3.FUSEError(errno.ENAMETOOLONG)
        if parent_inode == ROOT_INO:
            found = self._root_entries.get(name)
            if found is None:
                entry = await self._run(self._vfs.lookup_root, bytes(name))
                if entry is None:
                    return _negative(_ROOT_NEGATIVE_TIMEOUT)
                found = self._root_entries.setdefault(name, self._remember(_entry(entry.attr)))
            return found
        found = (await self._dir_entries(parent_inode)).by_name.get(name)
        return _negative(_FOREVER) if found is None else found

    @_handler
    async def getattr(self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        """Attributes from memory (every inode the kernel knows was handed out before)."""
        found = self._attrs.get(inode)
        if found is None:
            found = _entry(self._vfs.getattr(inode))
            if inode != ROOT_INO:
                self._remember(found)
        return found

    @_handler
    async def readlink(self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext) -> pyfuse3.FileNameT:
        """A symlink's target."""
        return pyfuse3.FileNameT(self._vfs.readlink(inode))

    @_handler
    async def opendir(self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext) -> pyfuse3.FileHandleT:
        """Open a directory; the root only with root listing (else EPERM)."""
        self._vfs.opendir(inode)
        fh = next(self._dir_fh)
        self._dir_handles[fh] = inode
        return pyfuse3.FileHandleT(fh)

    @_handler
    async def readdir(self, fh: pyfuse3.FileHandleT, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        """Reply entries from start_id on; each entry's next_id is its index + 1."""
        handle = self._dir_handles.get(fh)
        if handle is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        if isinstance(handle, int):
            if handle == ROOT_INO:
                # One snapshot per opendir, so the offsets of one listing stay consistent.
                listing = await self._run(self._vfs.list_root)
                handle = _DirEntries(listing)
                for name, e in handle.items:
                    self._root_entries.setdefault(name, self._remember(e))
                self._dir_handles[fh] = handle
            else:
                handle = await self._dir_entries(handle)
        items = handle.items
        for i in range(start_id, len(items)):
            name, entry = items[i]
            if not pyfuse3.readdir_reply(token, pyfuse3.FileNameT(name), entry, i + 1):
                break

    @_handler
    async def releasedir(self, fh: pyfuse3.FileHandleT) -> None:
        """Forget a directory handle."""
        self._dir_handles.pop(fh, None)

    @_handler
    async def open(self, inode: pyfuse3.InodeT, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        """Open a file for reading; the kernel keeps its page cache (contents never change)."""
        fh = await self._run(self._vfs.open, inode, flags)
        return pyfuse3.FileInfo(fh=pyfuse3.FileHandleT(fh), keep_cache=True)

    @_handler
    async def read(self, fh: pyfuse3.FileHandleT, off: int, size: int) -> bytes:
        """File bytes; answered inline when the chunks are already in memory."""
        data = self._vfs.read_nowait(fh, off, size)
        if data is None:
            data = await self._run(self._vfs.read, fh, off, size)
        # pyfuse3 accepts any contiguous buffer; a memoryview saves copying a whole chunk.
        return data  # type: ignore[return-value]

    @_handler
    async def release(self, fh: pyfuse3.FileHandleT) -> None:
        """Close a file handle."""
        self._vfs.release(fh)

    @_handler
    async def getxattr(
        self, inode: pyfuse3.InodeT, name: pyfuse3.XAttrNameT, ctx: pyfuse3.RequestContext
    ) -> bytes:
        """The digest xattr (ENOSYS when xattrs are off, which the kernel remembers)."""
        return self._vfs.getxattr(inode, bytes(name))

    @_handler
    async def listxattr(
        self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext
    ) -> Sequence[pyfuse3.XAttrNameT]:
        """The xattr names of an inode."""
        return [pyfuse3.XAttrNameT(n) for n in self._vfs.listxattr(inode)]

    @_handler
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        """A read-only filesystem without free space."""
        s = self._vfs.statfs()
        out = pyfuse3.StatvfsData()
        out.f_bsize = out.f_frsize = s.block_size
        out.f_blocks = out.f_bfree = out.f_bavail = 0
        out.f_files = s.files
        out.f_ffree = out.f_favail = 0
        out.f_namemax = s.name_max
        return out

    async def forget(self, inode_list: Sequence[tuple[pyfuse3.InodeT, int]]) -> None:
        """Inodes are never freed: their numbers stand for content, which never changes."""

    # Writes: the mount is read-only, so the kernel refuses them first; these are a backstop.

    async def setattr(self, *args: object, **kwargs: object) -> pyfuse3.EntryAttributes:
        """Refused: read-only."""
        raise pyfuse3.FUSEError(errno.EROFS)

    async def write(self, fh: pyfuse3.FileHandleT, off: int, buf: bytes) -> int:
        """Refused: read-only."""
        raise pyfuse3.FUSEError(errno.EROFS)

    async def create(
        self, *args: object, **kwargs: object
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        """Refused: read-only."""
        raise pyfuse3.FUSEError(errno.EROFS)

    async def mknod(self, *args: object, **kwargs: object) -> pyfuse3.EntryAttributes:
        """Refused: read-only."""
        raise pyfuse3.FUSEError(errno.EROFS)

    async def mkdir(self, *args: object, **kwargs: object) -> pyfuse3.EntryAttributes:
        """Refused: read-only."""
        raise pyfuse3.FUSEError(errno.EROFS)

    async def symlink(self, *args: object, **kwargs: object) -> pyfuse3.EntryAttributes:
        """Refused: read-only."""
        raise pyfuse3.FUSEError(errno.EROFS)

    async def link(self, *args: object, **kwargs: object) -> pyfuse3.EntryAttributes:
        """Refused: read-only."""
        raise pyfuse3.FUSEError(errno.EROFS)

    async def unlink(self, *args: object, **kwargs: object) -> None:
        """Refused: read-only."""
        raise pyfuse3.FUSEError(errno.EROFS)

    async def rmdir(self, *args: object, **kwargs: object) -> None:
        """Refused: read-only."""
        raise pyfuse3.FUSEError(errno.EROFS)

    async def rename(self, *args: object, **kwargs: object) -> None:
        """Refused: read-only."""
        raise pyfuse3.FUSEError(errno.EROFS)

    async def setxattr(self, *args: object, **kwargs: object) -> None:
        """Refused: read-only."""
        raise pyfuse3.FUSEError(errno.EROFS)

    async def removexattr(self, *args: object, **kwargs: object) -> None:
        """Refused: read-only."""
        raise pyfuse3.FUSEError(errno.EROFS)
