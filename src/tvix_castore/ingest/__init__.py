"""Ingestion into castore (tvix ``castore/src/import``; ``import`` is a Python keyword).

``entries`` turns a leaves-first stream of ``IngestionEntry`` values into uploaded Directories
and a root node; ``fs`` produces such a stream from a filesystem path, uploading file contents
as blobs on the way. Producers of other formats (the store layer's NAR ingester) reuse
``ingest_entries``.
"""

from __future__ import annotations

from tvix_castore.ingest.entries import (
    DirectoryEntry,
    EntryPath,
    IngestionEntry,
    RegularEntry,
    SymlinkEntry,
    format_path,
    ingest_entries,
)
from tvix_castore.ingest.fs import IngestObserver, ingest_path, walk_path

__all__ = [
    "DirectoryEntry",
    "EntryPath",
    "IngestObserver",
    "IngestionEntry",
    "RegularEntry",
    "SymlinkEntry",
    "format_path",
    "ingest_entries",
    "ingest_path",
    "walk_path",
]
