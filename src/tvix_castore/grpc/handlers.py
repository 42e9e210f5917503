"""Rewrapping a grpcio method handler's behaviour, for the daemon's server interceptors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

__all__ = ["replace_behaviour"]


def replace_behaviour(
    handler: grpc.RpcMethodHandler, wrap: Callable[[Callable[..., Any]], Callable[..., Any]]
) -> grpc.RpcMethodHandler:
    """The handler with its one behaviour (whichever of the four it has) passed through wrap."""
    for field in ("unary_unary", "unary_stream", "stream_unary", "stream_stream"):
        behaviour = getattr(handler, field)
        if behaviour is not None:
            return handler._replace(**{field: wrap(behaviour)})
    return handler
