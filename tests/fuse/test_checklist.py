"""The FUSE checklist of spec §7.7 on a real mount, adapted to our decisions (decision 7).

Differences from tvix on purpose: modes 0444/0555 with uid/gid 0 and every timestamp 1 s;
a directory's st_size is always its DirectoryNode size; root lookups match the whole basename;
the root lists with correct offsets when ``--list-root`` is given.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest
from fixtures import (
    BLOB_A,
    BLOB_A_DIGEST,
    BLOB_B,
    BLOB_B_DIGEST,
    DIRECTORY_COMPLICATED,
    DIRECTORY_WITH_KEEP,
    HELLOWORLD_BLOB_CONTENTS,
    HELLOWORLD_BLOB_DIGEST,
)
from fuse_mounts import MountFactory

from nix_compat.store_path import StorePath
from tvix_castore.digests import B3Digest
from tvix_castore.nodes import DirectoryNode, FileNode, Node, SymlinkNode
from tvix_store.path_info import PathInfo
from tvix_store.services import construct_services

BLOB_A_NAME = "00000000000000000000000000000000-test"
BLOB_B_NAME = "55555555555555555555555555555555-test"
HELLOWORLD_NAME = "66666666666666666666666666666666-test"
SYMLINK_NAME = "11111111111111111111111111111111-test"
SYMLINK_NAME2 = "44444444444444444444444444444444-test"
DIRECTORY_WITH_KEEP_NAME = "22222222222222222222222222222222-test"
DIRECTORY_COMPLICATED_NAME = "33333333333333333333333333333333-test"
MISSING_DIRECTORY_NAME = "77777777777777777777777777777777-test"
MISSING_BLOB_NAME = "88888888888888888888888888888888-test"

ROOTS: dict[str, Node] = {
    BLOB_A_NAME: FileNode(BLOB_A_DIGEST, len(BLOB_A)),
    BLOB_B_NAME: FileNode(BLOB_B_DIGEST, len(BLOB_B)),
    HELLOWORLD_NAME: FileNode(HELLOWORLD_BLOB_DIGEST, len(HELLOWORLD_BLOB_CONTENTS), executable=True),
    SYMLINK_NAME: SymlinkNode(BLOB_A_NAME.encode()),
    SYMLINK_NAME2: SymlinkNode(b"/nix/store/somewhereelse"),
    DIRECTORY_WITH_KEEP_NAME: DIRECTORY_WITH_KEEP.as_node(),
    DIRECTORY_COMPLICATED_NAME: DIRECTORY_COMPLICATED.as_node(),
    MISSING_DIRECTORY_NAME: DirectoryNode(B3Digest(b"\x42" * 32), 2),
    MISSING_BLOB_NAME: FileNode(B3Digest(b"\x43" * 32), 10),
}


def seed(store: Path, names: list[str] | None = None) -> Path:
    """An LMDB store holding the fixture blobs, directories and one PathInfo per root name."""
    services = construct_services(f"lmdb://{store}", f"lmdb://{store}", f"lmdb://{store}")
    try:
        for data in (BLOB_A, BLOB_B, HELLOWORLD_BLOB_CONTENTS, b""):
            services.blob_service.put(data)
        putter = services.directory_service.put_multiple_start()
        putter.put(DIRECTORY_WITH_KEEP)
        putter.put(DIRECTORY_COMPLICATED)
        putter.close()
        for name in names if names is not None else list(ROOTS):
            services.path_info_service.put(
                PathInfo(
                    store_path=StorePath.from_bytes(name), node=ROOTS[name], nar_size=0, nar_sha256=bytes(32)
                )
            )
    finally:
        services.close()
    return store


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return seed(tmp_path_factory.mktemp("store") / "s")


@pytest.fixture
def mnt(store: Path, mount: MountFactory) -> Path:
    return mount(store).path


def test_01_mount_empty_store(tmp_path: Path, mount: MountFactory) -> None:
    """Mounting and unmounting an empty store works; SIGTERM exits 0."""
    m = mount(seed(tmp_path / "empty", names=[]))
    assert os.stat(m.path).st_ino == 1
    assert m.stop() == 0


def test_02_root_listing_denied(mnt: Path) -> None:
    with pytest.raises(PermissionError) as info:
        os.listdir(mnt)
    assert info.value.errno == errno.EPERM


def test_03_root_with_listing(store: Path, mount: MountFactory) -> None:
    """--list-root lists every root, sorted, with offsets that let a listing resume."""
    m = mount(store, "--list-root")
    names = os.listdir(m.path)
    assert sorted(names) == sorted(ROOTS)
    with os.scandir(m.path) as it:
        first = next(it)
    assert first.name == BLOB_A_NAME
    st = first.stat(follow_symlinks=False)
    assert stat.S_ISREG(st.st_mode) and st.st_size == 2 and not st.st_mode & 0o222


def test_04_05_stat_and_read_file_at_root(mnt: Path) -> None:
    p = mnt / BLOB_A_NAME
    st = p.stat()
    assert stat.S_ISREG(st.st_mode) and st.st_size == 2 and not st.st_mode & 0o222
    assert p.read_bytes() == BLOB_A


def test_06_read_large_file_at_root(mnt: Path) -> None:
    p = mnt / BLOB_B_NAME
    assert p.stat().st_size == len(BLOB_B)
    assert p.read_bytes() == BLOB_B


def test_07_symlink_readlink(store: Path, tmp_path: Path, mount: MountFactory) -> None:
    """A symlink to an absent root: readlink works, following it finds nothing."""
    m = mount(seed(tmp_path / "s7", names=[SYMLINK_NAME]))
    p = m.path / SYMLINK_NAME
    assert os.readlink(p) == BLOB_A_NAME
    assert stat.S_ISLNK(os.lstat(p).st_mode)
    with pytest.raises(FileNotFoundError):
        os.stat(p)
    with pytest.raises(FileNotFoundError):
        p.read_bytes()


def test_08_read_stat_through_symlink(mnt: Path) -> None:
    p = mnt / SYMLINK_NAME
    assert os.stat(p).st_size == 2
    assert p.read_bytes() == BLOB_A


def test_09_stat_directory(mnt: Path) -> None:
    st = os.stat(mnt / DIRECTORY_WITH_KEEP_NAME)
    assert stat.S_ISDIR(st.st_mode) and not st.st_mode & 0o222


def test_10_xattr(mnt: Path) -> None:
    d = mnt / DIRECTORY_WITH_KEEP_NAME
    f = mnt / BLOB_A_NAME
    assert os.listxattr(d) == ["user.tvix.castore.directory.digest"]
    assert os.getxattr(d, "user.tvix.castore.directory.digest") == str(DIRECTORY_WITH_KEEP.digest()).encode()
    assert os.listxattr(f) == ["user.tvix.castore.blob.digest"]
    assert os.getxattr(f, "user.tvix.castore.blob.digest") == str(BLOB_A_DIGEST).encode()
    with pytest.raises(OSError) as info:
        os.getxattr(f, "user.cheesecake")
    assert info.value.errno == errno.ENODATA
    with pytest.raises(OSError) as info:
        os.getxattr(f, "security.selinux")
    assert info.value.errno == errno.ENOTSUP


def test_acl_queries_answered(mnt: Path) -> None:
    """ls -l asks for ACLs: unsupported here (so ls stops asking), permissions unaffected."""
    with pytest.raises(OSError) as info:
        os.getxattr(mnt / BLOB_A_NAME, "system.posix_acl_access")
    assert info.value.errno == errno.ENOTSUP
    assert os.access(mnt / BLOB_A_NAME, os.R_OK) and not os.access(mnt / BLOB_A_NAME, os.W_OK)
    assert os.access(mnt / HELLOWORLD_NAME, os.X_OK) and not os.access(mnt / BLOB_A_NAME, os.X_OK)


def test_10b_no_show_xattr(store: Path, mount: MountFactory) -> None:
    m = mount(store, "--no-show-xattr")
    f = m.path / BLOB_A_NAME
    assert f.read_bytes() == BLOB_A
    with pytest.raises(OSError) as info:
        os.getxattr(f, "user.tvix.castore.blob.digest")
    assert info.value.errno == errno.ENOTSUP  # our ENOSYS: the kernel stops asking
    with pytest.raises(OSError) as info:
        os.listxattr(f)
    assert info.value.errno == errno.ENOTSUP


def test_11_12_read_blob_inside_dirs(mnt: Path) -> None:
    for p in (mnt / DIRECTORY_WITH_KEEP_NAME / ".keep", mnt / DIRECTORY_COMPLICATED_NAME / "keep" / ".keep"):
        st = p.stat()
        assert stat.S_ISREG(st.st_mode) and not st.st_mode & 0o222 and st.st_size == 0
        assert p.read_bytes() == b""


def test_13_14_readdir(mnt: Path) -> None:
    d = mnt / DIRECTORY_COMPLICATED_NAME
    with os.scandir(d) as it:
        entries = [
            (e.name, e.is_file(follow_symlinks=False), e.is_symlink(), e.is_dir(follow_symlinks=False))
            for e in it
        ]
    assert entries == [
        (".keep", True, False, False),
        ("aa", False, True, False),
        ("keep", False, False, True),
    ]
    assert (d / ".keep").stat().st_size == 0
    assert os.listdir(d / "keep") == [".keep"]


def test_15_check_attributes(mnt: Path) -> None:
    f = os.lstat(mnt / BLOB_A_NAME)
    x = os.lstat(mnt / HELLOWORLD_NAME)
    d = os.lstat(mnt / DIRECTORY_WITH_KEEP_NAME)
    s = os.lstat(mnt / SYMLINK_NAME2)
    assert stat.S_IMODE(f.st_mode) == 0o444 and stat.S_ISREG(f.st_mode)
    assert stat.S_IMODE(x.st_mode) == 0o555 and stat.S_ISREG(x.st_mode)
    assert stat.S_IMODE(d.st_mode) == 0o555 and stat.S_ISDIR(d.st_mode)
    assert stat.S_IMODE(s.st_mode) == 0o444 and stat.S_ISLNK(s.st_mode)
    assert f.st_size == 2
    assert d.st_size == DIRECTORY_WITH_KEEP.size()
    os.listdir(mnt / DIRECTORY_WITH_KEEP_NAME)
    assert os.lstat(mnt / DIRECTORY_WITH_KEEP_NAME).st_size == DIRECTORY_WITH_KEEP.size()
    for st in (f, x, d, s):
        assert (st.st_uid, st.st_gid) == (0, 0)
        assert st.st_atime_ns == st.st_mtime_ns == st.st_ctime_ns == 1_000_000_000


def test_16_17_18_shared_inodes(mnt: Path) -> None:
    """Files and symlinks share inodes by content; directories deliberately do not (16).

    tvix gives identical directories one inode; Linux keeps one dentry per directory inode and
    moves it to wherever it was last looked up, so a process in one copy would find its cwd
    and ``..`` in the other (see ``test_identical_directories_keep_their_own_parents``).
    """
    c = mnt / DIRECTORY_COMPLICATED_NAME
    assert os.stat(mnt / DIRECTORY_WITH_KEEP_NAME).st_ino != os.stat(c / "keep").st_ino
    assert os.stat(c / "keep").st_ino == os.stat(c / "keep").st_ino
    assert os.stat(c / ".keep").st_ino == os.stat(c / "keep" / ".keep").st_ino
    assert os.lstat(c / "aa").st_ino == os.lstat(mnt / SYMLINK_NAME2).st_ino


def test_19_wrong_paths_in_root(mnt: Path) -> None:
    """The whole basename must match (decision 7): hash with another name is absent."""
    for wrong in (
        "00000000000000000000000000000000-tes",
        "00000000000000000000000000000000-other",
        "0000000000000000000000000000000-test",
        "not-a-store-path",
    ):
        assert not (mnt / wrong).exists()
    assert (mnt / BLOB_A_NAME).exists()


def test_19b_overlong_names(mnt: Path) -> None:
    """A name over 255 bytes is ENAMETOOLONG, at the top and inside a directory, as natively."""
    for parent in (mnt, mnt / DIRECTORY_COMPLICATED_NAME):
        with pytest.raises(OSError) as info:
            os.lstat(parent / ("x" * 256))
        assert info.value.errno == errno.ENAMETOOLONG
        with pytest.raises(FileNotFoundError):
            os.lstat(parent / ("x" * 255))


def test_20_disallow_writes(mnt: Path) -> None:
    for attempt in (
        lambda: (mnt / "new-file").write_bytes(b"x"),
        lambda: os.mkdir(mnt / DIRECTORY_COMPLICATED_NAME / "new"),
        lambda: open(mnt / BLOB_A_NAME, "r+b"),  # noqa: SIM115
        lambda: os.chmod(mnt / BLOB_A_NAME, 0o777),
        lambda: os.unlink(mnt / BLOB_A_NAME),
    ):
        with pytest.raises(OSError) as info:
            attempt()
        assert info.value.errno == errno.EROFS


def test_20b_opens_that_write_nothing(mnt: Path) -> None:
    """O_APPEND on a read-only open writes nothing: it opens, as on any read-only filesystem."""
    fd = os.open(mnt / BLOB_A_NAME, os.O_RDONLY | os.O_APPEND)
    try:
        assert os.read(fd, len(BLOB_A) + 1) == BLOB_A
    finally:
        os.close(fd)
    for flags in (os.O_WRONLY | os.O_APPEND, os.O_RDONLY | os.O_TRUNC):
        with pytest.raises(OSError) as info:
            os.close(os.open(mnt / BLOB_A_NAME, flags))
        assert info.value.errno == errno.EROFS


def test_21_missing_directory(mnt: Path) -> None:
    """stat works, listing and lookups inside fail with EIO, and the mount keeps serving."""
    d = mnt / MISSING_DIRECTORY_NAME
    assert stat.S_ISDIR(os.stat(d).st_mode)
    for attempt in (lambda: os.listdir(d), lambda: os.stat(d / ".keep")):
        with pytest.raises(OSError) as info:
            attempt()
        assert info.value.errno == errno.EIO
    assert (mnt / BLOB_A_NAME).read_bytes() == BLOB_A


def test_22_missing_blob(mnt: Path) -> None:
    p = mnt / MISSING_BLOB_NAME
    assert p.stat().st_size == 10
    with pytest.raises(OSError) as info:
        p.read_bytes()
    assert info.value.errno == errno.EIO
    assert (mnt / BLOB_B_NAME).read_bytes() == BLOB_B


def test_statfs(mnt: Path) -> None:
    st = os.statvfs(mnt)
    assert st.f_bfree == 0 and st.f_flag & os.ST_RDONLY
    # Mounted as tvix mounts: MS_RDONLY|MS_NOSUID|MS_NODEV|MS_NOATIME.
    assert st.f_flag & os.ST_NOSUID and st.f_flag & os.ST_NODEV and st.f_flag & os.ST_NOATIME
    with open("/proc/self/mountinfo") as f:
        line = next(ln for ln in f if ln.split()[4] == str(mnt))
    assert "tvix-store" in line
    assert set(line.split()[5].split(",")) >= {"ro", "nosuid", "nodev", "noatime"}
