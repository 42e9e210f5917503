"""The ceiling for a Python FUSE filesystem on this machine: one file served from memory.

Run as ``python memfs.py MOUNTPOINT SIZE``: mounts (same options and the same 1 MiB readahead
as ``tvix-store mount``) a root directory holding one read-only file ``data`` of SIZE bytes,
answers every READ with a slice of one preallocated buffer (no copy, no work), and unmounts on
SIGTERM/SIGINT. The mount section compares our cold sequential read against it.
"""

from __future__ import annotations

import errno
import os
import signal
import stat
import sys


def main() -> int:
    import pyfuse3
    import trio

    from tvix_castore.fs.mount import _raise_readahead

    mountpoint, size = sys.argv[1], int(sys.argv[2])
    buf = memoryview(bytes(range(256)) * (8 * 1024 * 1024 // 256))  # 8 MiB, served cyclically
    name = b"data"

    def attr(ino: int) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = pyfuse3.InodeT(ino)
        e.st_mode = pyfuse3.ModeT(stat.S_IFDIR | 0o555 if ino == 1 else stat.S_IFREG | 0o444)
        e.st_size = 0 if ino == 1 else size
        e.st_nlink = 1
        e.entry_timeout = e.attr_timeout = 1e9
        return e

    initialized = trio.Event()

    class MemFs(pyfuse3.Operations):
        def init(self) -> None:
            initialized.set()

        async def getattr(self, inode: int, ctx: object) -> pyfuse3.EntryAttributes:  # type: ignore[override]
            return attr(inode)

        async def lookup(self, parent_inode: int, n: bytes, ctx: object) -> pyfuse3.EntryAttributes:  # type: ignore[override]
            if parent_inode == 1 and n == name:
                return attr(2)
            raise pyfuse3.FUSEError(errno.ENOENT)

        async def open(self, inode: int, flags: int, ctx: object) -> pyfuse3.FileInfo:  # type: ignore[override]
            return pyfuse3.FileInfo(fh=pyfuse3.FileHandleT(inode), keep_cache=True)

        async def read(self, fh: int, off: int, n: int) -> bytes | memoryview:  # type: ignore[override]
            n = max(0, min(n, size - off))
            start = off % len(buf)
            if start + n <= len(buf):
                return buf[start : start + n]
            return bytes(buf[start:]) + bytes(buf[: n - (len(buf) - start)])

        async def release(self, fh: int) -> None:  # type: ignore[override]
            return None

        async def opendir(self, inode: int, ctx: object) -> pyfuse3.FileHandleT:  # type: ignore[override]
            return pyfuse3.FileHandleT(inode)

        async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:  # type: ignore[override]
            if start_id == 0:
                pyfuse3.readdir_reply(token, pyfuse3.FileNameT(name), attr(2), 1)

        async def releasedir(self, fh: int) -> None:  # type: ignore[override]
            return None

    options = {"fsname=memfs", "ro", "default_permissions", "nosuid", "nodev"}
    pyfuse3.init(MemFs(), mountpoint, options)

    async def serve() -> None:
        async with trio.open_nursery() as nursery:

            async def tune_readahead() -> None:
                # As the mount does: after INIT is answered, whose processing caps it again.
                await initialized.wait()
                _raise_readahead(os.path.abspath(mountpoint))

            async def stop() -> None:
                with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for _ in signals:
                        pyfuse3.terminate()
                        return

            nursery.start_soon(stop)
            nursery.start_soon(tune_readahead)
            await pyfuse3.main(max_tasks=8)
            nursery.cancel_scope.cancel()

    try:
        trio.run(serve)
    finally:
        pyfuse3.close(unmount=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
