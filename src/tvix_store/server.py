"""The gRPC server behind ``tvix-store daemon``: three services, reflection and health.

``grpc.server`` on an elastic thread pool (``pool``) with the Blob, Directory and PathInfo
servicers (plus NAR calculation), server reflection v1alpha and v1 (the same messages under two
package names), and health reporting SERVING for "" and each service. A local LMDB store's data
file is flushed to disk in the background while the daemon runs (as ``import`` does locally),
so the sync before each PathInfo put finds little left to write. Listens on ``host:port``,
``[v6]:port`` or a unix socket path (``/…`` or ``./…``). ``serve`` blocks until SIGINT/SIGTERM, then stops
taking calls, lets the ones in flight finish, and returns.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import threading
from collections.abc import Callable, Iterable

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from tvix.castore.protos import rpc_blobstore_pb2, rpc_directory_pb2
from tvix.castore.protos import rpc_directory_pb2_grpc as directory_grpc
from tvix.store.protos import rpc_pathinfo_pb2
from tvix.store.protos import rpc_pathinfo_pb2_grpc as pathinfo_grpc
from tvix_castore.errors import InvalidRequest
from tvix_castore.grpc.blob_servicer import BlobServicer
from tvix_castore.grpc.channel import MAX_MESSAGE, channel_target, require_utf8_socket_path, unix_target
from tvix_castore.grpc.directory_servicer import DirectoryServicer
from tvix_castore.grpc.loops import LoopGuard, process_id
from tvix_castore.grpc.pool import ElasticThreadPool, OverloadGuard
from tvix_castore.lazy_logging import get_logger
from tvix_castore.url import ServiceUrl
from tvix_store.grpc.pathinfo_servicer import PathInfoServicer
from tvix_store.services import Services
from tvix_store.stopping import GRACE_SECONDS, stop_signals

__all__ = [
    "DEFAULT_LISTEN",
    "MAX_CALLS",
    "MAX_THREADS",
    "REFUSE_AFTER",
    "SERVICE_NAMES",
    "Daemon",
    "grpc_target",
    "refuse_serving_itself",
    "serve",
]

log = get_logger(__name__)

DEFAULT_LISTEN = "[::1]:8000"
# After a second stop signal, how long closing the backends may still take.
CUT_CLOSE_SECONDS = 2.0

MAX_THREADS = 256
"""Threads for calls (a call holds one until it ends); idle threads cost only address space."""

MAX_CALLS = 1024
"""Calls taken at once; those beyond MAX_THREADS wait for a thread. Further calls are refused."""

REFUSE_AFTER = 5.0
"""Seconds every thread may stay held with no call ending before waiting calls are refused."""

SERVER_KEEPALIVE_OPTIONS: list[tuple[str, int]] = [
    # Ping each client connection after a minute without traffic; one that does not answer
    # within 20 s (a stopped or vanished process, a dead network) is closed, and the calls on
    # it end, giving back their threads. A live client that merely stops reading still answers.
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    # grpc-core waits this long for any ping's ack (default 60 s), whatever the keepalive timeout.
    ("grpc.http2.ping_timeout_ms", 20_000),
    # Accept the pings of our own clients (channel.py), sent every 15 s while calls are open
    # even when no data moves: grpc-core's default would answer them with GOAWAY.
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_ping_strikes", 0),
]

SERVICE_NAMES = (
    rpc_blobstore_pb2.DESCRIPTOR.services_by_name["BlobService"].full_name,
    rpc_directory_pb2.DESCRIPTOR.services_by_name["DirectoryService"].full_name,
    rpc_pathinfo_pb2.DESCRIPTOR.services_by_name["PathInfoService"].full_name,
)

_REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"


def _refuse_live_socket(listen: str, path: str) -> None:
    """Refuse a socket path another server still answers on.

    grpcio replaces a socket file at the path (TCP ports get EADDRINUSE instead): the server
    there would lose its address without noticing, and its shutdown would later unlink ours.
    A file no one accepts on is what a killed daemon leaves behind, and is replaced.

    Raises:
        InvalidRequest: a server accepts connections at path.

    """
    try:
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            return  # not a socket: grpcio's bind fails and leaves the file alone
    except OSError:
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except OSError:
            return
    raise InvalidRequest(f"cannot listen on {listen}: another process is listening there")


def grpc_target(listen: str) -> str:
    """The grpcio bind target for a listen address (``unix:`` for socket paths).

    Raises:
        InvalidRequest: an address that is neither a socket path nor ``host:port``.

    """
    if listen.startswith(("/", ".")):
        require_utf8_socket_path(listen, f"invalid listen address {listen!r}: socket path is not UTF-8")
        return unix_target(os.path.abspath(listen))
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise InvalidRequest(f"invalid listen address {listen!r}: expected host:port, [v6]:port or /socket")
    if int(port) > 65535:
        # grpc-core would take the port modulo 65536, or any free one, and we would report this.
        raise InvalidRequest(f"invalid listen address {listen!r}: port out of range 0-65535")
    return listen


def refuse_serving_itself(listen: str, service_urls: Iterable[str]) -> None:
    """Refuse a gRPC backend URL that names the daemon's own listen address.

    Every call would be forwarded to the daemon itself, and wait on a call that waits on it.

    Raises:
        InvalidRequest: one of service_urls points at listen.

    """
    own = grpc_target(listen)
    for raw in service_urls:
        if not raw.startswith("grpc+"):
            continue
        url = ServiceUrl.parse(raw)
        target, _ = channel_target(url)
        if target.startswith("unix:"):
            target = unix_target(os.path.abspath(url.path))
        if target == own:
            raise InvalidRequest(
                f"invalid service address {raw!r}: it is this daemon's own listen address {listen!r}"
            )


def _register_reflection_v1() -> None:
    """Make ``grpc/reflection/v1/reflection.proto`` known: v1alpha's file under the v1 package.

    grpcio-reflection ships only v1alpha; v1 has the same messages and field numbers, so the
    v1alpha servicer answers v1 calls once the names exist.
    """
    pool = descriptor_pool.Default()
    try:
        pool.FindServiceByName(_REFLECTION_V1)
        return
    except KeyError:
        pass
    fdp = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(fdp)
    old, new = "grpc.reflection.v1alpha", "grpc.reflection.v1"
    fdp.name = "grpc/reflection/v1/reflection.proto"
    fdp.package = new

    def fix(messages: object) -> None:
        for m in messages:  # type: ignore[attr-defined]
            for f in m.field:
                if f.HasField("type_name"):
                    f.type_name = f.type_name.replace(f".{old}.", f".{new}.")
            fix(m.nested_type)

    fix(fdp.message_type)
    for s in fdp.service:
        for m in s.method:
            m.input_type = m.input_type.replace(f".{old}.", f".{new}.")
            m.output_type = m.output_type.replace(f".{old}.", f".{new}.")
    pool.AddSerializedFile(fdp.SerializeToString())


def _reflection_v1_handler(servicer: reflection.ReflectionServicer) -> grpc.GenericRpcHandler:
    method = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    return grpc.method_handlers_generic_handler(_REFLECTION_V1, {"ServerReflectionInfo": method})


class Daemon:
    """A started server; ``stop`` ends it gracefully."""

    def __init__(
        self,
        services: Services,
        listen: str,
        max_workers: int = MAX_THREADS,
        max_calls: int = MAX_CALLS,
        refuse_after: float = REFUSE_AFTER,
    ) -> None:
        self.listen = listen
        # A few threads while calls are short, one more for each call that blocks (pool.py).
        self._pool = ElasticThreadPool(
            max_workers=max_workers, refuse_after=refuse_after, thread_name_prefix="grpc-server"
        )
        interceptors: list[grpc.ServerInterceptor] = [OverloadGuard(max_workers, refuse_after)]
        if (own_id := process_id()) is not None:
            # A daemon with remote backends refuses calls that loop back to it (loops.py).
            interceptors.append(LoopGuard(own_id))
        self._server = grpc.server(
            self._pool,
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE),
                ("grpc.max_send_message_length", 256 * 1024 * 1024),
                ("grpc.so_reuseport", 0),
                *SERVER_KEEPALIVE_OPTIONS,
            ],
            # Calls beyond the threads wait for one while calls keep ending (several importers at
            # once keep ~64 uploads each in flight). Should every thread stay held for
            # refuse_after (streams whose clients stopped reading), the waiting calls are refused
            # with RESOURCE_EXHAUSTED rather than wait for ever (pool.py); beyond max_calls at
            # once grpcio refuses them on arrival.
            maximum_concurrent_rpcs=max_calls,
            interceptors=interceptors,
        )
        BlobServicer(services.blob_service).add_to_server(self._server)
        directory_grpc.add_DirectoryServiceServicer_to_server(
            DirectoryServicer(services.directory_service), self._server
        )
        pathinfo_grpc.add_PathInfoServiceServicer_to_server(PathInfoServicer(services), self._server)
        self._health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        for name in ("", *SERVICE_NAMES):
            self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        _register_reflection_v1()
        names = (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME, _REFLECTION_V1)
        reflection.enable_server_reflection(names, self._server)
        self._server.add_generic_rpc_handlers((_reflection_v1_handler(reflection.ReflectionServicer(names)),))
        target = grpc_target(listen)
        if target.startswith("unix:"):
            _refuse_live_socket(listen, os.path.abspath(listen))
        try:
            self.port = self._server.add_insecure_port(target)
        except RuntimeError as exc:
            raise InvalidRequest(f"cannot listen on {listen}: {exc}") from exc
        if self.port == 0:
            raise InvalidRequest(f"cannot listen on {listen}")
        self._server.start()
        if not target.startswith("unix:") and listen.endswith(":0"):
            listen = f"{listen[:-2]}:{self.port}"  # port 0: say which port the kernel chose
        log.info("starting daemon listen_address=%s", listen)

    def stop(self, grace: float = GRACE_SECONDS) -> None:
        """Refuse new calls, wait up to grace seconds for those in flight, then close."""
        self._health.enter_graceful_shutdown()
        self._server.stop(grace).wait()
        # grpcio never shuts its executor down: without this the pool's threads outlive us.
        self._pool.shutdown(wait=False)
        if self.listen.startswith(("/", ".")):
            # grpcio leaves the socket file behind; a restart would unlink it anyway.
            with contextlib.suppress(OSError):
                os.unlink(self.listen)
        log.info("daemon stopped")

    def cut_short(self) -> None:
        """End the calls still in flight now, cutting short a graceful ``stop`` under way.

        Does not block: safe in a signal handler while ``stop`` waits.
        """
        self._server.stop(0)

    def wait(self) -> None:
        """Block until the server has stopped."""
        self._server.wait_for_termination()


def serve(services: Services, listen: str, on_ready: Callable[[Daemon], None] | None = None) -> bool:
    """Run a daemon until a stop signal (``stopping``), then close services.

    In-flight calls finish first, unless a second signal ends them. Returns whether the services
    closed; False when, after a second signal, one did not within a moment (a remote backend
    that stalled, holding uploads): the caller should then exit without waiting for it.
    """
    stop, cut = threading.Event(), threading.Event()
    daemon: Daemon | None = None

    def end_calls_now() -> None:
        cut.set()
        if daemon is not None:
            daemon.cut_short()

    # The signals stay ours until the services are closed: a second one during that still counts.
    with stop_signals("calls", on_first=stop.set, on_again=end_calls_now):
        try:
            daemon = Daemon(services, listen)
            if on_ready is not None:
                on_ready(daemon)
            # A short wait, not one long one: a signal that the kernel hands to another thread
            # (it may, after SIGSTOP and SIGCONT) runs its handler only once this thread wakes.
            while not stop.wait(0.5):
                pass
            daemon.stop()
        finally:
            closed = _close_unless_cut(services, cut)
    return closed


def _close_unless_cut(services: Services, cut: threading.Event) -> bool:
    """Close services; False if cut is set and they are not closed CUT_CLOSE_SECONDS later.

    The close runs on a thread, so that the main thread still hears signals while a stalled
    backend holds it up.
    """
    failure: list[BaseException] = []

    def close() -> None:
        try:
            services.close()
        except BaseException as exc:
            failure.append(exc)

    closer = threading.Thread(target=close, name="close-services", daemon=True)
    closer.start()
    while closer.is_alive():
        if cut.is_set():
            closer.join(CUT_CLOSE_SECONDS)
            if closer.is_alive():
                log.warning("a backend did not close in time; stopping without waiting for it")
                return False
        closer.join(0.1)
    if failure:
        raise failure[0]
    return True
