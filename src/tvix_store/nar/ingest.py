"""NAR ingestion: a NAR stream -> blobs, Directories and a root node (tvix ``store/src/nar/import.rs``).

Shell connecting the pure ``NarReader`` to the services: every byte the reader consumes is
SHA-256-hashed and counted, file contents are stored as blobs (small files in batches, as the
filesystem walker stores them; bigger ones streamed into ``BlobService.open_write()``), and the
nodes are handed leaves first to castore's ``ingest_entries``, which uploads the Directories in
one putter session. The reader stops right after the root node; what follows is not read.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator

from nix_compat.nar import DirectoryEnd, DirectoryStart, Entry, File, NarReader, Symlink
from tvix_castore.blobservice import BlobService
from tvix_castore.directoryservice import DirectoryService
from tvix_castore.ingest.batch import SMALL_FILE, SmallFileBatch
from tvix_castore.ingest.entries import (
    DirectoryEntry,
    EntryPath,
    IngestionEntry,
    RegularEntry,
    SymlinkEntry,
    ingest_entries,
)
from tvix_castore.nodes import Node

__all__ = ["ingest_nar"]

READ_CHUNK = 1 << 20

Read = Callable[[int], bytes]


def ingest_nar(
    blob_service: BlobService,
    directory_service: DirectoryService,
    read: Read,
    on_file: Callable[[int], object] | None = None,
) -> tuple[Node, bytes, int]:
    """Parse a NAR from read, store its contents, and return (root node, nar_sha256, nar_size).

    read(n) returns up to n bytes, b"" at the end of input. on_file, if given, is called with
    each file's size once it is stored (for progress reporting).

    Raises:
        NarError: the NAR is malformed or truncated (the message names the offset and entry).

    """
    sha = hashlib.sha256()
    update = sha.update

    def hashing_read(n: int) -> bytes:
        data = read(n)
        update(data)
        return data

    reader = NarReader(hashing_read)
    root = ingest_entries(directory_service, _entries(reader, blob_service, on_file))
    return root, sha.digest(), reader.bytes_read


def _entries(
    reader: NarReader, blob_service: BlobService, on_file: Callable[[int], object] | None
) -> Iterator[IngestionEntry]:
    """Translate the reader's pre-order events into leaves-first entries."""
    batch = SmallFileBatch(blob_service)
    # The names of the open directories below the root, outermost first: each entry's path is
    # made from them as it comes, so a tree n deep holds n names, not n paths of up to n names.
    open_names: list[bytes] = []
    path: EntryPath = ()
    for event in reader:
        if isinstance(event, Entry):
            path = (*open_names, event.name)
        elif isinstance(event, File):
            if event.size < SMALL_FILE:
                contents = b"".join(reader.file_contents(READ_CHUNK))
                batch.add_file(path, event.size, event.executable, contents)
            else:
                with blob_service.open_write() as writer:
                    for data in reader.file_contents(READ_CHUNK):
                        writer.write(data)
                    digest = writer.close()
                batch.add_entry(RegularEntry(path, digest, event.size, event.executable))
            if on_file is not None:
                on_file(event.size)
        elif isinstance(event, Symlink):
            batch.add_entry(SymlinkEntry(path, event.target))
        elif isinstance(event, DirectoryStart):
            if path:  # not the root: the entry just read is this directory
                open_names.append(path[-1])
        elif isinstance(event, DirectoryEnd):
            batch.add_entry(DirectoryEntry(tuple(open_names)))
            if open_names:
                open_names.pop()
        if batch.full():
            yield from batch.flush()
    yield from batch.flush()
