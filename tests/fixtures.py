"""Shared test data (tvix castore/src/fixtures.rs and store/src/tests/fixtures.rs, spec §12)."""

from __future__ import annotations

from nix_compat.nixhash import CAHash, NixHash
from nix_compat.store_path import StorePath
from tvix_castore.digests import EMPTY_BLOB_DIGEST, B3Digest
from tvix_castore.directory import Directory
from tvix_castore.nodes import DirectoryNode, FileNode, SymlinkNode
from tvix_store.path_info import PathInfo

HELLOWORLD_BLOB_CONTENTS = b"Hello World!"
HELLOWORLD_BLOB_DIGEST = B3Digest.of(HELLOWORLD_BLOB_CONTENTS)
EMPTY_BLOB_CONTENTS = b""
DUMMY_DIGEST = B3Digest(bytes(32))
DUMMY_DIGEST_2 = B3Digest(b"\x10" + bytes(31))
BLOB_A = bytes([0, 1])
BLOB_A_DIGEST = B3Digest.of(BLOB_A)
BLOB_B = bytes(range(255)) * 4096  # 1,044,480 bytes
BLOB_B_DIGEST = B3Digest.of(BLOB_B)

DIRECTORY_WITH_KEEP = Directory({b".keep": FileNode(EMPTY_BLOB_DIGEST, 0)})
DIRECTORY_COMPLICATED = Directory(
    {
        b"keep": DIRECTORY_WITH_KEEP.as_node(),
        b".keep": FileNode(EMPTY_BLOB_DIGEST, 0),
        b"aa": SymlinkNode(b"/nix/store/somewhereelse"),
    }
)
DIRECTORY_A = Directory()
DIRECTORY_B = Directory({b"a": DIRECTORY_A.as_node()})
DIRECTORY_C = Directory({b"a": DIRECTORY_A.as_node(), b"a'": DIRECTORY_A.as_node()})
DIRECTORY_D = Directory({b"a": DIRECTORY_A.as_node(), b"b": DIRECTORY_B.as_node()})

CASTORE_NODE_SYMLINK = SymlinkNode(b"/nix/store/somewhereelse")
CASTORE_NODE_HELLOWORLD = FileNode(HELLOWORLD_BLOB_DIGEST, len(HELLOWORLD_BLOB_CONTENTS))
CASTORE_NODE_TOO_BIG = FileNode(HELLOWORLD_BLOB_DIGEST, 42)
CASTORE_NODE_TOO_SMALL = FileNode(HELLOWORLD_BLOB_DIGEST, 2)
CASTORE_NODE_COMPLICATED = DIRECTORY_COMPLICATED.as_node()

DUMMY_PATH_STR = "00000000000000000000000000000000-dummy"
DUMMY_PATH = StorePath.from_bytes(DUMMY_PATH_STR)
PATH_INFO = PathInfo(
    store_path=DUMMY_PATH,
    node=DirectoryNode(DUMMY_DIGEST, 0),
    references=(DUMMY_PATH,),
    nar_size=0,
    nar_sha256=bytes(32),
    ca=CAHash("nar", NixHash("sha256", bytes(32))),
)


def _s(b: bytes) -> bytes:
    """A NAR string: u64le length, bytes, zero padding to 8."""
    return len(b).to_bytes(8, "little") + b + bytes(-len(b) % 8)


def nar(*tokens: bytes) -> bytes:
    """Concatenate NAR strings."""
    return b"".join(_s(t) for t in tokens)


NAR_CONTENTS_SYMLINK = nar(
    b"nix-archive-1", b"(", b"type", b"symlink", b"target", b"/nix/store/somewhereelse", b")"
)
NAR_CONTENTS_HELLOWORLD = nar(
    b"nix-archive-1", b"(", b"type", b"regular", b"contents", b"Hello World!", b")"
)
NAR_CONTENTS_COMPLICATED = nar(
    b"nix-archive-1", b"(", b"type", b"directory",
    b"entry", b"(", b"name", b".keep", b"node", b"(", b"type", b"regular", b"contents", b"", b")", b")",
    b"entry", b"(", b"name", b"aa", b"node", b"(", b"type", b"symlink", b"target",
    b"/nix/store/somewhereelse", b")", b")",
    b"entry", b"(", b"name", b"keep", b"node", b"(", b"type", b"directory",
    b"entry", b"(", b"name", b".keep", b"node", b"(", b"type", b"regular", b"contents", b"", b")", b")",
    b")", b")",
    b")",
)
