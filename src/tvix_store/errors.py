"""Errors of the store layer, extending the castore tree (see ``tvix_castore.errors``).

Tree additions::

    StoreError
     +-- ValidationError
     |    +-- PathInfoError      a PathInfo breaking a rule of spec §4.3
     +-- ImportError_           a path that cannot be imported (missing, unsupported file type)
     +-- NarRenderError         a node whose NAR cannot be rendered (missing blob or directory,
                                blob length differing from the FileNode size)
     +-- Abandoned              work given up because its caller stopped waiting for it
"""

from __future__ import annotations

from tvix_castore.errors import StoreError, ValidationError


class PathInfoError(ValidationError):
    """A PathInfo that breaks a rule of spec §4.3; the message says which."""


class ImportError_(StoreError):
    """A filesystem path or NAR that cannot be ingested; the message names the culprit."""


class NarRenderError(StoreError):
    """A node whose NAR cannot be rendered; the message names the digest and the entry."""


class Abandoned(StoreError):
    """Work given up because its caller stopped waiting: nobody would read the result.

    A gRPC client that cancelled, or whose deadline passed.
    """
