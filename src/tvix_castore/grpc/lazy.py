"""Modules imported on first attribute access.

The gRPC clients send their writes (blob, Directory and PathInfo Puts) through our own HTTP/2
caller, so an ``import`` through a daemon needs neither grpcio nor protobuf. Importing them
(grpcio pulls in asyncio too) took ~70 ms of every such command's start-up; the clients name
them through ``LazyModule`` and pay only when a call really goes through grpcio.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

__all__ = ["LazyModule"]


class LazyModule:
    """Stands for the module name; imports it when an attribute is first read (thread-safe)."""

    __slots__ = ("_module", "_name")

    def __init__(self, name: str) -> None:
        self._name = name
        self._module: ModuleType | None = None

    def __getattr__(self, attr: str) -> Any:
        module = self._module
        if module is None:
            module = self._module = importlib.import_module(self._name)
        return getattr(module, attr)
