"""The daemon's elastic thread pool (tvix_castore/grpc/pool.py): few threads for short calls,
one more for each call that blocks, never more than max_workers, and every call run once."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import pytest

from tvix_castore.grpc.pool import ElasticThreadPool, overloaded


def _wait_until(condition: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


def test_results_and_exceptions_reach_the_futures() -> None:
    pool = ElasticThreadPool(max_workers=8, core=2)
    try:
        assert pool.submit(lambda a, b=0: a + b, 2, b=3).result(timeout=10) == 5

        def fail() -> None:
            raise KeyError("boom")

        with pytest.raises(KeyError, match="boom"):
            pool.submit(fail).result(timeout=10)
        futures = [pool.submit(lambda i=i: i * i) for i in range(500)]
        assert [f.result(timeout=10) for f in futures] == [i * i for i in range(500)]
    finally:
        pool.shutdown()


def test_short_calls_stay_on_the_core_threads() -> None:
    """A long burst of short calls keeps to about the core threads, where a plain pool starts
    one per call in flight (a ThreadPoolExecutor of 256 started 76 here). Slack for a machine
    that stalls the whole process for a moment: each such stall may add up to core threads."""
    pool = ElasticThreadPool(max_workers=256, core=4, stall_after=0.05)
    try:
        futures = [pool.submit(sum, range(300)) for _ in range(3000)]
        for f in futures:
            assert f.result(timeout=30) == sum(range(300))
        assert pool.threads <= 16, pool.threads
    finally:
        pool.shutdown()


def test_blocked_calls_do_not_starve_new_ones() -> None:
    """Calls that block hold their threads; new calls still run, on threads added for them."""
    pool = ElasticThreadPool(max_workers=64, core=2, stall_after=0.01)
    release = threading.Event()
    try:
        blocked = [pool.submit(release.wait, 30) for _ in range(20)]
        # Every blocked call gets a thread, then a short call runs beside them.
        quick = pool.submit(lambda: "done")
        assert quick.result(timeout=10) == "done"
        _wait_until(lambda: all(f.running() for f in blocked))
        assert pool.threads >= 21
        release.set()
        assert all(f.result(timeout=10) for f in blocked)
    finally:
        release.set()
        pool.shutdown()


def test_never_more_than_max_workers_and_idle_threads_end() -> None:
    pool = ElasticThreadPool(max_workers=5, core=2, stall_after=0.005, idle_timeout=0.1)
    release = threading.Event()
    try:
        futures = [pool.submit(release.wait, 30) for _ in range(12)]
        _wait_until(lambda: sum(f.running() for f in futures) == 5)
        time.sleep(0.1)
        assert pool.threads == 5
        assert sum(f.running() for f in futures) == 5  # the rest wait for a thread
        release.set()
        assert all(f.result(timeout=10) for f in futures)
        # Idle for idle_timeout: back down to the core threads.
        _wait_until(lambda: pool.threads == 2)
    finally:
        release.set()
        pool.shutdown()


def test_shutdown_runs_or_cancels_what_is_queued() -> None:
    pool = ElasticThreadPool(max_workers=1, core=1)
    gate = threading.Event()
    first = pool.submit(gate.wait, 30)
    _wait_until(first.running)
    queued = [pool.submit(lambda i=i: i) for i in range(3)]
    gate.set()
    pool.shutdown(wait=True)
    assert [f.result(timeout=0) for f in queued] == [0, 1, 2]
    assert pool.threads == 0
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.submit(lambda: None)

    pool = ElasticThreadPool(max_workers=1, core=1)
    gate.clear()
    first = pool.submit(gate.wait, 30)
    _wait_until(first.running)
    queued = [pool.submit(lambda: None) for _ in range(3)]
    pool.shutdown(wait=False, cancel_futures=True)
    assert all(f.cancelled() for f in queued)
    gate.set()
    assert first.result(timeout=10)
    _wait_until(lambda: pool.threads == 0)


def test_a_thread_that_cannot_start_is_not_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    """When the system refuses a new thread, the pool neither counts it nor loses the call:
    with no thread at all the call is refused at once; with threads, it runs on them later."""
    real_start = threading.Thread.start
    refuse = True

    def start(thread: threading.Thread) -> None:
        if refuse and thread.name.startswith("t_"):
            raise RuntimeError("can't start new thread")
        real_start(thread)

    monkeypatch.setattr(threading.Thread, "start", start)
    pool = ElasticThreadPool(max_workers=4, core=2, stall_after=0.005, thread_name_prefix="t")
    try:
        with pytest.raises(RuntimeError, match="cannot start a thread"):
            pool.submit(lambda: None)
        assert pool.threads == 0
        refuse = False
        gate = threading.Event()
        blocked = pool.submit(gate.wait, 30)
        _wait_until(blocked.running)
        refuse = True
        # No second thread can start: the call waits for the one there is, and the watcher
        # keeps trying (it must not die of the refusal).
        waiting = pool.submit(lambda: "ran")
        time.sleep(0.1)
        assert pool.threads == 1
        assert not waiting.done()
        refuse = False
        assert waiting.result(timeout=10) == "ran"  # a thread started on a later try
        gate.set()
    finally:
        refuse = False
        pool.shutdown()
    assert pool.threads == 0


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_worker_that_dies_is_uncounted() -> None:
    """A worker ended by something other than its call (a done-callback raising SystemExit)
    leaves the count right, so shutdown(wait=True) returns."""
    pool = ElasticThreadPool(max_workers=2, core=1, thread_name_prefix="dying")
    future = pool.submit(lambda: 1)
    gate = threading.Event()
    held = pool.submit(gate.wait, 30)
    _wait_until(held.running)

    def die(_: object) -> None:
        raise SystemExit

    held.add_done_callback(die)
    workers = [t for t in threading.enumerate() if t.name.startswith("dying_")]
    gate.set()
    assert future.result(timeout=10) == 1
    _wait_until(lambda: pool.threads == 0)
    for t in workers:  # the thread ends (and reports its SystemExit) inside this test
        t.join(10)
    done = threading.Thread(target=pool.shutdown)
    done.start()
    done.join(10)
    assert not done.is_alive()


def test_shutdown_still_grows_for_calls_queued_before_it() -> None:
    """A call queued before shutdown that another queued call waits for still gets a thread."""
    pool = ElasticThreadPool(max_workers=2, core=1, stall_after=0.005)
    b_ran = threading.Event()
    a = pool.submit(b_ran.wait, 10)
    _wait_until(a.running)
    b = pool.submit(b_ran.set)
    pool.shutdown(wait=True)
    assert a.result(timeout=0) is True
    assert b.done()


def test_a_stopped_daemon_leaves_no_pool_threads(tmp_path: Path) -> None:
    """grpcio never shuts its executor down; Daemon.stop does, so no thread outlives it."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from tvix_store.server import Daemon
    from tvix_store.services import construct_services

    def pool_threads() -> list[str]:
        return [t.name for t in threading.enumerate() if t.name.startswith("grpc-server")]

    before = pool_threads()
    services = construct_services("memory://", "memory://", "memory://")
    sock = str(tmp_path / "d.sock")
    daemon = Daemon(services, sock, max_workers=16)
    try:
        with grpc.insecure_channel(f"unix:{sock}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            for _ in range(20):
                stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert len(pool_threads()) > len(before)
    finally:
        daemon.stop(grace=1.0)
        services.close()
    _wait_until(lambda: pool_threads() == before)


def test_a_call_cannot_wait_for_its_own_pool_to_shut_down() -> None:
    """shutdown(wait=True) from one of the pool's calls would wait for itself: refused."""
    pool = ElasticThreadPool(max_workers=2, core=1)
    try:
        with pytest.raises(RuntimeError, match="cannot wait"):
            pool.submit(pool.shutdown).result(timeout=10)
    finally:
        pool.shutdown()
    assert pool.threads == 0


def test_waiting_calls_are_served_while_calls_end() -> None:
    """More calls than threads wait for one, and run normally, as long as calls keep ending."""
    pool = ElasticThreadPool(max_workers=2, core=2, refuse_after=0.2)
    try:

        def call() -> bool:
            time.sleep(0.01)
            return overloaded()

        futures = [pool.submit(call) for _ in range(100)]  # ~0.5 s of work on two threads
        assert [f.result(timeout=30) for f in futures] == [False] * 100
        assert pool.threads == 2
    finally:
        pool.shutdown()


def test_waiting_calls_are_refused_once_every_thread_is_stuck() -> None:
    """With every thread held and no call ending for refuse_after, a waiting call runs at once on
    an extra thread, marked overloaded (the daemon answers it RESOURCE_EXHAUSTED); once calls
    end again, calls run normally."""
    pool = ElasticThreadPool(max_workers=2, core=2, refuse_after=0.2)
    release = threading.Event()
    try:
        # Before the stuck calls start: the pool counts refuse_after from their start.
        started = time.monotonic()
        stuck = [pool.submit(release.wait, 30) for _ in range(2)]
        _wait_until(lambda: all(f.running() for f in stuck))
        waiting = [pool.submit(overloaded) for _ in range(3)]
        assert [f.result(timeout=10) for f in waiting] == [True] * 3
        assert time.monotonic() - started >= 0.2
        assert pool.threads == 2  # the refusing threads are not the pool's
        release.set()
        assert all(f.result(timeout=10) for f in stuck)
        assert pool.submit(overloaded).result(timeout=10) is False
    finally:
        release.set()
        pool.shutdown()


def test_idle_threads_are_not_held_threads() -> None:
    """After a quiet spell longer than refuse_after, a burst waits for the idle threads: it is
    not refused, as it would be if idle threads counted as held."""
    pool = ElasticThreadPool(max_workers=2, core=2, refuse_after=0.05, stall_after=0.005)
    try:
        assert pool.submit(overloaded).result(timeout=10) is False
        for _ in range(5):
            time.sleep(0.1)  # quiet: no call starts or ends
            burst = [pool.submit(overloaded) for _ in range(20)]
            assert [f.result(timeout=10) for f in burst] == [False] * 20
    finally:
        pool.shutdown()


def test_shutdown_waits_for_refused_calls() -> None:
    """shutdown(wait=True) returns only once the calls run on refusing threads have ended."""
    pool = ElasticThreadPool(max_workers=1, core=1, refuse_after=0.05)
    release = threading.Event()
    ended = threading.Event()
    try:
        stuck = pool.submit(release.wait, 30)
        _wait_until(stuck.running)

        def refused_call() -> None:
            assert overloaded()
            time.sleep(0.3)
            ended.set()

        refused = pool.submit(refused_call)
        _wait_until(refused.running)
        release.set()
        pool.shutdown(wait=True)
        assert ended.is_set() and refused.done()
    finally:
        release.set()
        pool.shutdown()


def test_a_done_callback_cannot_wait_for_its_own_pool() -> None:
    """A future's done-callback runs on the worker thread: one that shuts the pool down and waits
    would wait for itself. It is refused, as a call doing so is."""
    pool = ElasticThreadPool(max_workers=2, core=1)
    outcome: list[BaseException | None] = []
    done = threading.Event()

    def shut_down(_: object) -> None:
        try:
            pool.shutdown(wait=True)
            outcome.append(None)
        except BaseException as exc:  # recorded for the assertion
            outcome.append(exc)
        done.set()

    try:
        future = pool.submit(time.sleep, 0.05)
        future.add_done_callback(shut_down)
        assert done.wait(10), "the callback is still waiting for its own pool"
        assert isinstance(outcome[0], RuntimeError) and "cannot wait" in str(outcome[0])
    finally:
        pool.shutdown(wait=False)  # not waiting: with the bug, a worker waits for itself for ever
