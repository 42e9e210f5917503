"""Ingestion properties over random trees: NAR -> castore -> NAR is the identity, and importing
a tree from disk in one pass gives the NAR hash of the tree's NAR."""

from __future__ import annotations

import hashlib
import io
import os
import tempfile

from hypothesis import given, settings
from hypothesis import strategies as st
from nartree import DirT, FileT, SymlinkT, Tree, materialize, tree_to_nar

from tvix_store.import_path import import_path
from tvix_store.nar.calculation import nar_size
from tvix_store.nar.ingest import ingest_nar
from tvix_store.nar.renderer import write_nar
from tvix_store.services import construct_services

names = (
    st.binary(min_size=1, max_size=16)
    .map(lambda b: b.replace(b"/", b"_").replace(b"\0", b"-"))
    .filter(lambda b: b not in (b".", b".."))
)
targets = st.binary(min_size=1, max_size=64).map(lambda b: b.replace(b"\0", b"x"))
contents = st.one_of(st.binary(max_size=64), st.integers(0, 300_000).map(lambda n: b"\xa5" * n))
leaves = st.one_of(st.builds(FileT, st.booleans(), contents), st.builds(SymlinkT, targets))
trees: st.SearchStrategy[Tree] = st.recursive(
    leaves, lambda children: st.builds(DirT, st.dictionaries(names, children, max_size=6)), max_leaves=20
)


@settings(max_examples=150, deadline=None)
@given(trees)
def test_nar_ingest_render_round_trip(tree: Tree) -> None:
    """Rendering what a NAR was ingested into gives the NAR back, with its hash and size."""
    data = tree_to_nar(tree)
    s = construct_services("memory://", "memory://", "memory://")
    root, sha, size = ingest_nar(s.blob_service, s.directory_service, io.BytesIO(data).read)
    assert (sha, size) == (hashlib.sha256(data).digest(), len(data))
    out = io.BytesIO()
    write_nar(out.write, root, s.blob_service, s.directory_service)
    assert out.getvalue() == data
    # The size from the tree's shape alone (no blob read) is the NAR's.
    assert nar_size(root, s.directory_service) == len(data)


@settings(max_examples=60, deadline=None)
@given(trees)
def test_one_pass_import_hashes_the_nar(tree: Tree) -> None:
    """import_path's one-pass NAR hash is the hash of the tree's NAR, and rendering agrees."""
    data = tree_to_nar(tree)
    s = construct_services("memory://", "memory://", "memory://")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "root")
        materialize(tree, os.fsencode(path))
        info = import_path(s, path)
    assert (info.nar_size, info.nar_sha256) == (len(data), hashlib.sha256(data).digest())
    out = io.BytesIO()
    write_nar(out.write, info.node, s.blob_service, s.directory_service)
    assert out.getvalue() == data
