"""Leaf entries held back while the contents of small files collect for one ``put_many``.

Shared by the ingesters (``fs.walk_path``, the store layer's NAR ingestion): a commit per
small file costs more than storing its bytes (with the LMDB store, a disk flush each), so
files below ``SMALL_FILE`` are read whole and stored in batches, their entries released in
order once the batch is stored.
"""

from __future__ import annotations

from collections.abc import Iterator

from tvix_castore.blobservice import BlobService
from tvix_castore.ingest.entries import EntryPath, IngestionEntry, RegularEntry

__all__ = ["BATCH_BYTES", "BATCH_ENTRIES", "BATCH_NAMES", "SMALL_FILE", "SmallFileBatch"]

# Files below this size are stored in batches through ``put_many``: the LMDB store commits a
# batch, chunked files included, in one transaction.
SMALL_FILE = 1 << 20
# A batch is stored once it holds this many bytes of small files, this many entries, or
# entries whose paths hold this many names in all (a tree 2048 deep has paths that long).
BATCH_BYTES = 4 * 1024 * 1024
BATCH_ENTRIES = 1024
BATCH_NAMES = 64 * 1024


class SmallFileBatch:
    """Entries held back while the contents of small files collect for one ``put_many``.

    A commit per small file costs more than storing its bytes; batching them amortises that.
    Entries of every kind queue here in walk order and are released once the batch is stored,
    so no entry is ever yielded before the blob it names.
    """

    def __init__(self, blob_service: BlobService) -> None:
        self._blob_service = blob_service
        # A RegularEntry whose digest is not known yet is (path, size, executable, batch index).
        self._entries: list[IngestionEntry | tuple[EntryPath, int, bool, int]] = []
        self._contents: list[bytes] = []
        self._bytes = 0
        self._names = 0

    def add_entry(self, entry: IngestionEntry) -> None:
        """Queue an entry whose blob (if any) is stored already."""
        self._entries.append(entry)
        self._names += len(entry.path)

    def add_file(self, path: EntryPath, size: int, executable: bool, contents: bytes) -> None:
        """Queue a small file; its blob is stored with the batch."""
        self._entries.append((path, size, executable, len(self._contents)))
        self._contents.append(contents)
        self._bytes += len(contents)
        self._names += len(path)

    def full(self) -> bool:
        """Whether the batch should be stored now."""
        return self._bytes >= BATCH_BYTES or len(self._entries) >= BATCH_ENTRIES or self._names >= BATCH_NAMES

    def flush(self) -> Iterator[IngestionEntry]:
        """Store the batch's files; then its entries, in the order they came."""
        digests = self._blob_service.put_many(self._contents) if self._contents else []
        entries = self._entries
        self._entries = []
        self._contents = []
        self._bytes = 0
        self._names = 0
        for entry in entries:
            if isinstance(entry, tuple):
                path, size, executable, index = entry
                yield RegularEntry(path, digests[index], size, executable)
            else:
                yield entry
