"""The store's error tree; foreign errors are translated into it at each shell's edge.

Tree::

    StoreError                   base of everything the services raise on purpose
     +-- InvalidRequest          the caller's fault: bad digest length, invalid PathInfo, bad URL
     +-- StorageError            a backend failed (``__cause__`` keeps the original exception)
     |    +-- DataCorruption     stored or received bytes do not hash to their digest
     |    +-- Unavailable        a remote backend is down, unreachable or timed out: retry later
     +-- ValidationError         data that breaks a rule of the data model
     |    +-- DirectoryError     unsorted/duplicate names, bad child, size overflow
     |    +-- NodeError          a node with a bad digest length, name or symlink target
     +-- ClosedError             you used a reader or writer after closing it yourself
     +-- IngestionError          a tree that cannot be ingested (unsupported file type, unreadable
                                 file, file changed while read); the message names the path

Absence is never an error: lookups return ``None``.
"""

from __future__ import annotations


class StoreError(Exception):
    """Base class for errors the store raises on purpose."""


class InvalidRequest(StoreError):
    """The request is malformed: the caller's fault, not the backend's."""


class StorageError(StoreError):
    """A backend failed to store or fetch something; see ``__cause__``."""


class DataCorruption(StorageError):
    """Bytes did not hash to the digest they were stored or requested under."""


class Unavailable(StorageError):
    """A remote backend did not answer (down, restarting, unreachable, timed out); a later try may work."""


class ValidationError(StoreError, ValueError):
    """Data that breaks a rule of the castore data model."""


class DirectoryError(ValidationError):
    """A Directory that breaks a rule (ordering, duplicates, children, size)."""


class NodeError(ValidationError):
    """A node with a bad digest length, name or symlink target."""


class ClosedError(StoreError):
    """A reader or writer was used after it was closed."""


class IngestionError(StoreError):
    """A filesystem tree that cannot be ingested; the message names the offending path."""
