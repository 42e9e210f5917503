"""Bad input to the CLI: each case is one ``error: …`` line naming the culprit, exit status 1,
and nothing new in the store (``path-info --all`` prints nothing).
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fixtures import NAR_CONTENTS_COMPLICATED, nar
from tvix_cli import TVIX_STORE, all_paths, cli_env, one_line_error, tvix


def _dir_with_ok_file(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "ok.txt").write_bytes(b"fine")
    return tree


def test_missing_path(tmp_path: Path) -> None:
    """A path that does not exist."""
    store = tmp_path / "store"
    res = tvix(store, "import", tmp_path / "no-such-thing", check=False)
    assert "no-such-thing" in one_line_error(res)
    assert all_paths(store) == b""


@pytest.mark.parametrize("kind", ["fifo", "socket", "char-device", "block-device"])
def test_special_file_inside_tree(tmp_path: Path, kind: str) -> None:
    """A socket, FIFO or device inside the tree names its path and type."""
    tree = _dir_with_ok_file(tmp_path)
    special = tree / "sub" / f"special-{kind}"
    if kind == "fifo":
        os.mkfifo(special)
    elif kind == "socket":
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(special))
        s.close()
    elif kind == "char-device":
        os.mknod(special, 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    else:
        os.mknod(special, 0o600 | stat.S_IFBLK, os.makedev(7, 0))
    store = tmp_path / "store"
    line = one_line_error(tvix(store, "import", tree, check=False))
    assert f"special-{kind}" in line
    assert "unsupported file type" in line
    assert all_paths(store) == b""


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A tmp dir an unprivileged user can use (pytest's own tmp dirs are root-only)."""
    d = Path(tempfile.mkdtemp(prefix="tvix-bad-input-", dir="/tmp"))
    os.chmod(d, 0o777)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv")
@pytest.mark.parametrize("what", ["file", "directory"])
def test_unreadable(shared_tmp: Path, what: str) -> None:
    """A file or directory the importing user cannot read (root reads everything, so the CLI
    runs as nobody via setpriv) names the path."""
    tree = shared_tmp / "tree"
    tree.mkdir()
    (tree / "ok.txt").write_bytes(b"fine")
    secret = tree / "secret"
    if what == "file":
        secret.write_bytes(b"no")
        os.chmod(secret, 0o000)
    else:
        secret.mkdir()
        (secret / "inner").write_bytes(b"x")
        os.chmod(secret, 0o000)
    os.chmod(tree, 0o755)
    store = shared_tmp / "store"
    store.mkdir(mode=0o777)
    os.chmod(store, 0o777)
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    res = subprocess.run(
        [*nobody, TVIX_STORE, "import", str(tree)], capture_output=True, env=cli_env(store), timeout=120
    )
    line = one_line_error(res)
    assert "secret" in line
    assert "Permission denied" in line
    listing = subprocess.run(
        [*nobody, TVIX_STORE, "path-info", "--all"], capture_output=True, env=cli_env(store), timeout=120
    )
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout == b""


def _bad_padding() -> bytes:
    good = nar(b"nix-archive-1", b"(", b"type", b"symlink", b"target", b"abc", b")")
    # The target "abc" sits in an 8-byte slot after its length; make a padding byte non-zero.
    i = good.index(b"abc") + 3
    return good[:i] + b"\x01" + good[i + 1 :]


MISORDERED = nar(
    b"nix-archive-1", b"(", b"type", b"directory",
    b"entry", b"(", b"name", b"b", b"node", b"(", b"type", b"symlink", b"target", b"x", b")", b")",
    b"entry", b"(", b"name", b"a", b"node", b"(", b"type", b"symlink", b"target", b"x", b")", b")",
    b")",
)  # fmt: skip
SLASH_IN_NAME = nar(
    b"nix-archive-1", b"(", b"type", b"directory",
    b"entry", b"(", b"name", b"a/b", b"node", b"(", b"type", b"symlink", b"target", b"x", b")", b")",
    b")",
)  # fmt: skip
BAD_NARS = {
    "truncated": (NAR_CONTENTS_COMPLICATED[:300], "unexpected end of NAR"),
    "misordered": (MISORDERED, "'a'"),
    "bad-padding": (_bad_padding(), "padding"),
    "slash-in-name": (SLASH_IN_NAME, "a/b"),
    "not-a-nar": (b"this is not a NAR at all, just some text.......", "magic"),
}


@pytest.mark.parametrize("case", sorted(BAD_NARS))
@pytest.mark.parametrize("via", ["file", "stdin"])
def test_bad_nar(tmp_path: Path, case: str, via: str) -> None:
    """Truncated, mis-ordered, badly padded NARs and names with '/' are refused."""
    data, expected = BAD_NARS[case]
    store = tmp_path / "store"
    if via == "file":
        f = tmp_path / "bad.nar"
        f.write_bytes(data)
        res = tvix(store, "import", "--nar", f, "--name", "bad", check=False)
        culprit = "bad.nar"
    else:
        res = tvix(store, "import", "--nar", "-", "--name", "bad", input=data, check=False)
        culprit = "stdin"
    line = one_line_error(res)
    assert expected in line
    assert culprit in line
    assert all_paths(store) == b""


@pytest.mark.parametrize("rust_log", ["tvix_store=loud", "not a directive!", "=info"])
def test_bad_rust_log(tmp_path: Path, rust_log: str) -> None:
    """An invalid RUST_LOG is a startup error naming the directive; nothing is imported."""
    store = tmp_path / "store"
    (tmp_path / "f").write_bytes(b"f")
    res = tvix(store, "import", tmp_path / "f", env=cli_env(store, RUST_LOG=rust_log), check=False)
    line = one_line_error(res)
    assert "RUST_LOG" in line or rust_log in line
    assert all_paths(store) == b""


def test_unknown_store_path(tmp_path: Path) -> None:
    """nar and path-info of a path not in the store name it."""
    store = tmp_path / "store"
    missing = "/nix/store/00000000000000000000000000000000-nothing"
    for cmd in ("nar", "path-info"):
        assert missing in one_line_error(tvix(store, cmd, missing, check=False))


def test_path_info_of_known_and_unknown_paths(tmp_path: Path) -> None:
    """As ``nix path-info``: the known paths are printed, each unknown one is an error line
    after them, and the exit status is 1."""
    store = tmp_path / "store"
    (tmp_path / "a").write_bytes(b"a")
    (tmp_path / "b").write_bytes(b"b")
    a, b = tvix(store, "import", tmp_path / "a", tmp_path / "b").stdout.decode().split()
    missing = [f"/nix/store/{c * 32}-nothing" for c in "01"]
    res = tvix(store, "path-info", a, missing[0], b, missing[1], check=False)
    assert res.returncode == 1
    assert res.stdout == tvix(store, "path-info", a, b).stdout
    assert res.stderr.decode().splitlines() == [f"error: path '{m}' is not in the store" for m in missing]


def test_invalid_store_path_argument(tmp_path: Path) -> None:
    """A malformed store path argument is named in the error."""
    store = tmp_path / "store"
    assert "/tmp/not-a-store-path" in one_line_error(tvix(store, "nar", "/tmp/not-a-store-path", check=False))


def test_invalid_name(tmp_path: Path) -> None:
    """A basename Nix refuses as a store path name (here: a space) is named in the error."""
    store = tmp_path / "store"
    p = tmp_path / "has space"
    p.write_bytes(b"x")
    assert "has space" in one_line_error(tvix(store, "import", p, check=False))
    assert all_paths(store) == b""


@pytest.fixture
def small_filesystem(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs (mounting needs root, as CI is); unmounted afterwards."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], capture_output=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_disk(tmp_path: Path, small_filesystem: Path) -> None:
    """A store on a full filesystem: the error says how little room is left, nothing is stored,
    and once a smaller import fits, it goes in."""
    store = small_filesystem / "store"
    big = tmp_path / "big"
    big.write_bytes(os.urandom(16 * 1024 * 1024))
    line = one_line_error(tvix(store, "import", str(big), check=False))
    assert line.startswith("error: LMDB "), line
    assert f"({store}: only " in line and " bytes left on its filesystem)" in line, line
    assert all_paths(store) == b""
    small = tmp_path / "small-file"
    small.write_bytes(b"fits\n")
    printed = tvix(store, "import", str(small)).stdout.decode().strip()
    assert all_paths(store).decode().count("StorePath: ") == 1
    assert printed.endswith("-small-file")


def _fill(filesystem: Path) -> None:
    """Fill filesystem up with one file."""
    with open(filesystem / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc


def test_lock_file_is_allocated_so_a_full_disk_is_an_error(tmp_path: Path, small_filesystem: Path) -> None:
    """LMDB extends its lock file sparse and writes it through a map: on a full filesystem a
    store to a page without a block killed the process with SIGBUS (a new store there, or a
    reader taking a fresh slot of an existing one). The lock file gets all its blocks when the
    store opens; where there is no room for them, opening fails with an error."""
    f = tmp_path / "f"
    f.write_bytes(b"fits\n")
    store = small_filesystem / "store"
    tvix(store, "import", str(f))
    lock = os.stat(store / "lock.mdb")
    assert lock.st_blocks * 512 >= lock.st_size > 60_000  # every reader slot has its block

    # A lock file without a single block (LMDB died making it) on a full disk: as a new one.
    sparse = small_filesystem / "sparse"
    tvix(sparse, "import", str(f))
    with open(sparse / "lock.mdb", "wb") as lock_file:
        lock_file.truncate(lock.st_size)
    # One an older version left sparse: LMDB wrote its first page (header, first reader slots).
    older = small_filesystem / "older"
    tvix(older, "import", str(f))
    with open(older / "lock.mdb", "wb") as lock_file:
        lock_file.write(bytes(4096))
        lock_file.truncate(lock.st_size)
    _fill(small_filesystem)
    for s in (small_filesystem / "new", sparse):
        for args in (["path-info", "--all"], ["import", str(f)]):
            res = tvix(s, *args, check=False)
            assert res.returncode == 1, (s, args, res)
            assert one_line_error(res) == (
                f"error: cannot open LMDB store at {s}: no space left on its filesystem "
                f"for its lock file ({lock.st_size} bytes)"
            )
    # An attempt that found no room leaves no lock file LMDB would take as one it made.
    assert os.stat(small_filesystem / "new" / "lock.mdb").st_size == 0
    # The store whose lock file has its blocks is read as ever; the older one too, with a warning.
    assert all_paths(store).decode().count("StorePath: ") == 1
    res = tvix(older, "path-info", "--all")
    assert res.stdout.decode().count("StorePath: ") == 1
    assert "no space left on its filesystem for the rest of its lock file" in res.stderr.decode()


def test_a_daemon_on_a_full_disk_answers_and_says_why(
    tmp_path: Path, small_filesystem: Path, short_dir: Path
) -> None:
    """A daemon whose store fills up refuses the upload with INTERNAL, logs what failed (its
    operator sees nothing of the client's error), keeps serving, and stores no PathInfo."""
    from daemon_helpers import start_daemon

    daemon = start_daemon(small_filesystem / "store", str(short_dir / "d.sock"))
    try:
        _fill(small_filesystem)
        big = tmp_path / "big"
        big.write_bytes(os.urandom(2 * 1024 * 1024))
        res = tvix(tmp_path / "client", *daemon.addr_flags(), "import", str(big), check=False)
        assert res.returncode == 1 and "INTERNAL" in one_line_error(res), res
        listed = tvix(tmp_path / "client", *daemon.addr_flags(), "path-info", "--all")
        assert listed.stdout == b""
    finally:
        assert daemon.stop() == 0
    assert daemon.proc.stderr is not None
    log = daemon.proc.stderr.read().decode()
    warnings = [line for line in log.splitlines() if "storing a blob failed" in line]
    # The write's own error (ENOSPC), or, when the kernel took the pages and failed to write
    # them back (EIO at the sync), what our message adds: the room left.
    assert warnings, log
    assert "No space left on device" in warnings[0] or "bytes left on its filesystem" in warnings[0], log


def test_blobs_that_never_arrived_leave_no_path_info(tmp_path: Path, short_dir: Path) -> None:
    """Blobs written behind to a daemon that is not there, PathInfos in a local store: the
    import fails and the local store gets no PathInfo pointing at the missing blobs."""
    store = tmp_path / "store"
    flags = [
        f"--blob-service-addr=grpc+unix://{short_dir / 'nobody.sock'}",
        "--directory-service-addr=memory://",
        f"--path-info-service-addr=lmdb://{store}",
    ]
    res = tvix(tmp_path / "unused", *flags, "import", str(_dir_with_ok_file(tmp_path)), check=False)
    assert "UNAVAILABLE" in one_line_error(res)
    assert res.stdout == b""
    listed = tvix(tmp_path / "unused", f"--path-info-service-addr=lmdb://{store}", "path-info", "--all")
    assert listed.stdout == b""


def _big_store_path(tmp_path: Path) -> tuple[Path, str]:
    store = tmp_path / "store"
    tree = tmp_path / "big"
    tree.mkdir()
    (tree / "f").write_bytes(os.urandom(3 * 1024 * 1024))  # several chunks, read as views
    return store, tvix(store, "import", tree).stdout.decode().strip()


def test_nar_to_a_full_disk(tmp_path: Path) -> None:
    """nar into /dev/full is one error line and exit 1, not a hang (a read of the store must
    not outlive the failed write)."""
    store, store_path = _big_store_path(tmp_path)
    with open("/dev/full", "wb") as full:
        res = subprocess.run(
            [TVIX_STORE, "nar", store_path],
            stdout=full,
            stderr=subprocess.PIPE,
            env=cli_env(store),
            timeout=60,
        )
    assert res.returncode == 1
    assert res.stderr.decode() == "error: cannot write the NAR to stdout: No space left on device\n"


def test_nar_interrupted_while_blocked_on_its_reader(tmp_path: Path) -> None:
    """Ctrl-C while nar waits on a pipe nobody reads ends it (status 130), not a hang."""
    store, store_path = _big_store_path(tmp_path)
    proc = subprocess.Popen(
        [TVIX_STORE, "nar", store_path], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env(store)
    )
    try:
        assert proc.stdout is not None
        assert len(proc.stdout.read(1024)) == 1024  # it is writing: now leave the pipe full
        time.sleep(1)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


@pytest.mark.parametrize("command", ["path-info", "nar", "import"])
def test_truncated_store_file(tmp_path: Path, command: str) -> None:
    """A data.mdb cut short (a failed copy, a full disk) is named in an error, where reading the
    missing pages through LMDB's map would end the process with SIGBUS."""
    store, store_path = _big_store_path(tmp_path)
    data_file = store / "data.mdb"
    full_size = data_file.stat().st_size
    os.truncate(data_file, full_size // 2)
    arg = str(tmp_path / "big") if command == "import" else store_path
    line = one_line_error(tvix(store, command, arg, check=False))
    assert f"{data_file} is truncated ({full_size // 2} bytes" in line, line
    assert data_file.stat().st_size == full_size // 2  # refused, not "repaired" by writing


@pytest.mark.parametrize("name", [b"store", b"st\xffore"], ids=["utf8", "not-utf8"])
def test_store_file_that_is_not_lmdb(tmp_path: Path, name: bytes) -> None:
    """A data.mdb that is not an LMDB file is one error naming the store once, left as it was;
    also for a directory name that is not UTF-8 (py-lmdb shows that one differently)."""
    store = tmp_path / os.fsdecode(name)
    store.mkdir()
    garbage = os.urandom(20000)
    (store / "data.mdb").write_bytes(garbage)
    line = one_line_error(tvix(store, "path-info", "--all", check=False))
    assert line.startswith("error: cannot open LMDB store at "), line
    assert line.endswith(": MDB_INVALID: File is not an LMDB file"), line
    assert line.count(str(tmp_path)) == 1, line
    assert (store / "data.mdb").read_bytes() == garbage


@pytest.mark.parametrize("name", ["data.mdb", "lock.mdb"])
def test_store_file_that_is_a_fifo(tmp_path: Path, name: str) -> None:
    """A data.mdb or lock.mdb that is not a regular file is refused at once, named; opening a
    FIFO as data.mdb would block."""
    store = tmp_path / "store"
    store.mkdir()
    os.mkfifo(store / name)
    line = one_line_error(tvix(store, "path-info", "--all", check=False))
    assert f"{store / name} is not a regular file" in line, line


def _with_closed(redirect: str, *args: str | Path, store: Path) -> subprocess.CompletedProcess[bytes]:
    """tvix-store args… started with a standard stream closed by the shell redirection."""
    return subprocess.run(
        ["sh", "-c", f'exec "$@" {redirect}', "sh", TVIX_STORE, *map(str, args)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=cli_env(store),
        timeout=60,
    )


@pytest.mark.parametrize(
    ("command", "what"), [("nar", "the NAR"), ("path-info", "the path info"), ("import", "the store path")]
)
def test_closed_stdout(tmp_path: Path, command: str, what: str) -> None:
    """A command whose stdout is closed (>&-) says so, as nix-store does, instead of a traceback;
    an import done that way is still complete."""
    store, store_path = _big_store_path(tmp_path)
    arg = tmp_path / "big" if command == "import" else store_path
    res = _with_closed(">&-", command, arg, store=store)
    assert res.returncode == 1
    assert res.stderr.decode() == f"error: cannot write {what} to stdout: Bad file descriptor\n"
    assert tvix(store, "nar", store_path).stdout == tvix(store, "nar", store_path).stdout  # readable


@pytest.mark.parametrize(("command", "what"), [("path-info", "the path info"), ("import", "the store path")])
def test_stdout_on_a_full_disk(tmp_path: Path, command: str, what: str) -> None:
    """Output that does not fit (/dev/full) is one error line naming what was being written."""
    store, store_path = _big_store_path(tmp_path)
    arg = tmp_path / "big" if command == "import" else store_path
    with open("/dev/full", "wb") as full:
        res = subprocess.run(
            [TVIX_STORE, command, str(arg)],
            stdout=full,
            stderr=subprocess.PIPE,
            env=cli_env(store),
            timeout=60,
        )
    assert res.returncode == 1
    assert res.stderr.decode() == f"error: cannot write {what} to stdout: No space left on device\n"


def test_closed_stdin(tmp_path: Path) -> None:
    """import --nar - with stdin closed (<&-) is an error, and nothing is stored."""
    store = tmp_path / "store"
    res = _with_closed("<&-", "import", "--nar", "-", "--name", "x", store=store)
    assert res.returncode == 1
    assert res.stderr.decode() == "error: cannot read the NAR from stdin: it is closed\n"
    assert all_paths(store) == b""


@pytest.fixture
def read_only_view(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A store with one path, and a read-only bind mount of its directory (needs root, as CI
    is); yields (store, read-only view), unmounted afterwards."""
    store, _ = _big_store_path(tmp_path)
    view = tmp_path / "ro"
    view.mkdir()
    res = subprocess.run(["mount", "--bind", str(store), str(view)], capture_output=True)
    if res.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {res.stderr.decode().strip()}")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(view)], check=True, capture_output=True)
        yield store, view
    finally:
        subprocess.run(["umount", "-l", str(view)], check=False)


def test_store_on_a_read_only_filesystem(tmp_path: Path, read_only_view: tuple[Path, Path]) -> None:
    """A store on a read-only filesystem can be read (path-info, nar); a write is one error
    saying why, and leaves the store as it was."""
    store, view = read_only_view
    listed = tvix(view, "path-info", "--all").stdout
    assert listed == all_paths(store) and listed.count(b"StorePath: ") == 1
    store_path = listed.split(b"\n")[0].removeprefix(b"StorePath: ").decode()
    assert tvix(view, "nar", store_path).stdout == tvix(store, "nar", store_path).stdout
    other = tmp_path / "other"
    other.write_bytes(b"not stored\n")
    line = one_line_error(tvix(view, "import", other, check=False))
    assert f"({view} is on a read-only filesystem)" in line, line
    assert all_paths(store) == listed


def test_read_only_store_of_an_earlier_version_still_reads(read_only_view: tuple[Path, Path]) -> None:
    """A store made before a table was added (``cachefiles``) opens on a read-only filesystem,
    where the table cannot be created: read as before, the missing table holds nothing."""
    import lmdb

    from tvix_store.binary_cache.cache_files import LmdbCacheFiles

    store, view = read_only_view
    env = lmdb.open(str(store), max_dbs=10, subdir=True)
    with env.begin(write=True) as txn:
        txn.drop(env.open_db(b"cachefiles", txn=txn), delete=True)
    env.close()
    listed = tvix(view, "path-info", "--all").stdout
    assert listed == all_paths(store) and listed.count(b"StorePath: ") == 1
    files = LmdbCacheFiles(str(view))
    try:
        assert files.get("log/00bgd045z0d4icpbc2yyz4gx48ak44la-x.drv") is None
    finally:
        files.close()


def test_read_only_view_of_a_store_in_use_is_refused(read_only_view: tuple[Path, Path]) -> None:
    """Through a read-only mount LMDB keeps no reader table, so a process writing the store
    through its writable path could reuse the pages a reader is on: while one has it open, the
    read-only view is one error naming that process; once it is gone, the view reads again."""
    import sys

    store, view = read_only_view
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from tvix_castore._lmdb_env import open_env; open_env(sys.argv[1]); "
            "print('open', flush=True); time.sleep(120)",
            str(store),
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"open\n"
        line = one_line_error(tvix(view, "path-info", "--all", check=False))
        assert f"in use by process {holder.pid}, which may write it through another path" in line, line
    finally:
        holder.kill()
        holder.wait()
    assert tvix(view, "path-info", "--all").stdout.count(b"StorePath: ") == 1


def test_paths_that_are_not_utf8(tmp_path: Path, short_dir: Path) -> None:
    """A store directory whose path is not UTF-8 works; a socket path that is not (grpc-core
    cannot take it) is one error naming it, for a client and for the daemon."""
    odd_store = Path(os.fsdecode(bytes(tmp_path) + b"/store\xff"))
    tree = tmp_path / "t"
    tree.mkdir()
    (tree / "f").write_bytes(b"x\n")
    printed = tvix(odd_store, "import", tree).stdout.decode().strip()
    assert all_paths(odd_store).decode().startswith(f"StorePath: {printed}")
    sock = os.fsdecode(bytes(short_dir) + b"/s\xff.sock")
    env = cli_env(tmp_path / "store", BLOB_SERVICE_ADDR=f"grpc+unix://{sock}")
    assert "socket path is not valid UTF-8" in one_line_error(
        tvix(tmp_path / "store", "import", tree, env=env, check=False)
    )
    assert "socket path is not UTF-8" in one_line_error(
        tvix(tmp_path / "store", "daemon", "-l", sock, check=False)
    )


def test_paths_with_url_special_characters(tmp_path: Path, short_dir: Path) -> None:
    """A store directory or socket whose path has characters a URL gives meaning to (``#``,
    ``?``, ``%``, space) is used as it is: TVIX_STORE_HOME is escaped into the default URL (``#``
    once silently chose the directory before it), and ``%XX`` in a URL's path is decoded alike
    for ``lmdb://`` and ``grpc+unix://``, also when the daemon checks it is not its own backend."""
    tree = tmp_path / "t"
    tree.mkdir()
    (tree / "f").write_bytes(b"x\n")
    for name in ("a#b", "a?b", "a%41", "a b"):
        home = tmp_path / name
        printed = tvix(home, "import", tree).stdout.decode().strip()
        assert (home / "data.mdb").exists(), name
        assert all_paths(home).decode().startswith(f"StorePath: {printed}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a b", "a#b", "a%41", "a?b", "t"]
    sock_dir = short_dir / "s p#%"
    sock_dir.mkdir()
    url = f"grpc+unix://{short_dir}/s%20p%23%25/d%2541.sock"
    daemon = subprocess.Popen(
        [TVIX_STORE, "daemon", "-l", str(sock_dir / "d%41.sock")],
        env=cli_env(tmp_path / "daemon-store"),
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not (sock_dir / "d%41.sock").exists():
            assert daemon.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        flags = [f"--{kind}-service-addr={url}" for kind in ("blob", "directory", "path-info")]
        printed = tvix(tmp_path / "c", "import", tree, *flags).stdout.decode().strip()
        assert f"StorePath: {printed}" in tvix(tmp_path / "c", "path-info", "--all", *flags).stdout.decode()
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(60) == 0
    res = tvix(
        tmp_path / "c", "daemon", "-l", str(sock_dir / "e.sock"),
        f"--blob-service-addr=grpc+unix://{short_dir}/s%20p%23%25/e.sock", check=False,
    )
    assert "it is this daemon's own listen address" in one_line_error(res)


@pytest.mark.parametrize("command", ["import", "nar", "path-info"])
def test_relative_argument_in_a_removed_working_directory(tmp_path: Path, command: str) -> None:
    """A relative argument where the working directory was removed: one error line saying so,
    as Nix's "cannot get cwd", not a bare "[Errno 2]"."""
    gone = tmp_path / "gone"
    gone.mkdir()
    res = subprocess.run(
        ["sh", "-c", f'rmdir "{gone}" && exec "$@"', "sh", TVIX_STORE, command, "foo"],
        cwd=gone,
        capture_output=True,
        env=cli_env(tmp_path / "store"),
        timeout=120,
    )
    assert one_line_error(res) == "error: cannot get the current directory: No such file or directory"


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv")
def test_relative_xdg_data_home_is_ignored(shared_tmp: Path) -> None:
    """The XDG base directory spec: a relative $XDG_DATA_HOME is ignored, so a user's default
    store is ~/.local/share/tvix-store (root's is /var/lib/tvix-store, whatever XDG says)."""
    home = shared_tmp / "home"
    home.mkdir(mode=0o777)
    os.chmod(home, 0o777)
    src = shared_tmp / "f"
    src.write_bytes(b"x")
    os.chmod(src, 0o644)
    env = {k: v for k, v in cli_env(shared_tmp).items() if k != "TVIX_STORE_HOME"}
    env.update(HOME=str(home), XDG_DATA_HOME="relative/dir")
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    res = subprocess.run(
        [*nobody, TVIX_STORE, "import", str(src)], capture_output=True, env=env, cwd=shared_tmp, timeout=120
    )
    assert res.returncode == 0, res.stderr
    assert (home / ".local" / "share" / "tvix-store").is_dir()
    assert not (shared_tmp / "relative").exists()


def test_address_space_limit_is_named(tmp_path: Path) -> None:
    """Under ``ulimit -v`` the store's 1 TiB map (address space, not memory) cannot be made:
    the error says so and what to raise, not a bare "Cannot allocate memory"."""
    res = subprocess.run(
        ["sh", "-c", 'ulimit -v 4000000 && exec "$@"', "sh", TVIX_STORE, "path-info", "--all"],
        capture_output=True,
        env=cli_env(tmp_path / "store"),
        timeout=120,
    )
    line = one_line_error(res)
    assert "Cannot allocate memory" in line and "raise `ulimit -v`" in line, line
