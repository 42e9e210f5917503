"""Mount lifecycle: check the mount point, mount, serve until told to stop, unmount.

``mount()`` runs in the foreground. It ends, after unmounting, on SIGINT, SIGTERM or SIGHUP, and also
when someone else unmounts the filesystem (``umount``/``fusermount3 -u``). A stale mount left
by a crashed process ("Transport endpoint is not connected") is lazily unmounted first.
Those signals are caught from before the mount exists to after it is gone: one that comes while
the mount is being set up stops it as soon as it serves. On the first, the mount is detached
from the tree at once (a lazy unmount), so that nothing stale is left even if the process then
takes long to end (a READ waiting on an unreachable daemon) or is killed meanwhile. A second
signal, once the mount is detached, ends the process at once: the kernel fails the requests
still waiting on it. (Before it is detached, further signals are only logged.)
Once the kernel's INIT is answered (processing the reply resets it), the kernel's readahead
for our mount is raised to 1 MiB when permitted: the kernel then sends 1 MiB READs instead of
128 KiB ones, the largest single speed-up there is for a Python filesystem (see perf-notes).
``max_read`` must not be passed (libfuse 3.14 aborts the mount). Every 1 MiB READ reply is a
fresh 1 MiB buffer, so glibc's malloc is told to keep such buffers on its heap (see
``tvix_castore.allocator``).
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pyfuse3
import trio

from tvix_castore.allocator import keep_large_buffers
from tvix_castore.errors import StoreError
from tvix_castore.fs.fuse import FuseOperations
from tvix_castore.fs.vfs import Vfs
from tvix_castore.lazy_logging import get_logger

__all__ = ["READAHEAD_KB", "MountError", "mount"]

log = get_logger(__name__)

READAHEAD_KB = 1024


class MountError(StoreError):
    """The filesystem could not be mounted; the message says why and what to do."""


def mount(vfs: Vfs, mountpoint: str, *, threads: int = 4, allow_other: bool = False) -> None:
    """Mount vfs read-only at mountpoint and serve requests until unmounted or signalled.

    Raises:
        MountError: the mount point is missing, not a directory, not empty, already a live
            mount, or the kernel refused the mount.

    """
    # Resolved as /proc/self/mountinfo will show it (a symlink on the way must not hide it).
    path = os.path.realpath(mountpoint)
    _prepare_mountpoint(path)
    # tvix mounts with MS_NOSUID|MS_NODEV|MS_NOATIME|MS_RDONLY; atimes would never change anyway.
    options = {
        "fsname=tvix-store",
        "subtype=tvix-store",
        "ro",
        "default_permissions",
        "nosuid",
        "nodev",
        "noatime",
    }
    if allow_other:
        options.add("allow_other")
    ops = FuseOperations(vfs, threads)
    keep_large_buffers()
    stop = _StopSignals()
    previous = {signum: signal.signal(signum, stop.note) for signum in _SIGNAL_WORDS}
    try:
        log.info("mounting (mount_path=%s)", path)
        try:
            pyfuse3.init(ops, path, options)
        except RuntimeError as exc:
            hint = " (is user_allow_other set in /etc/fuse.conf?)" if allow_other and os.geteuid() else ""
            raise MountError(f"cannot mount at {path}: {exc}{hint}") from exc
        unmount = True
        try:
            trio.run(_serve, ops, vfs, path, threads, stop)
            # After an external umount, or our own detaching one, the mount is gone already.
            unmount = not stop.detached and stop.signum is not None
        except BaseException:
            log.error("the FUSE main loop failed; unmounting")
            raise
        finally:
            pyfuse3.close(unmount=unmount)
            vfs.close()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    log.info("unmount occurred, terminating…")


class _StopSignals:
    """The stop signals of one mount: the first one and whether it detached the mount.

    ``note`` is the plain signal handler for the time trio's receiver is not listening (setting
    up, tearing down); ``_serve`` acts on a signal noted before it listened.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.detached = False

    def note(self, signum: int, frame: object = None) -> bool:
        """Note a signal; whether it is the first (the one that stops the mount)."""
        if self.signum is None:
            self.signum = signum
            return True
        log.info("%s received while stopping", _SIGNAL_WORDS[signum])
        return False


async def _serve(ops: FuseOperations, vfs: Vfs, path: str, threads: int, stop: _StopSignals) -> None:
    """Run pyfuse3's loop beside a signal watcher until a signal or an unmount ends it."""
    async with trio.open_nursery() as nursery:

        async def tune_readahead() -> None:
            # Not before INIT is answered: processing the reply caps the readahead again.
            await ops.initialized.wait()
            _raise_readahead(path)

        def stopping(signum: int) -> None:
            # tvix's words for Ctrl-C, so that log watchers see what they know.
            log.info("%s received, unmounting…", _SIGNAL_WORDS[signum])
            pyfuse3.terminate()
            # Out of the tree now: a READ stuck on an unreachable daemon can hold the loop up
            # for a while, and the process may be killed meanwhile; then nothing stale is left.
            stop.detached = _lazy_unmount(path)

        async def watch_signals(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            # SIGHUP too: a mount started from a terminal that closes must not die mounted.
            with trio.open_signal_receiver(*_SIGNAL_WORDS) as signals:
                task_status.started()
                if stop.signum is not None:  # came while the mount was being set up
                    stopping(stop.signum)
                # Listening to the end, so that a second signal cannot kill us mid-unmount.
                async for signum in signals:
                    if stop.note(signum):
                        stopping(signum)
                    elif stop.detached:
                        # Out of the tree already: what holds the process up is work waiting on
                        # its backend (a stalled daemon). Nothing is left to clean up that a
                        # kill would not leave clean; the kernel fails what still waits.
                        log.info("%s received again, ending now", _SIGNAL_WORDS[signum])
                        sys.stderr.flush()
                        os._exit(0)

        await nursery.start(watch_signals)
        # Started here, after the signals are ours: the child inherits no pending handler state.
        vfs.start_helpers()
        nursery.start_soon(tune_readahead)
        # Workers only wait on threads; a few more tasks than threads keep every thread busy.
        await pyfuse3.main(min_tasks=1, max_tasks=max(4, threads * 2))
        nursery.cancel_scope.cancel()


_SIGNAL_WORDS: dict[int, str] = {
    signal.SIGINT: "interrupt",
    signal.SIGTERM: "terminate signal",
    signal.SIGHUP: "hangup",
}


def _prepare_mountpoint(path: str) -> None:
    """Check the mount point; lazily unmount a stale FUSE mount left at it."""
    try:
        os.stat(path)
        # A dead FUSE mount can still answer stat from the kernel's cached root attributes;
        # statfs always asks the filesystem, and gets ENOTCONN from a dead one.
        os.statvfs(path)
    except FileNotFoundError:
        raise MountError(f"mount point {path} does not exist: create an empty directory first") from None
    except OSError as exc:
        if exc.errno != errno.ENOTCONN:
            if os.path.ismount(path):
                # A live filesystem that does not answer statfs (a FUSE one without it: ENOSYS).
                raise MountError(
                    f"mount point {path} is already mounted (statfs fails: {exc.strerror}); unmount it first"
                ) from exc
            raise MountError(f"mount point {path}: {exc.strerror}") from exc
        dead = _enclosing_mount(path)
        if dead != path:
            # Only the dead mount itself can be detached, and it is not ours to detach.
            raise MountError(
                f"mount point {path} lies inside {dead}, a stale mount (transport endpoint is not "
                f"connected); run 'fusermount3 -uz {dead}' (or 'umount -l {dead}' as root) first"
            ) from exc
        log.warning("%s is a stale mount (transport endpoint is not connected); unmounting it lazily", path)
        _lazy_unmount(path)
        try:
            os.statvfs(path)
        except OSError as again:
            raise MountError(
                f"mount point {path} is a stale mount that could not be removed: {again.strerror}; "
                f"run 'fusermount3 -uz {path}' (or 'umount -l {path}' as root)"
            ) from again
    if not os.path.isdir(path):
        raise MountError(f"mount point {path} is not a directory")
    try:
        entries = os.listdir(path)
    except OSError as exc:
        # A live mount of ours without --list-root refuses to be listed (EPERM).
        if os.path.ismount(path):
            raise MountError(
                f"mount point {path} is already mounted (listing it fails: {exc.strerror}); unmount it first"
            ) from exc
        raise MountError(f"mount point {path} cannot be listed: {exc.strerror}") from exc
    if entries:
        mounted = " (another filesystem is mounted there)" if os.path.ismount(path) else ""
        raise MountError(f"mount point {path} is not empty{mounted}")


def _lazy_unmount(path: str) -> bool:
    """Detach the mount at path from the tree (it lives on while in use); whether that worked."""
    for cmd in (["fusermount3", "-u", "-z", path], ["umount", "-l", path]):
        if shutil.which(cmd[0]) is None:
            continue
        res = subprocess.run(cmd, capture_output=True, check=False)
        if res.returncode == 0:
            return True
        log.debug("%s failed: %s", " ".join(cmd), res.stderr.decode(errors="replace").strip())
    return False


def _raise_readahead(path: str) -> None:
    """Set read_ahead_kb of our mount's backing device to READAHEAD_KB, when permitted."""
    device = _mount_device(path)
    if device is None:
        log.info("readahead left at the kernel default: %s not found in /proc/self/mountinfo", path)
        return
    knob = Path("/sys/class/bdi") / device / "read_ahead_kb"
    try:
        knob.write_text(f"{READAHEAD_KB}\n")
    except OSError as exc:
        log.info("readahead left at the kernel default (cannot write %s: %s)", knob, exc.strerror)
    else:
        log.info("readahead set to %s KiB on %s", knob.read_text().strip(), knob)


def _mounts() -> list[tuple[str, str]]:
    """Every mount as ``(mount point, major:minor)``, from /proc/self/mountinfo; [] if unreadable."""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    # Field 5 (index 4) is the mount point with spaces etc. escaped as octal; field 3 the device.
    return [(_unescape(f[4]), f[2]) for f in (line.split() for line in lines) if len(f) > 4]


def _mount_device(path: str) -> str | None:
    """The ``major:minor`` of the last mount at path."""
    found = None
    for point, device in _mounts():
        if point == path:
            found = device
    return found


def _enclosing_mount(path: str) -> str:
    """The mount point of the mount that path is on: itself when mounted, else an ancestor."""
    inside = [point for point, _ in _mounts() if path == point or path.startswith(point.rstrip("/") + "/")]
    return max(inside, key=len, default="/")


def _unescape(field: str) -> str:
    return field.encode().decode("unicode_escape").encode("latin-1").decode("utf-8", "surrogateescape")
