"""The single table between the store's error tree and gRPC status codes, used both ways.

Servers turn a StoreError into ``(code, message)`` with ``status_of``; clients turn a received
``grpc.RpcError`` into a StoreError with ``error_of``, inside ``translate_rpc_errors``. NOT_FOUND
is not in the table: absence is ``None``, and each client checks for it before translating.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

import grpc

from tvix_castore.errors import (
    ClosedError,
    DataCorruption,
    DirectoryError,
    IngestionError,
    InvalidRequest,
    NodeError,
    StorageError,
    StoreError,
    Unavailable,
    ValidationError,
)

__all__ = [
    "ERROR_TO_STATUS",
    "abort",
    "abort_with",
    "error_of",
    "rpc_code",
    "status_of",
    "stream_was_cancelled",
    "translate_rpc_errors",
    "unless_unavailable",
    "worth_a_warning",
]

# Most specific first: the first entry the exception is an instance of wins (server side).
ERROR_TO_STATUS: tuple[tuple[type[StoreError], grpc.StatusCode], ...] = (
    (InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (DataCorruption, grpc.StatusCode.DATA_LOSS),
    # Passed on as it came: a client of a daemon whose own backend is down may retry, and
    # must not take it for lost data.
    (Unavailable, grpc.StatusCode.UNAVAILABLE),
    (StorageError, grpc.StatusCode.DATA_LOSS),
    (DirectoryError, grpc.StatusCode.INVALID_ARGUMENT),
    (NodeError, grpc.StatusCode.INVALID_ARGUMENT),
    (ValidationError, grpc.StatusCode.INVALID_ARGUMENT),
    (IngestionError, grpc.StatusCode.INVALID_ARGUMENT),
    (ClosedError, grpc.StatusCode.FAILED_PRECONDITION),
    (StoreError, grpc.StatusCode.INTERNAL),
)

# Client side: what a status received from a server means for our callers. Anything not listed
# (INTERNAL, UNKNOWN, RESOURCE_EXHAUSTED, …) is the remote backend failing, a StorageError.
STATUS_TO_ERROR: dict[grpc.StatusCode, type[StoreError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequest,
    grpc.StatusCode.UNIMPLEMENTED: InvalidRequest,
    grpc.StatusCode.OUT_OF_RANGE: InvalidRequest,
    grpc.StatusCode.DATA_LOSS: StorageError,
    grpc.StatusCode.FAILED_PRECONDITION: StorageError,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: Unavailable,
}


def status_of(exc: StoreError) -> tuple[grpc.StatusCode, str]:
    """The status code and message a server answers for exc (tvix's ``From<Error> for Status``)."""
    for klass, code in ERROR_TO_STATUS:
        if isinstance(exc, klass):
            if isinstance(exc, StorageError):
                return code, f"storage error: {exc}"
            return code, str(exc)
    raise AssertionError("unreachable: StoreError is the last table entry")


def worth_a_warning(exc: StoreError) -> bool:
    """Whether a server should log exc: its own storage failed (a full disk, damaged data).

    Not the client's fault (a refused request), not a backend that is down (``Unavailable``,
    which would log once per call while it lasts), not a shutdown (``ClosedError``).
    """
    return isinstance(exc, StorageError) and not isinstance(exc, Unavailable)


def unless_unavailable(exc: StoreError, code: grpc.StatusCode) -> grpc.StatusCode:
    """code, or UNAVAILABLE when exc is a remote backend that did not answer (worth a retry).

    For the answers whose code is fixed by tvix's text (INTERNAL "error copying: …", DATA_LOSS
    "…failed rendering nar…") but whose cause may be a backend that is down.
    """
    return grpc.StatusCode.UNAVAILABLE if isinstance(exc, Unavailable) else code


def rpc_code(exc: grpc.RpcError) -> grpc.StatusCode | None:
    """The status code of a failed call (None if the error carries none)."""
    code = getattr(exc, "code", None)
    return code() if callable(code) else None


def _details(exc: grpc.RpcError) -> str:
    details = getattr(exc, "details", None)
    text = details() if callable(details) else None
    return text or str(exc)


def error_of(exc: grpc.RpcError, what: str) -> StoreError:
    """The StoreError a client raises for a failed call; what names the operation."""
    code = rpc_code(exc)
    klass = STATUS_TO_ERROR.get(code, StorageError) if code is not None else StorageError
    name = code.name if code is not None else "UNKNOWN"
    details = _details(exc)
    if code is grpc.StatusCode.CANCELLED and details.upper() == "CANCELLED":
        # Not the client's doing (a call it cancels raises nothing it reports): the server reset
        # the stream, as a daemon ending its calls on a second stop signal does.
        details = "the server cancelled the call (is it stopping?)"
    return klass(f"{what}: {name}: {details}")


@contextmanager
def translate_rpc_errors(what: str) -> Iterator[None]:
    """Turn any grpc.RpcError raised inside into the matching StoreError, ``from`` it."""
    try:
        yield
    except grpc.RpcError as exc:
        raise error_of(exc, what) from exc


def abort(context: grpc.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    """End the call with code and message (``context.abort`` raises; typed here as such)."""
    context.abort(code, message)
    raise AssertionError("context.abort returned")


def abort_with(context: grpc.ServicerContext, exc: StoreError) -> NoReturn:
    """End the call with the status the table gives for exc."""
    code, message = status_of(exc)
    abort(context, code, message)


# How long a server waits, after a client stream ended, for a cancellation to show. grpcio
# reports a client's RST_STREAM to the handler first as a plain end of stream, and the
# cancellation itself a moment later; committing in between would store a truncated upload.
_CANCEL_SETTLE = 0.005


def stream_was_cancelled(context: grpc.ServicerContext, settle: bool) -> bool:
    """Whether the client cancelled the call whose request stream just ended.

    With settle, wait a few milliseconds for a late cancellation (see ``_CANCEL_SETTLE``)
    before answering no; used before committing uploads that a truncation would corrupt.
    """
    if not context.is_active():
        return True
    if not settle:
        return False
    done = threading.Event()
    if not context.add_callback(done.set):
        return True  # already terminated
    done.wait(_CANCEL_SETTLE)
    return not context.is_active()
