"""LMDB durability: each commit flushes its pages first, and concurrent writes share commits."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import lmdb
import pytest

from tvix_castore._lmdb_env import GroupCommit, LmdbStore, open_env, release_env
from tvix_castore.blobservice.lmdb_store import LmdbBlobService
from tvix_castore.digests import B3Digest, blake3_digest


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LmdbStore]:
    s = open_env(str(tmp_path / "store"))
    yield s
    release_env(s)


def _last_txn(env: lmdb.Environment) -> int:
    txn_id: int = env.info()["last_txnid"]
    return txn_id


def _queued(group: GroupCommit) -> int:
    with group._lock:
        return len(group._queue)


def test_every_commit_flushes_its_pages_before_its_meta_page(store: LmdbStore) -> None:
    """MDB_NOMETASYNC: a machine crash can lose the last commit but never damage the store."""
    flags = store.env.flags()
    assert flags["sync"] is True
    assert flags["metasync"] is False


def _write_recording(
    store: LmdbStore,
    work: Callable[[lmdb.Transaction], object],
    size: int,
    outcomes: dict[object, BaseException | None],
    key: object,
) -> None:
    """store.writes.write(work), its outcome (None or what it raised) put in outcomes[key]."""
    try:
        store.writes.write(store.env, work, size)
        outcomes[key] = None
    except BaseException as exc:  # recorded for the assertions
        outcomes[key] = exc


def _hold_a_commit(store: LmdbStore, key: bytes) -> tuple[threading.Thread, threading.Event]:
    """A thread whose write (key -> 1) holds its commit open until the returned event is set;
    returns once the write is inside its transaction."""
    table = store.table("blobs")
    inside = threading.Event()
    release = threading.Event()

    def slow(txn: lmdb.Transaction) -> None:
        inside.set()
        release.wait(10)
        txn.put(key, b"1", db=table)

    leader = threading.Thread(target=store.writes.write, args=(store.env, slow))
    leader.start()
    assert inside.wait(10)
    return leader, release


def _queued_behind_a_held_commit(
    store: LmdbStore, writes: list[tuple[Callable[[lmdb.Transaction], object], int]]
) -> tuple[int, list[BaseException | None]]:
    """Run writes (work, size) from threads of their own, queued in order behind a commit held
    open until they all are; returns how many commits followed the held one, and each write's
    outcome (None, or what it raised)."""
    leader, release_first = _hold_a_commit(store, b"first")
    before = _last_txn(store.env)
    outcomes: dict[object, BaseException | None] = {}
    threads = []
    for i, (work, size) in enumerate(writes):
        t = threading.Thread(target=_write_recording, args=(store, work, size, outcomes, i))
        t.start()
        threads.append(t)
        deadline = time.monotonic() + 10
        while _queued(store.writes) < i + 1 and time.monotonic() < deadline:
            time.sleep(0.001)
        assert _queued(store.writes) == i + 1
    release_first.set()
    for t in (leader, *threads):
        t.join(10)
    return _last_txn(store.env) - before - 1, [outcomes[i] for i in range(len(writes))]


def test_writes_queued_during_a_commit_go_out_in_one(store: LmdbStore) -> None:
    table = store.table("blobs")
    writes = [(lambda txn, i=i: txn.put(b"k%d" % i, b"v", db=table), 0) for i in range(8)]
    assert _queued_behind_a_held_commit(store, writes) == (1, [None] * 8)
    with store.env.begin(db=table) as txn:
        assert txn.get(b"first") == b"1"
        assert all(txn.get(b"k%d" % i) == b"v" for i in range(8))


def test_a_group_holds_at_most_group_bytes(store: LmdbStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Queued writes beyond the size limit wait for the next group (a transaction keeps its
    dirty pages in memory until it commits)."""
    monkeypatch.setattr(store.writes, "GROUP_BYTES", 10)
    table = store.table("blobs")
    writes = [(lambda txn, i=i: txn.put(b"k%d" % i, b"v" * 4, db=table), 4) for i in range(6)]
    # Groups of two 4-byte writes: a third would pass 10 bytes.
    assert _queued_behind_a_held_commit(store, writes) == (3, [None] * 6)
    with store.env.begin(db=table) as txn:
        assert all(txn.get(b"k%d" % i) == b"vvvv" for i in range(6))


def test_a_failing_write_fails_alone(store: LmdbStore) -> None:
    """A group whose commit fails is retried write by write: each thread gets its own outcome."""
    table = store.table("blobs")

    def bad(txn: lmdb.Transaction) -> None:
        txn.put(b"bad", b"x", db=table)
        raise ValueError("this write is refused")

    writes = [
        (lambda txn: txn.put(b"good1", b"1", db=table), 0),
        (bad, 0),
        (lambda txn: txn.put(b"good2", b"2", db=table), 0),
    ]
    _, outcomes = _queued_behind_a_held_commit(store, writes)
    assert outcomes[0] is None and outcomes[2] is None
    assert isinstance(outcomes[1], ValueError)
    with store.env.begin(db=table) as txn:
        assert txn.get(b"good1") == b"1" and txn.get(b"good2") == b"2"
        assert txn.get(b"bad") is None


def _record_syncs(monkeypatch: pytest.MonkeyPatch, fail: bool = False) -> list[str]:
    """The paths _lmdb_env syncs from now on (each sync fails with StorageError if fail)."""
    import tvix_castore._lmdb_env as lmdb_env
    from tvix_castore.errors import StorageError

    synced: list[str] = []
    real_sync = lmdb_env._sync

    def recording_sync(path: str, env: lmdb.Environment) -> None:
        synced.append(path)
        if fail:
            raise StorageError(f"cannot sync LMDB store at {path}: disk gone")
        real_sync(path, env)

    monkeypatch.setattr(lmdb_env, "_sync", recording_sync)
    return synced


def _durable_write_recording(
    store: LmdbStore,
    work: Callable[[lmdb.Transaction], object],
    outcomes: dict[object, BaseException | None],
    key: object,
) -> None:
    try:
        store.writes.write(store.env, work, 0, durable=True)
        outcomes[key] = None
    except BaseException as exc:  # recorded for the assertions
        outcomes[key] = exc


def _group_behind_a_held_commit(store: LmdbStore, durable: list[bool]) -> list[BaseException | None]:
    """Writes k<i> -> v (durable or not) queued behind a held commit, so they go out in one
    group; their outcomes."""
    table = store.table("blobs")
    leader, release_first = _hold_a_commit(store, b"first")
    outcomes: dict[object, BaseException | None] = {}
    threads = []
    for i, wants_sync in enumerate(durable):
        work = lambda txn, i=i: txn.put(b"k%d" % i, b"v", db=table)  # noqa: E731
        if wants_sync:
            t = threading.Thread(target=_durable_write_recording, args=(store, work, outcomes, i))
        else:
            t = threading.Thread(target=_write_recording, args=(store, work, 0, outcomes, i))
        t.start()
        threads.append(t)
        deadline = time.monotonic() + 10
        while _queued(store.writes) < i + 1 and time.monotonic() < deadline:
            time.sleep(0.001)
    before = _last_txn(store.env)
    release_first.set()
    for t in (leader, *threads):
        t.join(10)
    assert _last_txn(store.env) == before + 2  # the held commit, then the group
    return [outcomes[i] for i in range(len(durable))]


def test_durable_writes_of_a_group_share_one_sync(store: LmdbStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """A durable write (a PathInfo) is followed by a sync of the meta page its commit left in
    the page cache; the durable writes of one group share one, and a group without any
    (blobs, Directories) has none."""
    synced = _record_syncs(monkeypatch)
    assert _group_behind_a_held_commit(store, [False, True, True, False]) == [None] * 4
    assert synced == [store.path]
    synced.clear()
    assert _group_behind_a_held_commit(store, [False, False]) == [None] * 2
    assert synced == []


def test_a_failed_sync_fails_the_durable_writes_only(
    store: LmdbStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the sync after a group fails, its durable writes report it (they are not known to be
    on disk); the others were only promised a commit, and have it."""
    from tvix_castore.errors import StorageError

    _record_syncs(monkeypatch, fail=True)
    outcomes = _group_behind_a_held_commit(store, [True, False, True])
    assert isinstance(outcomes[0], StorageError) and "disk gone" in str(outcomes[0])
    assert outcomes[1] is None
    assert isinstance(outcomes[2], StorageError)


def test_a_leader_interrupted_before_the_sync_leaves_the_others_to_sync(
    store: LmdbStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C reaching the leader of a group between its commit and the sync: the others'
    durable writes must not return as if synced; each syncs on its own."""
    import tvix_castore._lmdb_env as lmdb_env

    table = store.table("blobs")
    real_sync = lmdb_env._sync
    syncs: list[str] = []

    def interrupting_sync(path: str, env: lmdb.Environment) -> None:
        if threading.current_thread() is threading.main_thread():
            syncs.append("interrupted")
            raise KeyboardInterrupt
        syncs.append("synced")
        real_sync(path, env)

    monkeypatch.setattr(lmdb_env, "_sync", interrupting_sync)
    leader, release_first = _hold_a_commit(store, b"first")
    outcomes: dict[object, BaseException | None] = {}

    def queue_another_then_release() -> None:
        # Once the main thread's write is queued, another durable one goes behind it.
        deadline = time.monotonic() + 10
        while _queued(store.writes) < 1 and time.monotonic() < deadline:
            time.sleep(0.001)
        work = lambda txn: txn.put(b"other", b"v", db=table)  # noqa: E731
        other = threading.Thread(target=_durable_write_recording, args=(store, work, outcomes, "other"))
        other.start()
        while _queued(store.writes) < 2 and time.monotonic() < deadline:
            time.sleep(0.001)
        release_first.set()
        other.join(10)

    helper = threading.Thread(target=queue_another_then_release)
    helper.start()
    with pytest.raises(KeyboardInterrupt):
        # The main thread leads the group of both writes, and is interrupted in the sync.
        store.writes.write(store.env, lambda txn: txn.put(b"mine", b"v", db=table), 0, durable=True)
    helper.join(10)
    leader.join(10)
    assert outcomes == {"other": None}
    assert syncs == ["interrupted", "synced"]
    with store.env.begin(db=table) as txn:
        assert txn.get(b"other") == b"v"


def test_concurrent_blob_puts_share_commits(tmp_path: Path) -> None:
    """64 threads putting small blobs at once (a daemon's uploads) need far fewer commits."""
    service = LmdbBlobService(str(tmp_path / "store"))
    try:
        store = service._store
        assert store is not None
        before = _last_txn(store.env)
        blobs = [b"blob %d " % i * 100 for i in range(256)]
        start = threading.Barrier(64)

        def put_some(mine: list[bytes]) -> None:
            start.wait(10)
            for data in mine:
                writer = service.open_write()
                writer.write(data)
                writer.close()

        threads = [threading.Thread(target=put_some, args=(blobs[i::64],)) for i in range(64)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        for data in blobs:
            assert service.read_chunk(B3Digest(blake3_digest(data))) == data
        assert _last_txn(store.env) - before < len(blobs)
    finally:
        service.close()


def _interrupt_main_when(condition: Callable[[], bool]) -> threading.Thread:
    """A thread that sends this process SIGINT (KeyboardInterrupt in the main thread) once
    condition holds."""

    def run() -> None:
        deadline = time.monotonic() + 10
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.001)
        os.kill(os.getpid(), signal.SIGINT)

    t = threading.Thread(target=run)
    t.start()
    return t


def _in_queue(group: GroupCommit, count: int) -> Callable[[], bool]:
    return lambda: _queued(group) >= count


def test_a_thread_interrupted_while_queued_leaves_the_queue(store: LmdbStore) -> None:
    """Ctrl-C in a waiting main thread must not leave its write queued (every later write
    would wait for ever behind it)."""
    assert threading.current_thread() is threading.main_thread()
    table = store.table("blobs")
    leader, release = _hold_a_commit(store, b"slow")
    interrupter = _interrupt_main_when(_in_queue(store.writes, 1))
    with pytest.raises(KeyboardInterrupt):
        store.writes.write(store.env, lambda txn: txn.put(b"main", b"1", db=table))
    interrupter.join()
    release.set()
    leader.join(10)
    later = threading.Thread(
        target=store.writes.write, args=(store.env, lambda txn: txn.put(b"later", b"1", db=table))
    )
    later.start()
    later.join(10)
    assert not later.is_alive()
    with store.env.begin(db=table) as txn:
        assert txn.get(b"slow") == b"1" and txn.get(b"later") == b"1"


def test_a_leader_interrupted_hands_the_others_writes_on(store: LmdbStore) -> None:
    """Ctrl-C in a main thread leading a group: the others' writes are committed all the same,
    and only the main thread sees the interrupt."""
    table = store.table("blobs")
    inside = threading.Event()
    release = threading.Event()
    main_in = threading.Event()
    outcomes: dict[object, BaseException | None] = {}

    def record(name: str, work: Callable[[lmdb.Transaction], object]) -> None:
        _write_recording(store, work, 0, outcomes, name)

    def hold(txn: lmdb.Transaction) -> None:
        inside.set()
        release.wait(10)

    first = threading.Thread(target=record, args=("first", hold))
    first.start()
    assert inside.wait(10)
    followers = [
        threading.Thread(target=record, args=(f"f{i}", lambda txn, i=i: txn.put(b"f%d" % i, b"1", db=table)))
        for i in range(3)
    ]

    def main_work(txn: lmdb.Transaction) -> None:
        main_in.set()
        time.sleep(5)  # interrupted here
        txn.put(b"main", b"1", db=table)

    def queue_followers_then_release() -> None:
        while _queued(store.writes) < 1:  # the main thread's write
            time.sleep(0.001)
        for t in followers:
            t.start()
        while _queued(store.writes) < 4:
            time.sleep(0.001)
        release.set()

    arranger = threading.Thread(target=queue_followers_then_release)
    arranger.start()
    interrupter = _interrupt_main_when(main_in.is_set)
    with pytest.raises(KeyboardInterrupt):
        store.writes.write(store.env, main_work)
    for t in (interrupter, arranger, first, *followers):
        t.join(10)
    assert outcomes == {"first": None, "f0": None, "f1": None, "f2": None}
    with store.env.begin(db=table) as txn:
        assert all(txn.get(b"f%d" % i) == b"1" for i in range(3))
        assert txn.get(b"main") is None


def test_a_path_info_put_syncs_data_kept_in_another_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With blobs in one LMDB directory and PathInfos in another, our commit does not flush the
    other store's last meta page: it is synced before the PathInfo goes in."""
    from tvix_store.import_path import import_path
    from tvix_store.services import construct_services

    synced = _record_syncs(monkeypatch)
    data, infos = tmp_path / "data", tmp_path / "infos"
    services = construct_services(f"lmdb://{data}", f"lmdb://{data}", f"lmdb://{infos}")
    try:
        (tmp_path / "tree").mkdir()
        (tmp_path / "tree" / "f").write_bytes(b"contents")
        import_path(services, str(tmp_path / "tree"))
    finally:
        services.close()
    # The data store before the PathInfo's own store (whose put syncs it afterwards).
    assert synced[:2] == [str(data), str(infos)], synced


def test_put_many_path_infos_is_one_commit_and_one_sync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A closure's PathInfos put together (copy) cost one commit and one sync, not two flushes
    each; all of them are visible afterwards."""
    import hashlib

    from fixtures import CASTORE_NODE_HELLOWORLD

    from nix_compat.store_path import StorePath
    from tvix_store.path_info import PathInfo
    from tvix_store.pathinfoservice.lmdb_store import LmdbPathInfoService

    service = LmdbPathInfoService(str(tmp_path / "store"))
    try:
        store = service._store
        assert store is not None
        infos = [
            PathInfo(
                store_path=StorePath(hashlib.sha1(b"%d" % n).digest(), f"p{n}"),
                node=CASTORE_NODE_HELLOWORLD,
                nar_size=n + 1,
                nar_sha256=hashlib.sha256(b"%d" % n).digest(),
            )
            for n in range(50)
        ]
        synced = _record_syncs(monkeypatch)
        before = _last_txn(store.env)
        assert service.put_many(infos) == infos
        assert _last_txn(store.env) == before + 1
        assert synced == [store.path]
        assert all(service.get(info.store_path.digest) == info for info in infos)
    finally:
        service.close()
