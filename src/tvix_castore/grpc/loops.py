"""Request loops between daemons: a call that comes back to a service it already passed through.

A daemon whose backend address leads back to itself, directly under another name (``localhost``
for ``127.0.0.1``, a symlink to its socket, ``0.0.0.0``) or through other daemons, would make
every call wait on a call to itself until all its call threads are taken. So a daemon process
names itself with a random id, and each call it makes to a remote backend carries, in the
``tvix-store-via`` metadata, ``<id>/<service>`` for every daemon service the request was
forwarded by: those of the call being served on that thread, plus this daemon's for the service
called. A daemon that receives a call for a service it already forwarded (its own
``<id>/<service>`` is in the list) refuses it with FAILED_PRECONDITION, naming the loop: one
round, not hundreds. A request may pass through one daemon twice for different services (a
path-info backend whose NARs are read from this daemon's blobs): that is not a loop.

Only a daemon process turns this on (``enter_daemon_process``, before its backends' channels are
opened); other processes send no metadata and install no interceptors.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from tvix_castore.grpc.handlers import replace_behaviour

__all__ = ["VIA_KEY", "LoopGuard", "enter_daemon_process", "intercept", "process_id"]

VIA_KEY = "tvix-store-via"

_process_id: str | None = None
_serving = threading.local()  # .chain: the via chain of the call this thread is serving


def enter_daemon_process() -> str:
    """Name this process as a daemon (once); channels opened afterwards carry the via chain."""
    global _process_id
    if _process_id is None:
        _process_id = secrets.token_hex(8)
    return _process_id


def process_id() -> str | None:
    """The id of this process if it is a daemon (``enter_daemon_process``), else None."""
    return _process_id


def _service_of(method: str) -> str:
    """``tvix.castore.v1.BlobService`` of ``/tvix.castore.v1.BlobService/Read``."""
    return method.strip("/").split("/", 1)[0]


def _outgoing_chain(method: str) -> str:
    """The via list for a call to method: the served call's list, plus this daemon's entry."""
    own = f"{_process_id}/{_service_of(method)}"
    chain: str | None = getattr(_serving, "chain", None)
    return f"{chain},{own}" if chain else own


# grpc's client interceptor bases are untyped (Any) in its stubs.
class _ViaClientInterceptor(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[misc]
    grpc.StreamStreamClientInterceptor,  # type: ignore[misc]
):
    """Adds the via chain to every call's metadata."""

    def _with_via(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        metadata = [*(details.metadata or ()), (VIA_KEY, _outgoing_chain(details.method))]
        return details._replace(metadata=metadata)

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._with_via(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._with_via(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return continuation(self._with_via(details), request_iterator)

    def intercept_stream_stream(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return continuation(self._with_via(details), request_iterator)


def intercept(channel: grpc.Channel) -> grpc.Channel:
    """channel, carrying the via chain when this process is a daemon."""
    if _process_id is None:
        return channel
    return grpc.intercept_channel(channel, _ViaClientInterceptor())


class LoopGuard(grpc.ServerInterceptor):  # type: ignore[misc]
    """Refuses calls for a service this daemon already forwarded; notes the list for the others."""

    def __init__(self, own_id: str) -> None:
        self._own_id = own_id

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        """The method's handler: refusing the call if it loops, else noting its chain."""
        handler = continuation(details)
        if handler is None:
            return None
        incoming = next((str(v) for k, v in details.invocation_metadata or () if k == VIA_KEY), "")
        if f"{self._own_id}/{_service_of(details.method)}" in incoming.split(","):
            return _refusal(handler, details.method)
        return _serving_with_chain(handler, incoming) if incoming else handler


def _refusal(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    message = (
        f"request loop: {method} came back to a daemon that had forwarded it; "
        f"that daemon's {_service_of(method)} backend address leads back to it"
    )

    def refuse(request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(grpc.StatusCode.FAILED_PRECONDITION, message)

    return replace_behaviour(handler, lambda _behaviour: refuse)


def _serving_with_chain(handler: grpc.RpcMethodHandler, chain: str) -> grpc.RpcMethodHandler:
    def wrap(behaviour: Callable[..., Any]) -> Callable[..., Any]:
        if handler.response_streaming:

            def streaming(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                # The generator runs later, on the same thread: keep the chain set while it does.
                _serving.chain = chain
                try:
                    yield from behaviour(request, context)
                finally:
                    _serving.chain = None

            return streaming

        def unary(request: Any, context: grpc.ServicerContext) -> Any:
            _serving.chain = chain
            try:
                return behaviour(request, context)
            finally:
                _serving.chain = None

        return unary

    return replace_behaviour(handler, wrap)
