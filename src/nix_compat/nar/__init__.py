"""The NAR (Nix ARchive) format: a validating pull reader and a streaming push writer.

Byte format and rules: spec §6.1. ``wire`` holds the encoding primitives, ``events`` what the
reader yields, ``writer``/``reader`` the two directions. No IO here beyond the given callables.
"""

from __future__ import annotations

from nix_compat.errors import NarError
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
