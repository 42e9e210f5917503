"""One shared LMDB environment per store directory, per process (py-lmdb's open-once rule).

The embedded store keeps all its tables in one environment so that the blob, directory and
path-info services of one ``lmdb:///dir`` URL share it; ``open_env`` hands out the cached
environment (keyed by realpath) and counts users; ``release_env`` closes it after the last one.

Tables (named databases):
  ``chunks``      chunk digest (32 B) -> chunk bytes
  ``blobs``       blob digest (32 B) -> chunk list (see blobservice/lmdb_store.py)
  ``directories`` directory digest (32 B) -> canonical Directory encoding
  ``pathinfos``   store path digest (20 B) -> 0, BLAKE3 of the PathInfo encoding, the encoding
  ``narcache``    root node encoding digest -> (nar_size, nar_sha256) of its NAR

Durability: every commit flushes its pages to disk before it writes the meta page that makes
them current (LMDB's MDB_NOMETASYNC), so a crash of the machine at any point leaves the store as
it was after some commit: never a meta page pointing at pages that did not reach the disk (LMDB
has no page checksums, and would read such a store as damaged). The meta page itself is flushed
by the next commit, or by a sync right after it: the path-info service's writes are
``durable``, so a PathInfo that was acknowledged stays. Each flush costs about a millisecond,
and a daemon takes blobs many at a time: every write (of the three services, and of the NAR
cache) goes through the store's ``GroupCommit``, which lets the writes of threads that find a
commit under way go out together in the next one (and their syncs as one).

Thread rules (py-lmdb "Threads"): open and finish every transaction inside one call on one
thread; never hold a transaction across a generator ``yield``. Never open before ``fork()``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import cast

import lmdb

from tvix_castore.errors import InvalidRequest, StorageError
from tvix_castore.lazy_logging import get_logger
from tvix_castore.url import ServiceUrl

log = get_logger("tvix_castore.lmdb")

TABLES = ("chunks", "blobs", "directories", "pathinfos", "narcache", "cachefiles")
# Tables a store made by an earlier version may lack: opened read-only, it is used without them.
_LATER_TABLES = ("cachefiles",)

# The map is reserved address space, not disk: the file grows only as data is written.
_MAP_SIZE = 1 << 40
_MAX_READERS = 1024

# A failing write on a filesystem with less room than this says how much room is left.
_LOW_SPACE = 64 * 1024 * 1024

# How often a process that keeps the store open clears the reader slots of dead processes.
_READER_CHECK_EVERY = 60.0
_reader_checked: dict[int, float] = {}  # id(environment) -> when last

_lock = threading.Lock()
_envs: dict[str, tuple[lmdb.Environment, dict[str, object], GroupCommit, int]] = {}


class _Write:
    """One thread's work waiting in a GroupCommit; done once its outcome is known."""

    __slots__ = ("done", "durable", "error", "size", "synced", "wake", "work")

    def __init__(self, work: Callable[[lmdb.Transaction], object], size: int, durable: bool) -> None:
        self.work = work
        self.size = size
        self.durable = durable
        self.synced = False  # a durable write's commit is synced (its group's sync succeeded)
        self.wake = threading.Event()  # set when done, or when it is this thread's turn to lead
        self.done = False
        self.error: Exception | None = None


class GroupCommit:
    """Writes of many threads to one environment, committed in groups: one disk flush each.

    ``write`` runs its work in a write transaction and returns once that is committed. A thread
    that finds no commit under way leads: it commits its own work at once. The others queue
    theirs; when a commit ends, the first queued thread leads the next, committing what is
    queued by then (up to ``GROUP_BYTES`` of declared size) in one transaction. A group whose
    commit fails is tried again one write at a time, so each thread gets the error of its own
    work only; work must therefore be safe to run twice (puts are: the same values again).

    A write asked to be ``durable`` returns only once its commit's meta page is on disk too
    (a commit flushes its pages, but its meta page only goes out with the next flush): the
    group that carries it is followed by one sync for all its durable writes (and should the
    leader be interrupted before that sync, each of them syncs on its own).

    A thread interrupted (KeyboardInterrupt) while it waits takes its work back out of the
    queue; one interrupted while it leads puts the writes it has not finished back at the
    front of the queue; either way it hands the lead on, so the others neither hang nor fail.
    """

    GROUP_BYTES = 64 * 1024 * 1024  # the dirty pages a transaction holds in memory until commit

    def __init__(self, path: str) -> None:
        self._path = path  # the store's directory, for errors
        self._lock = threading.Lock()
        self._queue: list[_Write] = []
        self._leader: _Write | None = None

    def write(
        self,
        env: lmdb.Environment,
        work: Callable[[lmdb.Transaction], object],
        size: int = 0,
        durable: bool = False,
    ) -> None:
        """Run work(txn) in a committed write transaction; raises what work or LMDB raised.

        size: about how many bytes work writes (for the group's size limit).
        durable: return only once the commit is synced to disk, meta page included.
        """
        mine = _Write(work, size, durable)
        with self._lock:
            self._queue.append(mine)
            if self._leader is None:
                self._leader = mine
                mine.wake.set()
        try:
            mine.wake.wait()
            if not mine.done:  # woken to lead
                self._commit_group(env, mine)
        finally:
            self._leave(mine)
        if mine.error is not None:
            raise mine.error
        if mine.durable and not mine.synced:
            # The leader was interrupted between its commit and the sync.
            _sync(self._path, env)

    def _commit_group(self, env: lmdb.Environment, mine: _Write) -> None:
        group: list[_Write] = []
        try:
            with self._lock:
                taken = 0
                size = 0
                for write in self._queue:
                    if taken and size + write.size > self.GROUP_BYTES:
                        break
                    taken += 1
                    size += write.size
                group, self._queue = self._queue[:taken], self._queue[taken:]
            try:
                with begin_write(env) as txn:
                    for write in group:
                        write.work(txn)
                for write in group:
                    write.done = True
            except Exception as exc:
                if len(group) == 1:  # its own error: nothing to tell apart by trying again
                    group[0].error = exc
                    group[0].done = True
                    return
                # Each write of the group learns its own outcome.
                for write in group:
                    if not write.done:
                        try:
                            with begin_write(env) as txn:
                                write.work(txn)
                        except Exception as exc:  # handed to the thread it belongs to
                            write.error = exc
                        write.done = True
            # The others are woken (in finally) only after this: their durable writes wait for it.
            durable = [w for w in group if w.durable and w.error is None]
            if durable:
                try:
                    _sync(self._path, env)
                except StorageError as exc:  # committed, but not known to be on disk
                    for write in durable:
                        write.error = exc
                else:
                    for write in durable:
                        write.synced = True
        finally:
            with self._lock:
                # Interrupted: the writes of others not finished go back to the front.
                self._queue[:0] = [w for w in group if not w.done and w is not mine]
            for write in group:
                if write.done and write is not mine:
                    write.wake.set()

    def _leave(self, mine: _Write) -> None:
        """The write is over (done or interrupted): out of the queue; its lead, if held, passed on."""
        with self._lock:
            if mine in self._queue:
                self._queue.remove(mine)
            if self._leader is mine:
                self._leader = self._queue[0] if self._queue else None
                if self._leader is not None:
                    self._leader.wake.set()


class LmdbStore:
    """An open environment, handles of its named tables, and its group commits."""

    __slots__ = ("env", "path", "tables", "writes")

    def __init__(
        self, path: str, env: lmdb.Environment, tables: dict[str, object], writes: GroupCommit
    ) -> None:
        self.path = path
        self.env = env
        self.tables = tables
        self.writes = writes

    def table(self, name: str) -> object:
        """The handle of a named table (one of TABLES)."""
        return self.tables[name]

    def put(
        self, table: str, items: Sequence[tuple[bytes, bytes]], *, overwrite: bool, durable: bool = False
    ) -> None:
        """Put (key, value) items into a table in one group commit (see ``GroupCommit.write``).

        overwrite=False leaves a present key as it is (its value is the same: content-addressed).
        Raises what LMDB raised.
        """
        db = cast("lmdb._Database", self.tables[table])

        def work(txn: lmdb.Transaction) -> None:
            for key, value in items:
                txn.put(key, value, db=db, overwrite=overwrite)

        self.writes.write(self.env, work, sum(len(value) for _, value in items), durable)

    def sync_others(self) -> None:
        """Flush the other LMDB stores this process has open (fsync each).

        A PathInfo in this store may point at blobs and Directories kept in another one
        (``--blob-service-addr lmdb:///a --path-info-service-addr lmdb:///b``): their last
        commit's meta page must be on disk before the PathInfo is.
        """
        with _lock:
            others = [(path, env) for path, (env, _, _, _) in _envs.items() if path != self.path]
        for path, env in others:
            _sync(path, env)


class StoreUse:
    """One use of the shared store in a directory (``open_env``), given back once by ``close``.

    For the small users of one table each; ``_store`` is None once closed.
    """

    def __init__(self, path: str) -> None:
        self._store: LmdbStore | None = open_env(path)
        self._path = self._store.path
        self._env = self._store.env
        self._close_lock = threading.Lock()

    def close(self) -> None:
        """Release this use of the shared environment; idempotent."""
        with self._close_lock:
            if self._store is not None:
                release_env(self._store)
                self._store = None


def _sync(path: str, env: lmdb.Environment) -> None:
    try:
        env.sync(True)
    except lmdb.Error as exc:
        raise StorageError(f"cannot sync LMDB store at {path}: {explain(path, exc)}") from exc


def begin_write(env: lmdb.Environment) -> lmdb.Transaction:
    """A write transaction; before it, at most once a minute, stale reader slots are cleared.

    A process killed inside a read transaction leaves its slot taken and its snapshot pinned:
    the pages freed since are not reused and the file grows. ``open_env`` clears such slots, but
    a daemon, mount or cache server keeps the store open for days.
    """
    now = time.monotonic()
    if now - _reader_checked.get(id(env), -_READER_CHECK_EVERY) >= _READER_CHECK_EVERY:
        _reader_checked[id(env)] = now
        with contextlib.suppress(lmdb.Error):
            env.reader_check()
    return env.begin(write=True)


def explain(path: str, exc: lmdb.Error) -> str:
    """py-lmdb's message, plus the room left when the store's filesystem is nearly full.

    A write that runs out of space surfaces from LMDB as a bare "Input/output error".
    """
    text = str(exc)
    try:
        st = os.statvfs(path)
    except OSError:
        return text
    if st.f_flag & os.ST_RDONLY:
        return text + f" ({path} is on a read-only filesystem)"
    free = st.f_bavail * st.f_frsize
    if free < _LOW_SPACE:
        text += f" ({path}: only {free} bytes left on its filesystem)"
    return text


@contextmanager
def lmdb_errors(path: str, kind: str, what: str) -> Iterator[None]:
    """Translate py-lmdb's errors into StorageError naming the store and the operation."""
    try:
        yield
    except lmdb.Error as exc:
        raise StorageError(f"LMDB {kind} store: {what}: {explain(path, exc)}") from exc


def path_from_url(url: ServiceUrl) -> str:
    """Check an ``lmdb:///abs/dir`` URL (no host, no options) and return its directory."""
    url.require_no_host()
    url.require_no_query()
    return path_from_url_path(url.path)


def path_from_url_path(url_path: str) -> str:
    """Check the path of an ``lmdb:///abs/dir`` URL and return it."""
    if not url_path or not url_path.startswith("/") or url_path == "/":
        raise InvalidRequest(f"lmdb store needs an absolute directory path, got {url_path!r}")
    return url_path


def open_env(path: str) -> LmdbStore:
    """Open (or share) the environment at directory path, creating it if needed."""
    real = os.path.realpath(path)
    with _lock:
        cached = _envs.get(real)
        if cached is not None:
            env, tables, writes, users = cached
            _envs[real] = (env, tables, writes, users + 1)
            return LmdbStore(real, env, tables, writes)
        try:
            os.makedirs(real, exist_ok=True)
            _refuse_unusable_store_files(real)
            _reserve_lock_file(real)
            env, read_only = _open_lmdb(real)
            try:
                if not read_only:
                    # A process killed inside a read transaction leaves its reader slot taken
                    # and its snapshot pinned: freed pages are not reused (the file grows), and
                    # once every slot is taken no process can read (see also begin_write).
                    env.reader_check()
                    _reader_checked[id(env)] = time.monotonic()
                _refuse_truncated_data_file(real, env)
                tables = _open_tables(env, read_only)
            except BaseException:
                env.close()
                raise
        except (lmdb.Error, OSError) as exc:
            # py-lmdb starts its message with the directory, which ours names already (a name
            # that is not UTF-8 it decodes with replacement characters).
            shown = os.fsencode(real).decode("utf-8", "replace")
            text = str(exc).removeprefix(f"{real}: ").removeprefix(f"{shown}: ")
            raise StorageError(f"cannot open LMDB store at {real}: {text}{_map_limit(exc)}") from exc
        writes = GroupCommit(real)
        _envs[real] = (env, tables, writes, 1)
        return LmdbStore(real, env, tables, writes)


def _open_tables(env: lmdb.Environment, read_only: bool) -> dict[str, object]:
    """The handles of TABLES, created if missing.

    A read-only store may lack ``_LATER_TABLES``: those it lacks are left out.
    """
    tables: dict[str, object] = {}
    for name in TABLES:
        try:
            tables[name] = env.open_db(name.encode(), create=not read_only)
        except lmdb.NotFoundError:
            if not (read_only and name in _LATER_TABLES):
                raise
    return tables


def _map_limit(exc: BaseException) -> str:
    """Why the map could not be made, when an address-space limit (``ulimit -v``) is the cause."""
    import resource

    if getattr(exc, "errno", None) != errno.ENOMEM and "Cannot allocate memory" not in str(exc):
        return ""
    limit, _ = resource.getrlimit(resource.RLIMIT_AS)
    if limit == resource.RLIM_INFINITY or limit >= _MAP_SIZE:
        return ""
    return (
        f" (the store maps {_MAP_SIZE >> 30} GiB of address space, which takes no memory, but "
        f"this process may use only {limit >> 20} MiB of it: raise `ulimit -v`)"
    )


# LMDB's lock file: a 192-byte header holding the first reader slot, then 64 bytes for each
# further one (x86-64; elsewhere LMDB sizes the file as it needs, which is harmless).
_LOCK_FILE_SIZE = 192 + (_MAX_READERS - 1) * 64
_FALLOC_FL_KEEP_SIZE = 1  # linux/falloc.h


def _reserve_lock_file(directory: str) -> None:
    """Give lock.mdb its disk blocks before LMDB maps it, so a full filesystem is an error.

    LMDB makes the lock file by extending it (sparse) and then writes it through a shared map:
    on a full filesystem, the first store to a page without a block kills the process with
    SIGBUS (opening a new store there; or later, a reader taking a slot on a fresh page).
    ``fallocate`` gives every page its block without writing anything and without changing the
    file's size, so it is safe while other processes use the file, and an attempt that runs
    out of room leaves nothing LMDB would take for a lock file it made. This holds where
    blocks are rewritten in place (ext4, XFS, tmpfs); a copy-on-write filesystem (btrfs, ZFS)
    needs new blocks for every rewrite, which nothing reserves ahead. Where the file cannot be
    opened for writing (a read-only store) or the filesystem or C library cannot allocate
    ahead, this does nothing and LMDB goes on as ever.

    A lock file LMDB made before (a store opened by an older version) whose pages cannot all
    get blocks is used as it is, with a warning: its first page, with the first ~60 reader
    slots, has its block, and refusing the store would make a full disk unreadable.

    Raises:
        StorageError: there is no room for a new lock file.

    """
    path = os.path.join(directory, "lock.mdb")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
    except OSError:
        return  # LMDB will say what is wrong with it, or open the store read-only
    try:
        st = os.fstat(fd)
        size = max(st.st_size, _LOCK_FILE_SIZE)
        if not stat.S_ISREG(st.st_mode) or st.st_blocks * 512 >= size:
            return
        error = _fallocate(fd, size)
    finally:
        os.close(fd)
    if error not in (errno.ENOSPC, errno.EDQUOT):
        return
    room = "no space left on its filesystem" if error == errno.ENOSPC else "its disk quota is used up"
    if st.st_size and st.st_blocks:
        log.warning(
            "LMDB store at %s: %s for the rest of its lock file; a reader beyond the first few "
            "dozen at once may crash until there is room",
            directory,
            room,
        )
        return
    raise StorageError(f"cannot open LMDB store at {directory}: {room} for its lock file ({size} bytes)")


def _fallocate(fd: int, size: int) -> int:
    """Allocate blocks for bytes 0..size of fd, keeping its size; 0, or the errno.

    Linux's fallocate(2) itself, not ``os.posix_fallocate``: where the filesystem cannot
    allocate ahead, glibc's posix_fallocate writes a zero byte into each block that reads as
    zero, which could undo a concurrent write of the lock file by another process.
    """
    import ctypes

    try:
        call = ctypes.CDLL(None, use_errno=True).fallocate64
    except (AttributeError, OSError):  # not glibc on Linux
        return errno.EOPNOTSUPP
    call.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
    call.restype = ctypes.c_int
    if call(fd, _FALLOC_FL_KEEP_SIZE, 0, size) == 0:
        return 0
    return ctypes.get_errno()


def _open_lmdb(directory: str) -> tuple[lmdb.Environment, bool]:
    """Open the environment for writing or, on a read-only filesystem, for reading only.

    A store on a read-only filesystem (a read-only bind mount, a store on install media) can
    still be listed, rendered and mounted. LMDB keeps no reader table there, so nothing stops
    a writer that has the same files open through another path (the bind mount's source) from
    reusing the pages a reader is on: such a store is refused while another process has it open
    (``_refuse_store_in_use``). Returns the environment and whether it is read-only.
    """

    def open_env_at(readonly: bool) -> lmdb.Environment:
        return lmdb.open(
            os.fsencode(directory),  # bytes: a path need not be valid UTF-8
            map_size=_MAP_SIZE,
            max_dbs=len(TABLES) + 2,
            max_readers=_MAX_READERS,
            subdir=True,
            # Keep the kernel's read-ahead: chunks are read front to back, and without it a
            # chunk on disk comes in 4 KiB per page fault (a cold mount read ran at 45-75 MB/s
            # instead of ~800, `nar` of a cold stdlib tree took 1.1-1.4 s instead of 0.3).
            readahead=True,
            # Readers open short transactions from many threads (gRPC, FUSE workers).
            lock=True,
            # Each commit flushes its pages before its meta page (see the module docstring).
            sync=True,
            metasync=False,
            readonly=readonly,
        )

    try:
        return open_env_at(readonly=False), False
    except lmdb.Error as exc:
        if not _on_read_only_filesystem(directory):
            raise
        _refuse_store_in_use(directory)
        try:
            return open_env_at(readonly=True), True
        except lmdb.Error:
            raise exc from None


def _refuse_store_in_use(directory: str) -> None:
    """Refuse to read a store without locks while another process has it open.

    Every process with an LMDB environment open holds a lock on the first byte of its lock.mdb
    (a shared one, or an exclusive one while it is alone): visible from here even through a
    read-only mount of the same file.
    """
    import fcntl
    import struct

    try:
        fd = os.open(os.path.join(directory, "lock.mdb"), os.O_RDONLY)
    except OSError:
        return  # no lock file: no process ever opened the store where it is writable
    try:
        probe = struct.pack("hhqqi", fcntl.F_WRLCK, os.SEEK_SET, 0, 1, 0)
        answer = fcntl.fcntl(fd, fcntl.F_GETLK, probe)
    except OSError:
        return  # the filesystem keeps no locks: nothing to tell
    finally:
        os.close(fd)
    kind, _, _, _, pid = struct.unpack("hhqqi", answer)
    if kind != fcntl.F_UNLCK:
        raise StorageError(
            f"cannot open LMDB store at {directory}: it is on a read-only filesystem and in use by "
            f"process {pid}, which may write it through another path; LMDB cannot keep a reader "
            "safe from that writer here (open the store where it is writable)"
        )


def _on_read_only_filesystem(directory: str) -> bool:
    try:
        return bool(os.statvfs(directory).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _refuse_unusable_store_files(directory: str) -> None:
    """Refuse a data.mdb or lock.mdb that is not a regular file, naming it.

    LMDB would block for ever opening a FIFO as data.mdb, and fail with a bare "Illegal seek"
    on such a lock file.
    """
    for name in ("data.mdb", "lock.mdb"):
        file = os.path.join(directory, name)
        try:
            mode = os.stat(file).st_mode
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(mode):
            raise StorageError(f"cannot open LMDB store at {directory}: {file} is not a regular file")


def _refuse_truncated_data_file(directory: str, env: lmdb.Environment) -> None:
    """Refuse a data.mdb shorter than the pages its meta page says are in use.

    LMDB reads the meta pages with read(2) but everything else through its memory map, so a
    truncated file would kill the process with SIGBUS at the first page past the end (a dead
    mount, a daemon gone) instead of failing with an error.
    """
    data_file = os.path.join(directory, "data.mdb")
    in_use = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
    size = os.stat(data_file).st_size
    if size < in_use:
        raise StorageError(
            f"cannot open LMDB store at {directory}: {data_file} is truncated "
            f"({size} bytes, but its pages in use need {in_use}); restore it from a copy"
        )


def release_env(store: LmdbStore) -> None:
    """Drop one user of the environment; the last one closes it."""
    with _lock:
        cached = _envs.get(store.path)
        if cached is None:
            return
        env, tables, writes, users = cached
        if users > 1:
            _envs[store.path] = (env, tables, writes, users - 1)
            return
        del _envs[store.path]
        _reader_checked.pop(id(env), None)  # the id may be another environment's next
        env.close()
