"""The NAR (Nix ARchive) format: a validating pull reader and a streaming push writer.

Byte format and rules: spec §6.1. ``wire`` holds the encoding primitives, ``events`` what the
reader yields, ``writer``/``reader`` the two directions. No IO here beyond the given callables.

The names below are loaded on first use (PEP 562): a command that only writes NARs (``nar``,
``import``) then never imports the reader and its event classes, which is measurable at start-up.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from nix_compat.errors import NarError

if TYPE_CHECKING:
    from nix_compat.nar.events import DirectoryEnd, DirectoryStart, Entry, File, NarEvent, Symlink
    from nix_compat.nar.reader import NarReader
    from nix_compat.nar.writer import NarWriter

__all__ = [
    "DirectoryEnd",
    "DirectoryStart",
    "Entry",
    "File",
    "NarError",
    "NarEvent",
    "NarReader",
    "NarWriter",
    "Symlink",
]

_LAZY = {
    "DirectoryEnd": "events",
    "DirectoryStart": "events",
    "Entry": "events",
    "File": "events",
    "NarEvent": "events",
    "Symlink": "events",
    "NarReader": "reader",
    "NarWriter": "writer",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
