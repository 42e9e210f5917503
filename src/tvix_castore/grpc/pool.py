"""The gRPC server's thread pool: a few threads while calls are short, more when calls block.

grpcio's sync server runs every call on a thread of the executor it is given, for the whole
call. With a ``ThreadPoolExecutor`` of hundreds of threads, a burst of short calls (an import's
many small blob Puts, a hundred clients' PathInfo Gets) starts a thread per call in flight, and
dozens of threads taking turns at the GIL cost more than the calls themselves (a test server
spent 670 µs of CPU per small Put on 256 threads, 435 µs on 4). Yet a call may also hold its thread for
long (a slow client's upload, a Read stream, a client that stopped reading), so a small fixed
pool would let a few such calls starve all others.

``ElasticThreadPool`` starts with ``core`` threads and adds threads while calls wait and the
pool makes no progress (no call started or ended for ``stall_after`` seconds: every thread is
blocked; up to ``core`` threads at a time), or while fewer than ``core`` threads are idle or in a
call younger than ``long_after`` seconds (long calls hold the rest). Threads idle for
``idle_timeout`` seconds end, down to ``core``.

Calls beyond ``max_workers`` wait for a thread while calls keep ending. When all ``max_workers``
threads have been held for ``refuse_after`` seconds with no call ending (streams whose clients
stopped reading, say), a waiting call would wait for ever: each runs at once instead, on a
short-lived thread of its own where ``overloaded()`` is True, and ``OverloadGuard`` makes the
gRPC server answer it RESOURCE_EXHAUSTED (a server without that interceptor would simply run
them). Long calls that hold every thread count as well as stuck ones: the pool cannot tell them
apart, and either way nothing would take the waiting calls.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, ParamSpec, TypeVar

import grpc

from tvix_castore.grpc.handlers import replace_behaviour

__all__ = ["ElasticThreadPool", "OverloadGuard", "overloaded"]

_P = ParamSpec("_P")
_T = TypeVar("_T")

_Item = tuple[Future[Any], Callable[..., Any], tuple[Any, ...], dict[str, Any]]


class ElasticThreadPool(Executor):
    """An executor whose thread count follows how many calls block, not how many run."""

    def __init__(
        self,
        max_workers: int,
        core: int = 4,
        stall_after: float = 0.01,
        long_after: float = 0.5,
        idle_timeout: float = 30.0,
        refuse_after: float | None = None,
        thread_name_prefix: str = "pool",
    ) -> None:
        if not 1 <= core <= max_workers:
            raise ValueError(f"need 1 <= core ({core}) <= max_workers ({max_workers})")
        self._max = max_workers
        self._core = core
        self._stall_after = stall_after
        self._long_after = long_after
        self._idle_timeout = idle_timeout
        self._refuse_after = refuse_after
        self._prefix = thread_name_prefix
        self._lock = threading.Lock()
        # Workers wait on _work for items; the watcher waits on _watch while nothing queues.
        self._work = threading.Condition(self._lock)
        self._watch = threading.Condition(self._lock)
        self._queue: deque[_Item] = deque()
        self._threads = 0
        self._refusing = 0  # short-lived threads running refused calls
        self._idle = 0
        self._made = 0
        # When each busy worker started its current call, by thread ident.
        self._started: dict[int, float] = {}
        # When a call last started or ended.
        self._progress = time.monotonic()
        self._shutdown = False
        self._watcher = threading.Thread(target=self._watch_loop, name=f"{self._prefix}-watch", daemon=True)
        self._watcher.start()

    @property
    def threads(self) -> int:
        """Worker threads alive now."""
        with self._lock:
            return self._threads

    def submit(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> Future[_T]:
        """Run fn(*args, **kwargs) on a worker; its Future."""
        future: Future[_T] = Future()
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new calls after shutdown")
            self._queue.append((future, fn, args, kwargs))
            if self._idle >= len(self._queue):
                self._work.notify()
                return future
            if self._threads < self._core and self._start_worker():
                return future
            if not self._threads:
                # No thread to run it, and none could be started: refuse it rather than queue it.
                self._queue.pop()
                raise RuntimeError("cannot start a thread for the call")
            self._watch.notify()  # the watcher adds a thread if the pool stalls
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Take no new calls; run (or cancel) those queued; with wait, wait for the workers."""
        with self._lock:
            if wait and threading.get_ident() in self._started:
                raise RuntimeError("a call on this pool cannot wait for the pool's shutdown")
            self._shutdown = True
            if cancel_futures:
                while self._queue:
                    self._queue.popleft()[0].cancel()
            self._work.notify_all()
            self._watch.notify_all()
        if wait:
            while True:
                with self._lock:
                    if not self._threads and not self._refusing:
                        break
                time.sleep(0.005)
            self._watcher.join()

    # ---- inside the lock -------------------------------------------------------------------

    def _start_worker(self) -> bool:
        """Start a worker; False (counters untouched) when the system refuses a new thread."""
        self._made += 1
        thread = threading.Thread(target=self._work_loop, name=f"{self._prefix}_{self._made}", daemon=True)
        self._threads += 1
        try:
            thread.start()
        except RuntimeError:
            self._threads -= 1
            return False
        return True

    def _short_or_idle(self, now: float) -> int:
        """Workers that are idle or whose current call is still short."""
        long_calls = sum(1 for started in self._started.values() if now - started > self._long_after)
        return self._threads - long_calls

    # ---- threads -------------------------------------------------------------------------------

    def _work_loop(self) -> None:
        try:
            self._serve()
        finally:
            # However the thread ends (a done-callback raising SystemExit, say), it is uncounted,
            # and the watcher looks again at whatever is still queued.
            with self._lock:
                self._threads -= 1
                self._watch.notify()

    def _serve(self) -> None:
        me = threading.get_ident()
        while True:
            with self._lock:
                while not self._queue:
                    if self._shutdown:
                        return
                    if not self._wait_for_work() and self._threads > self._core:
                        return  # idle for idle_timeout, and more than core remain
                future, fn, args, kwargs = self._queue.popleft()
                self._started[me] = self._progress = time.monotonic()
            try:
                _run(future, fn, args, kwargs, self._call_returned)
            finally:
                del future, fn, args, kwargs
                with self._lock:
                    del self._started[me]
                    self._progress = time.monotonic()

    def _call_returned(self) -> None:
        """A call's function returned: progress, though its thread is busy until its callbacks ran."""
        with self._lock:
            self._progress = time.monotonic()

    def _wait_for_work(self) -> bool:
        """Wait (lock held) up to the idle timeout for an item; False if it timed out idle."""
        self._idle += 1
        try:
            notified = self._work.wait(self._idle_timeout)
        finally:
            self._idle -= 1
        return notified or bool(self._queue) or self._shutdown

    def _watch_loop(self) -> None:
        with self._lock:
            # After shutdown it still grows the pool for calls queued before it, then ends.
            while self._queue or not self._shutdown:
                if not self._queue:
                    self._watch.wait()
                    continue
                now = time.monotonic()
                # Stalled: every thread is blocked, so start threads for the waiting calls, up to
                # core at once. Else start as many as long calls keep from being free.
                stalled = now - self._progress > self._stall_after
                wanted = max(
                    min(len(self._queue), self._core) if stalled else 0,
                    self._core - self._short_or_idle(now),
                )
                started = 0
                while started < wanted and self._threads < self._max and self._start_worker():
                    started += 1
                if started:
                    self._progress = now  # give the new threads their time to take calls
                elif (
                    self._refuse_after is not None
                    and len(self._started) >= self._max  # every thread in a call, none idle
                    and now - self._progress > self._refuse_after
                ):
                    self._refuse_waiting()
                self._watch.wait(self._stall_after)

    def _refuse_waiting(self) -> None:
        """Run every waiting call now, each on a short-lived thread where overloaded() is True.

        Called and returning with the lock held; the threads start with it released, so that
        calls ending and new calls arriving meanwhile are not held up.
        """
        refused = list(self._queue)
        self._queue.clear()
        self._refusing += len(refused)
        unstarted: list[_Item] = []
        self._lock.release()
        try:
            for n, item in enumerate(refused):
                thread = threading.Thread(
                    target=self._run_refused, args=item, name=f"{self._prefix}-refuse", daemon=True
                )
                try:
                    thread.start()
                except RuntimeError:  # no thread to be had: the rest wait after all
                    unstarted = refused[n:]
                    break
        finally:
            self._lock.acquire()
        self._refusing -= len(unstarted)
        self._queue.extendleft(reversed(unstarted))

    def _run_refused(
        self, future: Future[Any], fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        _overloaded_thread.active = True
        try:
            _run(future, fn, args, kwargs)
        finally:
            with self._lock:
                self._refusing -= 1


_overloaded_thread = threading.local()


def overloaded() -> bool:
    """Whether this thread runs a call that the pool, blocked for ``refuse_after``, refuses."""
    return bool(getattr(_overloaded_thread, "active", False))


class OverloadGuard(grpc.ServerInterceptor):  # type: ignore[misc]
    """Answers RESOURCE_EXHAUSTED, without running the method, to calls the pool refuses."""

    def __init__(self, threads: int, refuse_after: float) -> None:
        self._message = (
            f"daemon overloaded: all {threads} call threads have been busy for {refuse_after:g} s "
            "with no call ending"
        )

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        """The method's handler, refusing the call first when it runs overloaded."""
        handler = continuation(details)
        if handler is None:
            return None
        message = self._message

        def guard(behaviour: Callable[..., Any]) -> Callable[..., Any]:
            def guarded(request: Any, context: grpc.ServicerContext) -> Any:
                if overloaded():
                    context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, message)
                return behaviour(request, context)

            return guarded

        return replace_behaviour(handler, guard)


def _run(
    future: Future[Any],
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    ended: Callable[[], None] | None = None,
) -> None:
    """Run one call into its future (a function of its own: no result outlives the call).

    ended, if given, runs once fn has returned and before the future has its outcome: whoever
    waits for the future and then submits a call finds the pool making progress (else that
    call could be judged as waiting behind threads that are all stuck, and refused).
    """
    if future.set_running_or_notify_cancel():
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            if ended is not None:
                ended()
            future.set_exception(exc)
        else:
            if ended is not None:
                ended()
            future.set_result(result)
