"""Crash safety of the LMDB store across processes (pathinfoservice/lmdb_store.py, _lmdb_env.py).

A writer process is killed with SIGKILL at chosen points; the test then opens the same store
directory in this process and checks what survived. The writer is a fresh interpreter (never a
fork of a process with an open environment, per py-lmdb's "Forking" rule).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tvix_castore import blobservice, directoryservice
from tvix_castore.digests import B3Digest
from tvix_castore.directory import Directory
from tvix_castore.nodes import SymlinkNode
from tvix_store import pathinfoservice

WRITER = textwrap.dedent(
    """
    import sys, time
    from tvix_castore import blobservice, directoryservice
    from tvix_castore.directory import Directory
    from tvix_castore.nodes import SymlinkNode
    from tvix_store import pathinfoservice
    from tvix_store.path_info import PathInfo
    from nix_compat.store_path import StorePath

    url, mode = sys.argv[1], sys.argv[2]
    blobs = blobservice.from_addr(url)
    dirs = directoryservice.from_addr(url)
    infos = pathinfoservice.from_addr(url, blobs, dirs)

    def closure(tag, width):
        leaves = [Directory({b"l": SymlinkNode(b"%s-%d" % (tag, i))}) for i in range(width)]
        root = Directory({b"d%05d" % i: leaf.as_node() for i, leaf in enumerate(leaves)})
        return [*leaves, root]

    first = closure(b"first", 2000)
    with dirs.put_multiple_start() as putter:
        for d in first:
            putter.put(d)
        root = putter.close()
    print("root", root.hex(), flush=True)
    info = PathInfo(
        store_path=StorePath(bytes(20), "crash-test"),
        node=first[-1].as_node(),
        nar_size=1,
        nar_sha256=bytes(32),
    )
    if mode == "closures":
        # Closure after closure, each in one transaction, until killed.
        print("writing", flush=True)
        k = 0
        while True:
            with dirs.put_multiple_start() as putter:
                for d in closure(b"c%d" % k, 3000):
                    putter.put(d)
                putter.close()
            print("closed", k, flush=True)
            k += 1
    if mode == "put":
        infos.put(info)
        print("put", flush=True)
    else:
        # Keep writing Directories until killed: the PathInfo is never put.
        n = 0
        print("writing", flush=True)
        while True:
            dirs.put(Directory({b"x": SymlinkNode(b"%d" % n)}))
            n += 1
    time.sleep(600)
    """
)


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    """A fresh store directory's URL."""
    return f"lmdb://{tmp_path / 'store'}"


def _start_writer(url: str, mode: str) -> tuple[subprocess.Popen[str], dict[str, str]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, url, mode],
        stdout=subprocess.PIPE,
        text=True,
    )
    seen: dict[str, str] = {}
    assert proc.stdout is not None
    for line in proc.stdout:
        key, _, value = line.strip().partition(" ")
        seen[key] = value
        if key in ("put", "writing"):
            break
    else:
        proc.wait()
        pytest.fail(f"writer exited early with status {proc.returncode}")
    return proc, seen


def _closure(tag: bytes, width: int) -> list[Directory]:
    """The writer's closure function, to know what a killed writer was writing."""
    leaves = [Directory({b"l": SymlinkNode(b"%s-%d" % (tag, i))}) for i in range(width)]
    root = Directory({b"d%05d" % i: leaf.as_node() for i, leaf in enumerate(leaves)})
    return [*leaves, root]


def _kill(proc: subprocess.Popen[str]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    if proc.stdout is not None:
        proc.stdout.close()


class _Store:
    def __init__(self, url: str) -> None:
        self.blobs = blobservice.from_addr(url)
        self.dirs = directoryservice.from_addr(url)
        self.infos = pathinfoservice.from_addr(url, self.blobs, self.dirs)

    def close(self) -> None:
        self.infos.close()
        self.dirs.close()
        self.blobs.close()


@pytest.fixture
def open_store(store_url: str) -> Iterator[list[_Store]]:
    """Opens the store in this process on demand (after the writer started), closes it at the end."""
    opened: list[_Store] = []
    yield opened
    for s in opened:
        s.close()


def test_killed_before_path_info_put(store_url: str, open_store: list[_Store]) -> None:
    """A writer killed while writing Directories, before its PathInfo, leaves no PathInfo behind.

    The closure it committed before is intact, and the store takes new writes.
    """
    proc, seen = _start_writer(store_url, "write-forever")
    _kill(proc)
    store = _Store(store_url)
    open_store.append(store)
    assert store.infos.get(bytes(20)) is None
    assert list(store.infos.list()) == []
    closure = list(store.dirs.get_recursive(B3Digest(bytes.fromhex(seen["root"]))))
    assert len(closure) == 2001
    assert store.dirs.put(Directory()) == Directory().digest()


def test_killed_after_path_info_put(store_url: str, open_store: list[_Store]) -> None:
    """A PathInfo whose put returned survives a SIGKILL of its writer, with the data it points to."""
    proc, seen = _start_writer(store_url, "put")
    _kill(proc)
    store = _Store(store_url)
    open_store.append(store)
    info = store.infos.get(bytes(20))
    assert info is not None
    assert info.store_path.name == "crash-test"
    assert info.node.digest.hex() == seen["root"]  # type: ignore[union-attr]
    assert len(list(store.dirs.get_recursive(info.node.digest))) == 2001  # type: ignore[union-attr]


def test_second_process_sees_put(store_url: str, open_store: list[_Store]) -> None:
    """While the writer still runs, another process sees its PathInfo as soon as put returned."""
    proc, seen = _start_writer(store_url, "put")
    try:
        store = _Store(store_url)
        open_store.append(store)
        infos = list(store.infos.list())
        assert [i.store_path.name for i in infos] == ["crash-test"]
        assert infos[0].node.digest.hex() == seen["root"]  # type: ignore[union-attr]
    finally:
        _kill(proc)


def test_killed_during_closure_commit(store_url: str, open_store: list[_Store]) -> None:
    """A closure put through a putter lands whole or not at all, even when its writer is killed.

    The writer commits closures of 3001 Directories back to back; it is killed at some point
    while busy. Every closure it reported is complete, and the next one is all there or absent.
    """
    proc, _ = _start_writer(store_url, "closures")
    assert proc.stdout is not None
    reported = -1
    # Let it finish a few closures, then kill it while it works on the next one.
    for line in proc.stdout:
        reported = int(line.split()[1])
        if reported >= 3:
            break
    time.sleep(0.05)
    _kill(proc)
    store = _Store(store_url)
    open_store.append(store)
    for k in range(reported + 1):
        root = _closure(b"c%d" % k, 3000)[-1]
        assert len(list(store.dirs.get_recursive(root.digest()))) == 3001
    # The closures after the last reported one: each entirely present or entirely absent.
    for k in (reported + 1, reported + 2):
        present = [store.dirs.get(d.digest()) is not None for d in _closure(b"c%d" % k, 3000)]
        assert all(present) or not any(present), f"closure {k}: {sum(present)} of {len(present)} stored"
