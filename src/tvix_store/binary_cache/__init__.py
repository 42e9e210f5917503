"""Nix binary caches, both ways: copying from one (``copy``) and serving the store as one (``server``).

``fetch`` is the small HTTP/``file://`` client with decompression, ``copy`` fetches narinfos and
NARs, verifies and ingests them, and ``server`` is the HTTP cache Nix substitutes from and uploads
to (tvix's nar-bridge). Errors extend the store tree::

    StorageError
     +-- BinaryCacheError        a cache answered badly or sent data that fails verification;
     |    |                      the message names the URL (and store path)
     |    +-- CacheUnavailable   (also an ``Unavailable``) the cache could not be reached, timed
     |                           out, or answered 502/503/504: a later try may work
"""

from __future__ import annotations

from tvix_castore.errors import StorageError, Unavailable

__all__ = ["BinaryCacheError", "CacheUnavailable"]


class BinaryCacheError(StorageError):
    """A binary cache could not be read, or what it sent failed verification; names the URL."""


class CacheUnavailable(BinaryCacheError, Unavailable):
    """A binary cache did not answer (unreachable, timed out, 502/503/504); names the URL."""
