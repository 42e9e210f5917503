"""The gRPC DirectoryService client: get fetches the subtree ahead into a verified cache, and a
subtree missing on the server does not spoil the get of the Directory above it."""

from __future__ import annotations

import pytest
from daemon_helpers import Served
from fixtures import DIRECTORY_A, DIRECTORY_B, DIRECTORY_COMPLICATED, DIRECTORY_D, DUMMY_DIGEST

from tvix_castore.directory import Directory
from tvix_castore.directoryservice import from_addr as directory_from_addr
from tvix_castore.errors import StoreError
from tvix_castore.grpc.channel import MAX_MESSAGE
from tvix_castore.nodes import FileNode
from tvix_castore.proto_conv import directory_to_proto


def test_get_reads_subtree_ahead(served: Served) -> None:
    """After get(D), its children come from the client's cache: no call reaches the server."""
    with served.services.directory_service.put_multiple_start() as putter:
        for d in (DIRECTORY_A, DIRECTORY_B, DIRECTORY_D):
            putter.put(d)
        putter.close()
    dirs = directory_from_addr(served.url)
    try:
        assert dirs.get(DIRECTORY_D.digest()) == DIRECTORY_D
        dirs._channel.close()  # type: ignore[attr-defined]  # any further call would fail
        assert dirs.get(DIRECTORY_B.digest()) == DIRECTORY_B
        assert dirs.get(DIRECTORY_A.digest()) == DIRECTORY_A
    finally:
        dirs.close()


def test_get_with_missing_subtree(served: Served) -> None:
    """A Directory whose child is missing on the server is still returned by get."""
    served.services.directory_service.put(DIRECTORY_COMPLICATED)  # its child is not there
    dirs = directory_from_addr(served.url)
    try:
        assert dirs.get(DIRECTORY_COMPLICATED.digest()) == DIRECTORY_COMPLICATED
    finally:
        dirs.close()


def test_directory_over_the_message_limit(served: Served) -> None:
    """A Directory too big for one message fails with an error naming it and its encoded size."""
    big = Directory({f"file-{i:06d}".encode(): FileNode(DUMMY_DIGEST, i) for i in range(90_000)})
    encoded = len(directory_to_proto(big).SerializeToString())
    assert encoded > MAX_MESSAGE  # the premise: more than the daemon accepts in one message
    dirs = directory_from_addr(served.url)
    try:
        with pytest.raises(StoreError) as raised:
            dirs.put(big)
        message = str(raised.value)
        assert "directory upload: RESOURCE_EXHAUSTED" in message
        assert f"directory {big.digest()} with 90000 entries is {encoded} bytes as one message" in message
        assert served.services.directory_service.get(big.digest()) is None
    finally:
        dirs.close()
