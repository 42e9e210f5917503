"""NAR rendering and calculation (spec §6.2, §12.3 table), against every local backend."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from fixtures import (
    CASTORE_NODE_COMPLICATED,
    CASTORE_NODE_HELLOWORLD,
    CASTORE_NODE_SYMLINK,
    CASTORE_NODE_TOO_BIG,
    CASTORE_NODE_TOO_SMALL,
    DIRECTORY_COMPLICATED,
    DIRECTORY_WITH_KEEP,
    HELLOWORLD_BLOB_CONTENTS,
    NAR_CONTENTS_COMPLICATED,
    NAR_CONTENTS_HELLOWORLD,
    NAR_CONTENTS_SYMLINK,
)
from store_services import LOCAL_KINDS, local_services

from tvix_castore.digests import B3Digest
from tvix_castore.directory import Directory
from tvix_castore.errors import StorageError
from tvix_castore.nodes import DirectoryNode, FileNode, Node
from tvix_store.errors import NarRenderError
from tvix_store.nar.calculation import LocalNarCalculationService, nar_size
from tvix_store.nar.renderer import write_nar
from tvix_store.nar_cache import MemoryNarCache
from tvix_store.services import Services


@pytest.fixture(params=LOCAL_KINDS)
def services(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Services]:
    """Services holding the fixture blobs (EMPTY, HELLOWORLD) and directories (individual puts)."""
    with local_services(request.param, tmp_path) as s:
        s.blob_service.put(b"")
        s.blob_service.put(HELLOWORLD_BLOB_CONTENTS)
        s.directory_service.put(DIRECTORY_WITH_KEEP)
        s.directory_service.put(DIRECTORY_COMPLICATED)
        yield s


@pytest.fixture(params=[False, True], ids=["copy", "zero-copy"])
def zero_copy(request: pytest.FixtureRequest) -> bool:
    """Render through readers, or (where the backend offers it) through verified map views."""
    return bool(request.param)


def render(node: Node, s: Services, zero_copy: bool = False) -> bytes:
    out = io.BytesIO()
    write_nar(out.write, node, s.blob_service, s.directory_service, zero_copy=zero_copy)
    return out.getvalue()


@pytest.mark.parametrize(
    ("node", "expected"),
    [
        (CASTORE_NODE_SYMLINK, NAR_CONTENTS_SYMLINK),
        (CASTORE_NODE_HELLOWORLD, NAR_CONTENTS_HELLOWORLD),
        (CASTORE_NODE_COMPLICATED, NAR_CONTENTS_COMPLICATED),
    ],
    ids=["symlink", "helloworld", "complicated"],
)
def test_render_fixtures(services: Services, node: Node, expected: bytes, zero_copy: bool) -> None:
    """The fixture nodes render to the fixture NARs byte for byte."""
    assert render(node, services, zero_copy) == expected


def test_render_too_big(services: Services, zero_copy: bool) -> None:
    """A FileNode claiming more bytes than its blob has fails, naming the blob."""
    with pytest.raises(NarRenderError, match=r"shorter than the size 42") as info:
        render(CASTORE_NODE_TOO_BIG, services, zero_copy)
    assert str(CASTORE_NODE_TOO_BIG.digest) in str(info.value)


def test_render_too_small(services: Services, zero_copy: bool) -> None:
    """A FileNode claiming fewer bytes than its blob has fails."""
    with pytest.raises(NarRenderError, match=r"longer than the size 2"):
        render(CASTORE_NODE_TOO_SMALL, services, zero_copy)


def test_render_missing_blob(services: Services, zero_copy: bool) -> None:
    """A missing blob is an error naming its digest and the entry."""
    missing = B3Digest.of(b"not stored")
    tree = Directory({b"dir": Directory({b"file": FileNode(missing, 10)}).as_node()})
    services.directory_service.put(Directory({b"file": FileNode(missing, 10)}))
    services.directory_service.put(tree)
    with pytest.raises(NarRenderError, match="not found") as info:
        render(tree.as_node(), services, zero_copy)
    assert str(missing) in str(info.value)
    assert "dir/file" in str(info.value)


def test_render_missing_directory(services: Services, zero_copy: bool) -> None:
    """A missing directory is an error naming its digest."""
    node = DirectoryNode(B3Digest.of(b"no such directory"), 3)
    with pytest.raises(NarRenderError, match=r"directory .* not found") as info:
        render(node, services, zero_copy)
    assert str(node.digest) in str(info.value)


@pytest.mark.parametrize(
    ("node", "size", "sha256_hex"),
    [
        (CASTORE_NODE_SYMLINK, 136, "097d397e9b5826384eaa16c457715d1c1a51670313ead0f58566e0b232539cf1"),
        (CASTORE_NODE_HELLOWORLD, 128, "03e7f63be30b065d78bcf615f5473545fdb4eb69aa416f43495b4e05cdfb8040"),
        (CASTORE_NODE_COMPLICATED, 840, "ebd52279a8df024c9fd5718de4103bf5e760dc7f2cf49044ee7dea87ab16911a"),
    ],
    ids=["symlink", "helloworld", "complicated"],
)
def test_calculate_nar_vectors(services: Services, node: Node, size: int, sha256_hex: str) -> None:
    """calculate_nar gives the spec §12.4 sizes and hashes."""
    calc = LocalNarCalculationService(services.blob_service, services.directory_service)
    assert calc.calculate_nar(node) == (size, bytes.fromhex(sha256_hex))


@pytest.mark.parametrize("node", [CASTORE_NODE_SYMLINK, CASTORE_NODE_HELLOWORLD, CASTORE_NODE_COMPLICATED])
def test_nar_size_from_the_tree_alone(services: Services, node: Node) -> None:
    """nar_size needs only the Directories: it gives the sizes of the fixture NARs."""
    assert nar_size(node, services.directory_service) == len(render(node, services))
    with pytest.raises(StorageError, match="does not exist"):
        nar_size(DirectoryNode(B3Digest.of(b"no such directory"), 3), services.directory_service)


def test_calculate_nar_uses_cache(services: Services) -> None:
    """With a NarCache, the result is stored and later answered without rendering."""
    cache = MemoryNarCache()
    calc = LocalNarCalculationService(services.blob_service, services.directory_service, cache)
    expected = (128, hashlib.sha256(NAR_CONTENTS_HELLOWORLD).digest())
    assert calc.calculate_nar(CASTORE_NODE_HELLOWORLD) == expected
    assert cache.get_nar_cache(CASTORE_NODE_HELLOWORLD) == expected
    # A node whose blob is absent can only be answered from the cache.
    ghost = FileNode(B3Digest.of(b"absent"), 5)
    cache.put_nar_cache(ghost, 1, bytes(32))
    assert calc.calculate_nar(ghost) == (1, bytes(32))


def test_tree_nested_too_deep_is_not_rendered(services: Services) -> None:
    """Directories can be put (over gRPC, say) deeper than a NAR may nest; rendering one is a
    clear error, not a NAR no Nix can unpack."""
    from nix_compat.nar.wire import MAX_DEPTH

    node: Node = Directory().as_node()
    services.directory_service.put(Directory())
    for _ in range(MAX_DEPTH):  # the root and MAX_DEPTH below it
        directory = Directory({b"a": node})
        services.directory_service.put(directory)
        node = directory.as_node()
    with pytest.raises(NarRenderError, match=f"nested more than {MAX_DEPTH} directories deep"):
        render(node, services)
    # One level less renders.
    assert render(_child(node, services), services)


def _child(node: Node, s: Services) -> Node:
    assert isinstance(node, DirectoryNode)
    directory = s.directory_service.get(node.digest)
    assert directory is not None
    return dict(directory.entries())[b"a"]
