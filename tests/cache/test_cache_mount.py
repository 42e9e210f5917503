"""A mount over ``cache://?near=lmdb…&far=nix+http…``: first lookup fetches, later ones are local."""

from __future__ import annotations

import os
import shutil
import subprocess
import urllib.parse

import pytest
from cache_helpers import mounted, static_server, stored_paths

pytestmark = [pytest.mark.nix, pytest.mark.fuse]


def _fuse_problem() -> str | None:
    if not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None:
        return "no /dev/fuse or fusermount3"
    return None


def _assert_same_tree(mnt, path: str) -> None:
    ours = mnt / os.path.basename(path)
    res = subprocess.run(["diff", "-r", "--no-dereference", ours, path], capture_output=True)
    assert res.returncode == 0, res.stdout.decode() + res.stderr.decode()


@pytest.mark.skipif(_fuse_problem() is not None, reason=str(_fuse_problem()))
def test_mount_fetches_from_binary_cache_once(tmp_path, nix_closure):
    """Every file of each looked-up path equals /nix/store's (diff -r), fetched once, then local."""
    store = tmp_path / "store"
    lmdb = f"lmdb://{store}"
    caches_dir = nix_closure["caches"]["signed"].parent
    flags = ["--blob-service-addr", lmdb, "--directory-service-addr", lmdb]
    with static_server(caches_dir) as base:
        far = f"nix+{base}/cache-xz?trusted-public-keys={urllib.parse.quote(nix_closure['pk'])}"
        cache_url = f"cache://?near={lmdb}&far={far}"
        signed_far = f"nix+{base}/cache-signed?trusted-public-keys={urllib.parse.quote(nix_closure['pk'])}"
        signed_url = f"cache://?near={lmdb}&far={signed_far}"
        # the xz cache is unsigned: with trusted keys nothing may be fetched from it
        with mounted(store, tmp_path / "mnt0", *flags, "--path-info-service-addr", cache_url) as mnt:
            top = os.path.basename(nix_closure["top"])
            assert not os.path.exists(mnt / top)
        assert stored_paths(store) == []
        with mounted(store, tmp_path / "mnt1", *flags, "--path-info-service-addr", signed_url) as mnt:
            for path in nix_closure["paths"]:
                _assert_same_tree(mnt, path)
        assert stored_paths(store) == nix_closure["paths"]
    # the cache server is gone: everything now comes from the local store
    with mounted(store, tmp_path / "mnt2", *flags, "--path-info-service-addr", signed_url) as mnt:
        for path in nix_closure["paths"]:
            _assert_same_tree(mnt, path)
