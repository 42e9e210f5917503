"""Files a binary cache keeps beside narinfos and NARs, as Nix uploads them.

NAR listings, build logs, debug info links and realisations (``nix_http.parse_cache_file_str``).

They are kept as they came: the body, with the Content-Type and Content-Encoding it was sent
with (Nix compresses logs and listings when asked to, ``log-compression`` and
``ls-compression``), and served back so under their names. Nothing in the store refers to
them, and they are not checked against it (Nix does not check them either when it reads them).

The names Nix uploaded NARs under are kept the same way, as aliases (``nar_alias``): Nix remembers
the narinfo it uploaded, with that name as its URL, and may ask for the NAR by it later.

``LmdbCacheFiles`` keeps them in the ``cachefiles`` table of the LMDB store the PathInfos are in,
so they last as long as the store; ``MemoryCacheFiles`` (any other store) in memory, up to
``MEMORY_BYTES``, the oldest dropped first. ``cache_files_for`` picks one for a path-info
service; its caller owns it.
"""

from __future__ import annotations

import abc
import struct
import threading
from collections import OrderedDict
from typing import cast, final

import lmdb
from google.protobuf.message import DecodeError

from tvix.castore.protos import castore_pb2
from tvix_castore._lmdb_env import StoreUse, explain
from tvix_castore.errors import ClosedError, DataCorruption, StorageError, StoreError
from tvix_castore.frozen import Frozen
from tvix_castore.nodes import Node
from tvix_castore.proto_conv import anonymous_node_from_proto, node_to_proto

__all__ = [
    "MAX_FILE_BYTES",
    "MAX_NAME_BYTES",
    "MEMORY_BYTES",
    "NAR_ALIAS_TYPE",
    "CacheFile",
    "CacheFiles",
    "LmdbCacheFiles",
    "MemoryCacheFiles",
    "cache_files_for",
    "nar_alias",
    "read_nar_alias",
]

MAX_FILE_BYTES = 64 * 1024 * 1024
"""The largest file taken (a build log of a big build; a listing of a tree of ~10^5 files)."""
MAX_NAME_BYTES = 511
"""The longest name (LMDB's limit for a key)."""
MEMORY_BYTES = 256 * 1024 * 1024
"""What ``MemoryCacheFiles`` holds at most."""

NAR_ALIAS_TYPE = "application/x-tvix-nar-alias"
"""The Content-Type that marks a NAR alias's record (never served as it is)."""
_ALIAS = struct.Struct("<B32sQ")  # length of the compression's name, NAR SHA-256, NAR size

_TABLE = "cachefiles"
# Value: lengths of the Content-Type and Content-Encoding, both, then the body.
_HEADER = struct.Struct("<HH")


class CacheFile(Frozen):
    """One file: its name in the cache (no leading ``/``), how it was sent, its bytes."""

    __slots__ = ("content_encoding", "content_type", "data", "name")
    name: str
    content_type: str
    content_encoding: str
    data: bytes

    def __init__(self, name: str, content_type: str, content_encoding: str, data: bytes) -> None:
        if not 0 < len(name.encode()) <= MAX_NAME_BYTES:
            raise ValueError(f"{name[:80]!r}: a name of 1 to {MAX_NAME_BYTES} bytes is needed")
        for what, header in (("Content-Type", content_type), ("Content-Encoding", content_encoding)):
            if not header.isascii() or not header.isprintable() or len(header) > 0xFFFF:
                raise ValueError(f"{name}: unusable {what} {header!r}")
        if len(data) > MAX_FILE_BYTES:
            raise ValueError(f"{name}: {len(data)} bytes, more than {MAX_FILE_BYTES}")
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "content_type", content_type)
        object.__setattr__(self, "content_encoding", content_encoding)
        object.__setattr__(self, "data", bytes(data))


class CacheFiles(abc.ABC):
    """Cache files by name; thread-safe."""

    @abc.abstractmethod
    def get(self, name: str) -> CacheFile | None:
        """The file of that name, or None."""

    @abc.abstractmethod
    def put(self, file: CacheFile) -> None:
        """Keep file, in place of any of the same name (Nix uploads a file again as it likes)."""

    def close(self) -> None:
        """Release resources."""


@final
class MemoryCacheFiles(CacheFiles):
    """An insertion-ordered dict, bounded by the bytes it holds."""

    def __init__(self, capacity: int = MEMORY_BYTES) -> None:
        self._capacity = capacity
        self._lock = threading.Lock()
        self._files: OrderedDict[str, CacheFile] = OrderedDict()
        self._bytes = 0

    def get(self, name: str) -> CacheFile | None:
        """The file of that name, or None."""
        with self._lock:
            return self._files.get(name)

    def put(self, file: CacheFile) -> None:
        """Keep file; the oldest files go when the capacity is exceeded."""
        with self._lock:
            old = self._files.pop(file.name, None)
            if old is not None:
                self._bytes -= len(old.data)
            self._files[file.name] = file
            self._bytes += len(file.data)
            while self._bytes > self._capacity and len(self._files) > 1:
                _, dropped = self._files.popitem(last=False)
                self._bytes -= len(dropped.data)


@final
class LmdbCacheFiles(StoreUse, CacheFiles):
    """The ``cachefiles`` table of the LMDB store in a directory."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        assert self._store is not None
        # None: a store from before this table, opened read-only (it holds no files then).
        self._db = cast("lmdb._Database | None", self._store.tables.get(_TABLE))

    def get(self, name: str) -> CacheFile | None:
        """The file of that name, or None."""
        if self._db is None:
            return None
        try:
            with self._env.begin(db=self._db) as txn:
                value = txn.get(name.encode())
        except lmdb.Error as exc:
            raise StorageError(f"LMDB cache files at {self._path}: get: {explain(self._path, exc)}") from exc
        if value is None:
            return None
        if len(value) < _HEADER.size:
            raise DataCorruption(f"cache file {name} in {self._path}: a value of {len(value)} bytes")
        type_len, encoding_len = _HEADER.unpack_from(value)
        body = _HEADER.size + type_len + encoding_len
        if body > len(value):
            raise DataCorruption(f"cache file {name} in {self._path}: headers past the value's end")
        try:
            return CacheFile(
                name,
                value[_HEADER.size : _HEADER.size + type_len].decode("ascii"),
                value[_HEADER.size + type_len : body].decode("ascii"),
                value[body:],
            )
        except (UnicodeDecodeError, ValueError) as exc:
            raise DataCorruption(f"cache file {name} in {self._path}: {exc}") from exc

    def put(self, file: CacheFile) -> None:
        """Keep file (durably: Nix takes the upload's 200 as the file being stored)."""
        store = self._store
        if store is None:
            raise ClosedError("LMDB cache files are closed")
        if self._db is None:
            raise StorageError(f"LMDB cache files at {self._path}: the store is read-only")
        content_type, encoding = file.content_type.encode(), file.content_encoding.encode()
        value = _HEADER.pack(len(content_type), len(encoding)) + content_type + encoding + file.data
        try:
            store.put(_TABLE, [(file.name.encode(), value)], overwrite=True, durable=True)
        except lmdb.Error as exc:
            raise StorageError(f"LMDB cache files at {self._path}: put: {explain(self._path, exc)}") from exc


def nar_alias(name: str, compression: str, node: Node, nar_size: int, nar_sha256: bytes) -> CacheFile:
    """The record that the NAR of node (so compressed) was uploaded as name (``nar/…``)."""
    raw = node_to_proto(b"", node).SerializeToString(deterministic=True)
    head = _ALIAS.pack(len(compression), nar_sha256, nar_size)
    return CacheFile(name, NAR_ALIAS_TYPE, "", head + compression.encode() + raw)


def read_nar_alias(file: CacheFile | None) -> tuple[str, Node, int, bytes] | None:
    """(compression, node, nar_size, nar_sha256) of a NAR alias; None for anything else."""
    if file is None or file.content_type != NAR_ALIAS_TYPE or len(file.data) < _ALIAS.size:
        return None
    length, nar_sha256, nar_size = _ALIAS.unpack_from(file.data)
    start = _ALIAS.size + length
    try:
        compression = file.data[_ALIAS.size : start].decode("ascii")
        node = anonymous_node_from_proto(castore_pb2.Node.FromString(file.data[start:]))
    except (UnicodeDecodeError, DecodeError, StoreError) as exc:
        raise DataCorruption(f"NAR alias {file.name}: {exc}") from exc
    return compression, node, nar_size, bytes(nar_sha256)


def cache_files_for(path_info_service: object) -> CacheFiles:
    """Cache files for a path-info service's store; the caller owns (and closes) them.

    In the LMDB store of the path-info service (or of its near side, for ``cache://``), else in
    memory.
    """
    from tvix_store.pathinfoservice.lmdb_store import LmdbPathInfoService

    service = getattr(path_info_service, "near", path_info_service)
    if isinstance(service, LmdbPathInfoService) and service.path:
        return LmdbCacheFiles(service.path)
    return MemoryCacheFiles()
