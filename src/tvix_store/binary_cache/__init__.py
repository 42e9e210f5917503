"""Nix binary caches, both ways: copying from one (``copy``) and serving the store as one (``server``).

``fetch`` is the small HTTP/``file://`` client with decompression, ``copy`` fetches narinfos and
NARs, verifies and ingests them, and ``server`` is the HTTP cache Nix substitutes from and uploads
to (tvix's nar-bridge). Errors extend the store tree::

    StorageError
     +-- BinaryCacheError        a cache answered badly or sent data that fails verification;
                                 the message names the URL (and store path)
"""

from __future__ import annotations

from tvix_castore.errors import StorageError

__all__ = ["BinaryCacheError"]


class BinaryCacheError(StorageError):
    """A binary cache could not be read, or what it sent failed verification; names the URL."""
