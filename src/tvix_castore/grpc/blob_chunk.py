"""``tvix.castore.v1.BlobChunk`` on the wire without protobuf objects, for Read and Put.

A BlobChunk has one field, ``bytes data = 1``. Every byte of a blob read or written over gRPC
passes through one, so both ends skip the generated class: ``encode`` writes the tag and length
in front of the data (the one copy grpcio needs a ``bytes`` for), and ``data_view`` hands out the
data as a view into the received message. Messages of any other shape (fields we do not know,
a repeated data field) go through the generated code, so the meaning is always protobuf's.
"""

from __future__ import annotations

from tvix.castore.protos import rpc_blobstore_pb2 as pb

__all__ = ["data_view", "encode", "header"]

_TAG_DATA = 0x0A  # field 1, wire type 2 (length-delimited)


def header(size: int) -> bytes:
    """What precedes size bytes of data in a serialized BlobChunk (nothing when size is 0)."""
    if not size:
        return b""
    out = bytearray((_TAG_DATA,))
    while size >= 0x80:
        out.append((size & 0x7F) | 0x80)
        size >>= 7
    out.append(size)
    return bytes(out)


def encode(data: bytes | bytearray | memoryview) -> bytes:
    """The serialized BlobChunk carrying data (empty data: the empty message, as protobuf)."""
    return b"".join((header(len(data)), data))


def data_view(message: bytes) -> memoryview:
    """A BlobChunk's data as a view into the received message (no copy)."""
    view = memoryview(message)
    if not message:
        return view
    if message[0] == _TAG_DATA:
        length = 0
        shift = 0
        pos = 1
        while pos < len(message) and pos <= 10:
            b = message[pos]
            pos += 1
            length |= (b & 0x7F) << shift
            if b < 0x80:
                if pos + length == len(message):
                    return view[pos:]
                break
            shift += 7
    return memoryview(pb.BlobChunk.FromString(message).data)
