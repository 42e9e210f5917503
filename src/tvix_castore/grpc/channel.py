"""gRPC channels from service URLs (spec §9.3): ``grpc+unix:///sock``, ``grpc+http(s)://host:port``.

Channels connect lazily unless the URL asks ``?wait-connect=1``. Reconnect backoff is kept short
(≤ 1 s) so a client, a mount in particular, is usable again soon after a daemon restarts; calls
made while the server is down fail at once with UNAVAILABLE instead of waiting, and calls waiting
on a server that stopped answering fail within ~35 s (keepalive pings); a new call to it then
waits ~20 s for the server's HTTP/2 settings before it fails.
"""

from __future__ import annotations

import threading

import grpc

from tvix_castore import lazy_logging
from tvix_castore.errors import InvalidRequest, StorageError
from tvix_castore.grpc import loops
from tvix_castore.url import ServiceUrl

__all__ = [
    "CHANNEL_OPTIONS",
    "MAX_MESSAGE",
    "channel_target",
    "open_channel",
    "require_utf8_socket_path",
    "unix_target",
]

MAX_MESSAGE = 4 * 1024 * 1024
"""What a server accepts per message (tonic's and grpcio's default); we send ≤ 1 MiB pieces."""

CHANNEL_OPTIONS: list[tuple[str, int | str]] = [
    # Receiving is lenient (a Directory with very many entries may exceed 4 MiB); sending keeps
    # to what servers accept.
    ("grpc.max_receive_message_length", 256 * 1024 * 1024),
    ("grpc.max_send_message_length", 256 * 1024 * 1024),
    # Not grpc.min_reconnect_backoff_ms: grpc-core also takes it as the connect timeout, so a
    # server slower than that to complete its handshake (a WAN link, TLS) could never be reached.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.enable_retries", 0),
    # grpc.experimental.ChannelOptions.SingleThreadedUnaryStream: a server stream (Read, Get,
    # List) is received by the thread that iterates it, which polls the call itself, instead
    # of grpcio's channel thread taking every message and handing it over. A remote mount
    # reading at full speed spent ~15% less CPU.
    ("SingleThreadedUnaryStream", 1),
    # While calls are open, ping the server every 15 s and give up on a connection whose pings
    # go unanswered for 20 s: a stopped or unreachable daemon then fails the calls waiting on it
    # with UNAVAILABLE (a mount answers EIO) instead of leaving their callers blocked for ever.
    # No pings on an idle channel, and none of a deadline's false alarms on a long, slow stream.
    ("grpc.keepalive_time_ms", 15_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    # grpc-core waits this long for the ack of any ping, keepalive or not (default 60 s).
    ("grpc.http2.ping_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.http2.max_pings_without_data", 0),
]

_CONNECT_TIMEOUT = 10.0


def channel_target(url: ServiceUrl) -> tuple[str, bool]:
    """The grpcio target string for url and whether it needs TLS.

    Raises:
        InvalidRequest: not a ``grpc+`` URL, a host on a unix socket URL, a path on a TCP URL,
            or an unknown option.

    """
    if not url.scheme.startswith("grpc+"):
        raise InvalidRequest(f"invalid service address {url.raw!r}: grpc+ prefix is missing from URL")
    url.require_no_query(("wait-connect",))
    transport = url.scheme[len("grpc+") :]
    if transport == "unix":
        if url.netloc:
            raise InvalidRequest(
                f"invalid service address {url.raw!r}: host may not be set for unix domain sockets"
            )
        if not url.path:
            raise InvalidRequest(f"invalid service address {url.raw!r}: no socket path")
        require_utf8_socket_path(
            url.path, f"invalid service address {url.raw!r}: socket path is not valid UTF-8"
        )
        return unix_target(url.path), False
    if transport not in ("http", "https"):
        raise InvalidRequest(f"invalid service address {url.raw!r}: unknown transport {transport!r}")
    if url.path and url.path != "/":
        raise InvalidRequest(f"invalid service address {url.raw!r}: path may not be set")
    if not url.host:
        raise InvalidRequest(f"invalid service address {url.raw!r}: no host")
    port = url.port if url.port is not None else (443 if transport == "https" else 80)
    host = f"[{url.host}]" if ":" in url.host else url.host
    return f"{host}:{port}", transport == "https"


def require_utf8_socket_path(path: str, error: str) -> None:
    """Raise InvalidRequest(error) for a socket path that is not UTF-8.

    grpc-core takes socket paths as UTF-8 text; other bytes cannot be passed to it.
    """
    try:
        path.encode()
    except UnicodeEncodeError:
        raise InvalidRequest(error) from None


def unix_target(path: str) -> str:
    """The grpc-core target of a unix socket path, for connecting and for binding.

    grpc-core percent-decodes the path of a ``unix:`` target: it is escaped here, so that a
    ``%``, ``#`` or ``?`` in the name stays what it is.
    """
    from urllib.parse import quote

    return "unix:" + quote(path, safe="/")


def open_channel(url: ServiceUrl) -> grpc.Channel:
    """A channel to the server url names; with ``wait-connect=1`` it is connected before return.

    Raises:
        InvalidRequest: a malformed URL (see ``channel_target``).
        StorageError: ``wait-connect=1`` and the server cannot be reached.

    """
    target, tls = channel_target(url)
    # grpcio logs through logging (imported with it): its records get our handler and levels.
    lazy_logging.setup_now()
    if tls:
        channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(), options=CHANNEL_OPTIONS)
    else:
        channel = grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
    if url.query.get("wait-connect", ["0"])[-1] in ("1", "true"):
        _wait_connected(channel, url)
    return loops.intercept(channel)


def _wait_connected(channel: grpc.Channel, url: ServiceUrl) -> None:
    """Connect now; the first failure to connect (or the timeout) is an error."""
    settled = threading.Event()
    states: list[grpc.ChannelConnectivity] = []

    def watch(state: grpc.ChannelConnectivity) -> None:
        states.append(state)
        if state in (grpc.ChannelConnectivity.READY, grpc.ChannelConnectivity.TRANSIENT_FAILURE):
            settled.set()

    channel.subscribe(watch, try_to_connect=True)
    try:
        settled.wait(_CONNECT_TIMEOUT)
    finally:
        channel.unsubscribe(watch)
    if not states or states[-1] != grpc.ChannelConnectivity.READY:
        channel.close()
        raise StorageError(f"cannot connect to {url.raw}")
