"""``tvix-store import`` and ``nar`` against the real Nix on trees with every kind of node.

Oracles: the path ``nix-store --add`` prints for the same argument, the NAR ``nix-store --dump``
writes for the original tree, and the NAR hash Nix records for it (``nix-store -q --hash``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sysconfig
from collections.abc import Callable
from pathlib import Path

import pytest
from tvix_cli import TVIX_STORE, cli_env, needs_nix, nix_dump, nix_store, one_line_error, tvix

pytestmark = [pytest.mark.nix, needs_nix]


def make_nested(root: Path) -> Path:
    """Nested dirs, empty dir and file, executable, symlinks, odd names."""
    tree = root / "nested"
    (tree / "a" / "b" / "c").mkdir(parents=True)
    (tree / "empty-dir").mkdir()
    (tree / "empty-file").write_bytes(b"")
    (tree / "a" / "b" / "c" / "deep.txt").write_bytes(b"deep\n" * 1000)
    (tree / "a" / "script.sh").write_bytes(b"#!/bin/sh\necho hi\n")
    os.chmod(tree / "a" / "script.sh", 0o755)
    (tree / "a" / "group-exec-only").write_bytes(b"x")
    os.chmod(tree / "a" / "group-exec-only", 0o650)  # only the owner bit counts
    os.symlink("b/c/deep.txt", tree / "a" / "relative-link")
    os.symlink("/etc/hostname", tree / "absolute-link")
    os.symlink("../does/not/exist", tree / "a" / "dangling-link")
    (tree / "with space").write_bytes(b"space")
    (tree / "ünïcødé ☃").write_bytes("snøw".encode())
    (tree / "new\nline").write_bytes(b"newline")
    (tree / "-leading-dash").write_bytes(b"dash")
    (tree / "B-upper-sorts-first").write_bytes(b"B")
    (tree / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    return tree


def make_single_file(root: Path) -> Path:
    p = root / "hello.txt"
    p.write_bytes(b"Hello World!")
    return p


def make_executable(root: Path) -> Path:
    p = root / "run-me"
    p.write_bytes(b"#!/bin/sh\n")
    os.chmod(p, 0o700)
    return p


def make_empty_file(root: Path) -> Path:
    p = root / "empty"
    p.write_bytes(b"")
    return p


def make_empty_dir(root: Path) -> Path:
    p = root / "emptydir"
    p.mkdir()
    return p


def make_relative_symlink_root(root: Path) -> Path:
    (root / "target.txt").write_bytes(b"t")
    p = root / "link"
    os.symlink("target.txt", p)
    return p


def make_dangling_absolute_symlink_root(root: Path) -> Path:
    p = root / "dangling"
    os.symlink("/nonexistent/path/here", p)
    return p


def make_dash_root(root: Path) -> Path:
    p = root / "-dash-root"
    p.mkdir()
    (p / "f").write_bytes(b"f")
    return p


def make_deep(root: Path) -> Path:
    """1500 nested directories: deeper than Python's recursion limit."""
    top = root / "deep"
    p = top
    p.mkdir()
    for _ in range(1500):  # os.makedirs recurses once per level
        p = p / "d"
        p.mkdir()
    (p / "bottom").write_bytes(b"bottom")
    return top


TREES: dict[str, Callable[[Path], Path]] = {
    "deep": make_deep,
    "nested": make_nested,
    "single-file": make_single_file,
    "executable": make_executable,
    "empty-file": make_empty_file,
    "empty-dir": make_empty_dir,
    "symlink-root": make_relative_symlink_root,
    "dangling-absolute-symlink-root": make_dangling_absolute_symlink_root,
    "leading-dash-root": make_dash_root,
}


def check_against_nix(tmp_path: Path, src: Path) -> None:
    """import prints Nix's path, nar is byte-identical to nix-store --dump, hashes agree."""
    store = tmp_path / "tvix"
    nix_root = tmp_path / "nixroot"
    # "./name" keeps a leading dash from being read as an option, by both tools alike.
    arg = f"./{src.name}"
    ours = tvix(store, "import", arg, cwd=src.parent).stdout.decode()
    theirs = nix_store(nix_root, "--add", arg, cwd=src.parent).decode()
    assert ours == theirs
    store_path = ours.strip()
    assert tvix(store, "nar", store_path).stdout == nix_dump(src)
    info = json.loads(tvix(store, "path-info", "--json", store_path).stdout)
    nix_hash = nix_store(nix_root, "-q", "--hash", store_path).decode().strip()  # sha256:<nixbase32>
    narinfo = tvix(store, "path-info", store_path).stdout.decode()
    assert f"NarHash: {nix_hash}\n" in narinfo
    assert info[0]["path"] == store_path
    assert info[0]["narSize"] == int(nix_store(nix_root, "-q", "--size", store_path))


def remove_deep(top: Path) -> None:
    """Delete a deep chain of directories bottom-up (shutil.rmtree recurses once per level)."""
    chain = [top]
    while (chain[-1] / "d").is_dir():
        chain.append(chain[-1] / "d")
    for d in reversed(chain):
        for f in d.iterdir():
            if not f.is_dir():
                f.unlink()
        d.rmdir()


@pytest.mark.parametrize("kind", sorted(TREES))
def test_import_matches_nix(tmp_path: Path, kind: str) -> None:
    """Each kind of root gives Nix's store path and NAR."""
    src_root = tmp_path / "src"
    src_root.mkdir()
    src = TREES[kind](src_root)
    try:
        check_against_nix(tmp_path, src)
    finally:
        if kind == "deep":  # pytest's own clean-up of old tmp dirs would hit the recursion limit
            remove_deep(src)
            for copy in (tmp_path / "nixroot" / "nix" / "store").glob("*-deep"):
                remove_deep(copy)


def test_import_several_arguments(tmp_path: Path) -> None:
    """Several arguments print one path per argument, in order, as nix-store --add does."""
    src = tmp_path / "src"
    src.mkdir()
    args = [str(TREES[k](src)) for k in ("single-file", "empty-dir", "symlink-root")]
    ours = tvix(tmp_path / "tvix", "import", *args).stdout
    assert ours == nix_store(tmp_path / "nixroot", "--add", *args)
    assert len(ours.splitlines()) == 3


def test_import_trailing_slash_and_dotdot(tmp_path: Path) -> None:
    """Names come from the argument as Nix's baseNameOf does ('dir/' -> 'dir', 'a/..' -> '..')."""
    src = tmp_path / "src"
    (src / "dir" / "sub").mkdir(parents=True)
    (src / "dir" / "sub" / "f").write_bytes(b"f")
    args = ["dir/", "dir/sub/.."]
    ours = tvix(tmp_path / "tvix", "import", *args, cwd=src).stdout
    assert ours == nix_store(tmp_path / "nixroot", "--add", *args, cwd=src)


@pytest.mark.slow
def test_import_stdlib_tree(tmp_path: Path) -> None:
    """A real tree: Python's standard library (tens of MB, thousands of files)."""
    src = tmp_path / "src" / "stdlib"
    shutil.copytree(
        sysconfig.get_paths()["stdlib"],
        src,
        symlinks=True,
        ignore=shutil.ignore_patterns("__pycache__", "site-packages", "*.pyc"),
    )
    check_against_nix(tmp_path, src)


def test_nar_follows_symlinks_inside_the_store(tmp_path: Path) -> None:
    """``nar`` of a path through symlinks in the store writes what ``nix-store --dump`` of it
    writes: links on the way are followed (relative ones, chains, links into another store path
    by absolute path or by ``..``), the last one only before a trailing slash. A file taken for
    a directory, a missing entry or a loop is a one-line error, as it is for Nix."""
    store = tmp_path / "tvix"
    # A directory laid out like the store, so that the kernel resolves the source trees' links
    # to the same places as ours resolve in the store.
    layout = tmp_path / "layout"
    layout.mkdir()
    other_src = layout / "other"
    (other_src / "lib").mkdir(parents=True)
    (other_src / "lib" / "f").write_bytes(b"in another store path\n")
    other = tvix(store, "import", other_src).stdout.decode().strip()
    (layout / "other").rename(layout / other.removeprefix("/nix/store/"))
    other_src = layout / other.removeprefix("/nix/store/")
    src = layout / "tree"
    (src / "sub" / "deep").mkdir(parents=True)
    (src / "sub" / "b").write_bytes(b"b\n")
    (src / "sub" / "deep" / "d").write_bytes(b"d\n")
    os.symlink("sub", src / "x")
    os.symlink("x", src / "y")
    os.symlink(f"../{other_src.name}/lib", src / "up")
    os.symlink(f"{other}/lib", src / "abs")
    os.symlink("loop2", src / "loop1")
    os.symlink("loop1", src / "loop2")
    store_path = tvix(store, "import", src).stdout.decode().strip()
    for inside in ("x/b", "y", "y/", "x/deep/d", "y/deep/", "x/deep/../b", "up/f", "up/", "up"):
        # Strings, not Paths: pathlib would drop the trailing slashes.
        assert tvix(store, "nar", f"{store_path}/{inside}").stdout == nix_dump(f"{src}/{inside}"), inside
    # An absolute link leads into the real /nix/store, which Nix's side here does not have.
    assert tvix(store, "nar", f"{store_path}/abs/f").stdout == nix_dump(other_src / "lib" / "f")
    assert tvix(store, "nar", f"{store_path}/abs/").stdout == nix_dump(other_src / "lib")
    assert tvix(store, "nar", f"{store_path}/abs").stdout == nix_dump(f"{src}/abs")
    for inside, message in (
        ("sub/b/", f"'{store_path}/sub/b' is not a directory"),
        ("x/b/c", f"'{store_path}/sub/b' is not a directory"),
        ("x/nope", f"'{store_path}/sub/nope' does not exist in the store"),
        ("loop1/", "too many levels of symbolic links"),
    ):
        assert message in one_line_error(tvix(store, "nar", f"{store_path}/{inside}", check=False)), inside
        assert subprocess.run(["nix-store", "--dump", f"{src}/{inside}"], capture_output=True).returncode != 0


def test_nar_follows_symlinks_outside_the_store(tmp_path: Path) -> None:
    """A symlink outside the store anywhere on the argument's way leads in, as the kernel
    resolves the path for ``nix-store --dump``: a ``result`` link with a path below it, a link
    to the store directory, a link to a directory holding such links, and ``..`` after a link
    (taken from the link's target, not lexically)."""
    store = tmp_path / "tvix"
    src = make_nested(tmp_path / "src")
    store_path = tvix(store, "import", src).stdout.decode().strip()
    inside = next(p.name for p in src.iterdir() if p.is_dir())
    links = tmp_path / "links"
    (links / "deeper").mkdir(parents=True)
    os.symlink(store_path, links / "result")
    os.symlink("/nix/store", links / "st")
    os.symlink(links, tmp_path / "via")
    os.symlink("../result", links / "deeper" / "up")
    cases = [
        (f"{links}/result/{inside}", src / inside),
        (f"{links}/st/{Path(store_path).name}/{inside}", src / inside),
        (f"{tmp_path}/via/result/{inside}", src / inside),
        (f"{links}/deeper/up/{inside}", src / inside),
        (f"{tmp_path}/via/deeper/../result", src),
    ]
    for arg, original in cases:
        assert tvix(store, "nar", arg).stdout == nix_dump(original), arg
    res = tvix(store, "nar", f"{links}/deeper/nothing/{inside}", check=False)
    assert "is not in the store directory" in one_line_error(res)


def test_absolute_store_path_arguments_need_no_working_directory(tmp_path: Path) -> None:
    """An absolute argument works from a working directory that was removed, as with Nix."""
    store = tmp_path / "tvix"
    (tmp_path / "src").mkdir()
    src = make_nested(tmp_path / "src")
    store_path = tvix(store, "import", src).stdout.decode().strip()
    whole = tvix(store, "path-info", store_path).stdout
    gone = tmp_path / "gone"
    for args, expected in ((["nar", store_path], nix_dump(src)), (["path-info", store_path], whole)):
        gone.mkdir()
        # The shell starts in gone and removes it before tvix-store starts there.
        res = subprocess.run(
            ["sh", "-c", f'rmdir "{gone}" && exec "$@"', "sh", TVIX_STORE, *args],
            cwd=gone,
            capture_output=True,
            env=cli_env(store),
            timeout=120,
        )
        assert res.returncode == 0, res.stderr
        assert res.stdout == expected, args


def test_store_path_arguments_as_nix_takes_them(tmp_path: Path) -> None:
    """nar and path-info take what Nix takes: a path inside a store path, redundant slashes,
    '.' and '..', a symlink into the store (./result); path-info prints each store path once,
    in order, and ``--json`` lists an unknown path as not valid (exit 0), as ``nix path-info``."""
    (tmp_path / "src").mkdir()
    src = make_nested(tmp_path / "src")
    store = tmp_path / "tvix"
    store_path = tvix(store, "import", src).stdout.decode().strip()
    # nar of an entry inside the store path: nix-store --dump of the same entry.
    for inside in ("a", "a/script.sh", "a/relative-link", "big.bin", "empty-dir"):
        # Strings, not Paths: pathlib would drop the trailing slashes.
        assert tvix(store, "nar", f"{store_path}/{inside}").stdout == nix_dump(f"{src}/{inside}"), inside
    missing_inside = tvix(store, "nar", f"{store_path}/a/nope", check=False)
    assert f"{store_path}/a/nope" in one_line_error(missing_inside)
    # Spellings of the same store path, and a symlink to it outside the store.
    os.symlink(store_path, tmp_path / "result")
    base = store_path.removeprefix("/nix/store/")
    spellings = [
        f"{store_path}/",
        f"//nix//store/{base}/./a/..",
        f"/nix/store/../store/{base}",
        f"{store_path}/a/b/c/deep.txt",
        "./result",
    ]
    whole = tvix(store, "path-info", store_path).stdout
    for spelling in spellings:
        assert tvix(store, "path-info", spelling, cwd=tmp_path).stdout == whole, spelling
    assert tvix(store, "nar", "result", cwd=tmp_path).stdout == nix_dump(src)
    # Several arguments: sorted, duplicates once, unknown paths listed as not valid.
    unknown = "/nix/store/00000000000000000000000000000000-unknown"
    listed = json.loads(
        tvix(store, "path-info", "--json", store_path, unknown, "./result", cwd=tmp_path).stdout
    )
    assert [item["path"] for item in listed] == sorted([store_path, unknown])
    theirs = subprocess.run(
        [
            "nix",
            "--extra-experimental-features",
            "nix-command",
            "path-info",
            "--json",
            "--option",
            "substituters",
            "",
            unknown,
        ],
        capture_output=True,
        timeout=120,
        check=True,
    ).stdout
    assert [item for item in listed if item["path"] == unknown] == json.loads(theirs)
