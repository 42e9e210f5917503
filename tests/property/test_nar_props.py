"""NAR properties over random trees: round trips, event order, canonical encoding, truncation,
and (with Nix installed) equality with `nix-store --dump`."""

from __future__ import annotations

import io
import os
import shutil
import subprocess

import pytest
from fixtures import nar
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from nartree import (
    DirT,
    FileT,
    SymlinkT,
    Tree,
    materialize,
    nar_of_path,
    nar_to_tree,
    read_events,
    tree_events,
    tree_to_nar,
)

from nix_compat.errors import NarError

names = (
    st.binary(min_size=1, max_size=16)
    .map(lambda b: b.replace(b"/", b"_").replace(b"\0", b"-"))
    .filter(lambda b: b not in (b".", b".."))
)
targets = st.binary(min_size=1, max_size=64).map(lambda b: b.replace(b"\0", b"x"))
contents = st.one_of(
    st.binary(max_size=64),
    st.integers(0, 3000).map(lambda n: bytes(range(256)) * (n // 256) + bytes(n % 256)),
)
leaves = st.one_of(st.builds(FileT, st.booleans(), contents), st.builds(SymlinkT, targets))
trees: st.SearchStrategy[Tree] = st.recursive(
    leaves, lambda children: st.builds(DirT, st.dictionaries(names, children, max_size=6)), max_leaves=25
)
EDGE_TREES = [
    FileT(False, b""),
    FileT(True, b"x" * 8),
    FileT(False, b"x" * 9),
    DirT({}),
    DirT({b"a": DirT({})}),
    SymlinkT(b"/" * 4095),
    DirT({b"\xff" * 255: FileT(False, b"")}),
]


@settings(max_examples=200, deadline=None)
@given(trees)
@example(EDGE_TREES[0])
@example(EDGE_TREES[1])
@example(EDGE_TREES[2])
@example(EDGE_TREES[3])
@example(EDGE_TREES[4])
@example(EDGE_TREES[5])
@example(EDGE_TREES[6])
def test_write_read_round_trip(tree):
    """The reader gives back the tree the writer was fed, with events in pre-order."""
    data = tree_to_nar(tree)
    assert nar_to_tree(data) == tree
    events, consumed = read_events(io.BytesIO(data).read)
    assert events == list(tree_events(tree))
    assert consumed == len(data)


@settings(max_examples=100, deadline=None)
@given(trees, st.lists(st.integers(1, 20), min_size=1), st.integers(1, 50))
def test_split_reads_do_not_matter(tree, sizes, max_chunk):
    """Short reads of any sizes and any max_chunk give the same events."""
    data = tree_to_nar(tree)
    stream = io.BytesIO(data)
    calls = iter(sizes * (len(data) + 1))

    def read(n: int) -> bytes:
        return stream.read(min(n, next(calls)))

    events, consumed = read_events(read, max_chunk)
    assert events == list(tree_events(tree))
    assert consumed == len(data)


@settings(max_examples=100, deadline=None)
@given(trees, st.data())
def test_truncation_is_always_detected(tree, data):
    nar = tree_to_nar(tree)
    cut = data.draw(st.integers(0, len(nar) - 1))
    with pytest.raises(NarError, match=f"^unexpected end of NAR at offset {cut}$"):
        read_events(io.BytesIO(nar[:cut]).read)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trees, st.data())
def test_encoding_is_canonical(tree, data):
    """After any one-byte change, the reader either refuses the NAR or accepts a NAR that our
    writer reproduces byte for byte: no two encodings of one tree are accepted."""
    nar = bytearray(tree_to_nar(tree))
    pos = data.draw(st.integers(0, len(nar) - 1))
    nar[pos] = data.draw(st.integers(0, 255).filter(lambda b: b != nar[pos]))
    mutated = bytes(nar)
    try:
        parsed = nar_to_tree(mutated)
    except NarError:
        return
    assert tree_to_nar(parsed) == mutated


@settings(max_examples=100, deadline=None)
@given(trees, st.binary(min_size=1, max_size=40))
def test_trailing_bytes_left_unread(tree, trailer):
    nar = tree_to_nar(tree)
    stream = io.BytesIO(nar + trailer)
    events, consumed = read_events(stream.read)
    assert events == list(tree_events(tree))
    assert consumed == len(nar) == stream.tell()
    assert stream.read() == trailer


# -- the real Nix as oracle -----------------------------------------------------------------------

needs_nix = pytest.mark.skipif(shutil.which("nix-store") is None, reason="nix-store not installed")


def _nix_dump(path: bytes) -> bytes:
    return subprocess.run(["nix-store", "--dump", path], check=True, capture_output=True).stdout


@pytest.mark.nix
@needs_nix
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tree=trees)
@example(tree=DirT({b"a": FileT(True, b"#!/bin/sh\n"), b"b": SymlinkT(b"a"), b"c": DirT({})}))
def test_writer_matches_nix_store_dump(tmp_path_factory, tree):
    """The NAR our writer makes of a tree on disk equals `nix-store --dump` of that tree."""
    root = os.path.join(os.fsencode(tmp_path_factory.mktemp("tree")), b"root")
    materialize(tree, root)
    ours = nar_of_path(root)
    assert ours == _nix_dump(root)
    assert ours == tree_to_nar(tree)
    shutil.rmtree(os.path.dirname(root))


@pytest.mark.nix
@needs_nix
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tree=trees)
def test_nix_restores_our_nar(tmp_path_factory, tree):
    """`nix-store --restore` accepts our NAR and recreates the same tree."""
    base = tmp_path_factory.mktemp("restore")
    dest = os.path.join(os.fsencode(base), b"out")
    subprocess.run(["nix-store", "--restore", dest], input=tree_to_nar(tree), check=True)
    assert nar_to_tree(nar_of_path(dest)) == tree
    shutil.rmtree(base)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [
                b"(",
                b")",
                b"type",
                b"regular",
                b"symlink",
                b"directory",
                b"entry",
                b"name",
                b"node",
                b"contents",
                b"executable",
                b"target",
                b"",
                b"a",
                b"b",
                b"\0",
            ]
        ),
        max_size=30,
    ),
    st.binary(max_size=16),
)
def test_token_soup_only_raises_nar_error(tokens, tail):
    """Random sequences of NAR tokens after the magic either parse (canonically) or raise NarError."""
    data = nar(b"nix-archive-1", *tokens) + tail
    try:
        parsed = nar_to_tree(data)
    except NarError:
        return
    assert data.startswith(tree_to_nar(parsed))
