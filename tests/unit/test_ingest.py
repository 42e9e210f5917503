"""castore ingestion: ingest_entries and the filesystem walker (tvix castore import tests)."""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from fixtures import CASTORE_NODE_COMPLICATED, DIRECTORY_COMPLICATED, DIRECTORY_WITH_KEEP
from store_services import LOCAL_KINDS, local_services

from tvix_castore.digests import EMPTY_BLOB_DIGEST, B3Digest
from tvix_castore.directory import Directory
from tvix_castore.errors import IngestionError, InvalidRequest, NodeError
from tvix_castore.ingest import (
    DirectoryEntry,
    EntryPath,
    IngestObserver,
    RegularEntry,
    SymlinkEntry,
    ingest_entries,
    ingest_path,
)
from tvix_castore.nodes import DirectoryNode, FileNode, SymlinkNode
from tvix_store.services import Services


@pytest.fixture(params=LOCAL_KINDS)
def services(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Services]:
    with local_services(request.param, tmp_path) as s:
        yield s


def test_ingest_entries_complicated(services: Services) -> None:
    """Leaves-first entries of the complicated tree give its node and both Directories."""
    entries = [
        RegularEntry((b".keep",), EMPTY_BLOB_DIGEST, 0, False),
        SymlinkEntry((b"aa",), b"/nix/store/somewhereelse"),
        RegularEntry((b"keep", b".keep"), EMPTY_BLOB_DIGEST, 0, False),
        DirectoryEntry((b"keep",)),
        DirectoryEntry(()),
    ]
    root = ingest_entries(services.directory_service, entries)
    assert root == CASTORE_NODE_COMPLICATED
    assert list(services.directory_service.get_recursive(root.digest)) == [
        DIRECTORY_COMPLICATED,
        DIRECTORY_WITH_KEEP,
    ]


def test_ingest_entries_single_file() -> None:
    """A file root needs no Directory at all (no putter session is started)."""

    class NoDirectories:
        def put_multiple_start(self) -> None:
            raise AssertionError("no directory expected")

    digest = B3Digest.of(b"x")
    root = ingest_entries(NoDirectories(), [RegularEntry((), digest, 1, True)])  # type: ignore[arg-type]
    assert root == FileNode(digest, 1, True)


def test_ingest_entries_errors(services: Services) -> None:
    """No root, an entry after the root, and a bad symlink target are rejected."""
    with pytest.raises(InvalidRequest, match="without a root"):
        ingest_entries(services.directory_service, [SymlinkEntry((b"a",), b"x")])
    with pytest.raises(InvalidRequest, match="after the root"):
        ingest_entries(services.directory_service, [DirectoryEntry(()), SymlinkEntry((b"a",), b"x")])
    with pytest.raises(NodeError, match="'a/b'"):
        ingest_entries(services.directory_service, [SymlinkEntry((b"a", b"b"), b"")])


class Recorder(IngestObserver):
    """Records the pre-order callbacks; reads only half of each file's contents itself."""

    def __init__(self) -> None:
        self.events: list[tuple[object, ...]] = []

    def directory_start(self, path: EntryPath) -> None:
        self.events.append(("dir", path))

    def directory_end(self, path: EntryPath) -> None:
        self.events.append(("end", path))

    def symlink(self, path: EntryPath, target: bytes) -> None:
        self.events.append(("sym", path, target))

    def file(self, path: EntryPath, executable: bool, size: int, contents: Iterator[bytes]) -> None:
        first = next(contents, b"")
        self.events.append(("file", path, executable, size, first[:4]))


def test_walk_tree(services: Services, tmp_path: Path) -> None:
    """Names sorted bytewise, exec bit, symlinks not followed, empty dir/file, odd names."""
    root = tmp_path / "tree"
    (root / "sub" / "empty").mkdir(parents=True)
    (root / "B").write_bytes(b"big" * 500_000)
    (root / "a").write_bytes(b"")
    (root / "sub" / "x").write_bytes(b"#!")
    os.chmod(root / "sub" / "x", 0o755)
    os.symlink("../nowhere", root / "sub" / "dangling")
    odd = os.fsencode(root) + b"/\xff new\nline"
    with open(odd, "wb") as f:
        f.write(b"odd")
    rec = Recorder()
    node = ingest_path(services.blob_service, services.directory_service, str(root), rec)
    assert rec.events == [
        ("dir", ()),
        ("file", (b"B",), False, 1_500_000, b"bigb"),
        ("file", (b"a",), False, 0, b""),
        ("dir", (b"sub",)),
        ("sym", (b"sub", b"dangling"), b"../nowhere"),
        ("dir", (b"sub", b"empty")),
        ("end", (b"sub", b"empty")),
        ("file", (b"sub", b"x"), True, 2, b"#!"),
        ("end", (b"sub",)),
        ("file", (b"\xff new\nline",), False, 3, b"odd"),
        ("end", ()),
    ]
    assert isinstance(node, DirectoryNode)
    top = services.directory_service.get(node.digest)
    assert top is not None
    big = top.get(b"B")
    assert isinstance(big, FileNode)
    # The walker uploads what the observer left unread.
    reader = services.blob_service.open_read(big.digest)
    assert reader is not None
    assert reader.read() == b"big" * 500_000
    sub = top.get(b"sub")
    assert isinstance(sub, DirectoryNode)
    sub_dir = services.directory_service.get(sub.digest)
    assert sub_dir is not None
    assert sub_dir.get(b"dangling") == SymlinkNode(b"../nowhere")
    assert sub_dir.get(b"empty") == Directory().as_node()


def test_walk_symlink_root(services: Services, tmp_path: Path) -> None:
    """A symlink given as the root is ingested as a symlink, not followed."""
    os.symlink("/etc/passwd", tmp_path / "link")
    node = ingest_path(services.blob_service, services.directory_service, str(tmp_path / "link"))
    assert node == SymlinkNode(b"/etc/passwd")


def test_walk_missing(services: Services, tmp_path: Path) -> None:
    """A missing root names the path."""
    with pytest.raises(IngestionError, match=r"nope.*no such file"):
        ingest_path(services.blob_service, services.directory_service, str(tmp_path / "nope"))


@pytest.mark.parametrize("kind", ["fifo", "socket", "device"])
def test_walk_unsupported_types(services: Services, tmp_path: Path, kind: str) -> None:
    """Sockets, FIFOs and devices inside a tree are refused, naming the path and the type."""
    root = tmp_path / "tree"
    root.mkdir()
    (root / "ok").write_bytes(b"fine")
    target = root / "special"
    if kind == "fifo":
        os.mkfifo(target)
        expected = "FIFO"
    elif kind == "socket":
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(target))
        sock.close()
        expected = "socket"
    else:
        os.mknod(target, 0o600 | stat.S_IFCHR, os.makedev(1, 3))
        expected = "character device"
    with pytest.raises(IngestionError, match=rf"tree/special.*unsupported file type \({expected}\)"):
        ingest_path(services.blob_service, services.directory_service, str(root))
