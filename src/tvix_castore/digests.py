"""BLAKE3 digests: the identity of blobs and directories."""

from __future__ import annotations

import base64

import blake3

from tvix_castore.errors import NodeError

B3_LEN = 32


class B3Digest(bytes):
    """A 32-byte BLAKE3-256 digest; ``str()`` gives tvix's ``b3:<base64>`` form."""

    __slots__ = ()

    def __new__(cls, value: bytes | bytearray | memoryview) -> B3Digest:  # noqa: D102
        if len(value) != B3_LEN:
            raise NodeError(f"invalid digest length: {len(value)}")
        return super().__new__(cls, value)

    @classmethod
    def of(cls, data: bytes | bytearray | memoryview) -> B3Digest:
        """BLAKE3 of data (multi-threaded for large inputs)."""
        return cls(blake3_digest(data))

    def __str__(self) -> str:
        return "b3:" + base64.b64encode(self).decode()

    def __repr__(self) -> str:
        return f"B3Digest({self})"

    @classmethod
    def parse(cls, text: str) -> B3Digest:
        """Parse ``b3:<base64>`` or 64 hex characters."""
        if text.startswith("b3:"):
            return cls(base64.b64decode(text[3:], validate=True))
        return cls(bytes.fromhex(text))


PARALLEL_ABOVE = 1 << 20
"""From this size an input is hashed on several threads. Importing keeps the cores busy anyway
(reading, chunking, the NAR's SHA-256 on another thread): smaller inputs gain nothing there."""


def blake3_digest(data: bytes | bytearray | memoryview) -> bytes:
    """Raw BLAKE3-256 of data; on several threads from PARALLEL_ABOVE bytes."""
    if len(data) >= PARALLEL_ABOVE:
        return blake3.blake3(data, max_threads=blake3.blake3.AUTO).digest()
    return blake3.blake3(data).digest()


EMPTY_BLOB_DIGEST = B3Digest(blake3.blake3(b"").digest())
