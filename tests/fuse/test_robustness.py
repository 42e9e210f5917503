"""A mount people can run programs from, that survives its users and ends cleanly.

Programs (a shell script and a copied ELF executable) run from the mount; 8 reader processes
at once get the right bytes; a reader killed mid-read leaves the mount healthy; a path
imported meanwhile shows up in the mount; SIGTERM, SIGINT and an external umount all end the
process with status 0 and leave no mount behind; a stale mount from a killed process is
cleaned up; bad mount points get clear errors.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fuse_mounts import MountFactory, force_unmount, is_mounted, start_mount
from tvix_cli import TVIX_STORE, cli_env, tvix

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def program(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """A store with one imported tree: scripts, a copied ELF, big and small files."""
    base = tmp_path_factory.mktemp("prog")
    src = base / "prog"
    (src / "bin").mkdir(parents=True)
    (src / "bin" / "hello").write_text('#!/bin/sh\necho "hello from $(basename "$0")"\n')
    (src / "bin" / "hello").chmod(0o755)
    shutil.copy2("/bin/ls", src / "bin" / "ls")
    (src / "data").mkdir()
    for i in range(4):
        (src / "data" / f"big{i}").write_bytes(os.urandom(12 * MiB + i))
    (src / "data" / "small").write_bytes(b"small\n")
    store = base / "store"
    store_path = tvix(store, "import", str(src)).stdout.decode().strip()
    return store, src, os.path.basename(store_path)


def test_programs_run_from_the_mount(program: tuple[Path, Path, str], mount: MountFactory) -> None:
    store, _, name = program
    root = mount(store).path / name
    out = subprocess.run([str(root / "bin" / "hello")], capture_output=True, check=True)
    assert out.stdout == b"hello from hello\n"
    out = subprocess.run([str(root / "bin" / "ls"), str(root / "data")], capture_output=True, check=True)
    assert out.stdout.split() == [b"big0", b"big1", b"big2", b"big3", b"small"]


def _sha256_cmd(path: Path) -> list[str]:
    code = (
        "import hashlib,sys\n"
        "h=hashlib.sha256()\n"
        "f=open(sys.argv[1],'rb',buffering=0)\n"
        "while (b:=f.read(65536)): h.update(b)\n"
        "print(h.hexdigest())"
    )
    return [sys.executable, "-c", code, str(path)]


def test_eight_concurrent_readers(program: tuple[Path, Path, str], mount: MountFactory) -> None:
    """Four processes read the same file, four read different ones, all at once."""
    store, src, name = program
    root = mount(store).path / name
    files = ["big0"] * 4 + ["big1", "big2", "big3", "small"]
    procs = [subprocess.Popen(_sha256_cmd(root / "data" / f), stdout=subprocess.PIPE) for f in files]
    for f, p in zip(files, procs, strict=True):
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0
        assert out.decode().strip() == hashlib.sha256((src / "data" / f).read_bytes()).hexdigest()


def test_reader_killed_mid_read(program: tuple[Path, Path, str], mount: MountFactory) -> None:
    store, src, name = program
    m = mount(store)
    root = m.path / name
    for i in range(3):
        reader = subprocess.Popen(
            ["dd", f"if={root / 'data' / f'big{i}'}", "of=/dev/null", "bs=4k"], stderr=subprocess.DEVNULL
        )
        time.sleep(0.05 + 0.05 * i)
        os.kill(reader.pid, signal.SIGKILL)
        reader.wait(30)
    assert m.proc.poll() is None
    assert (root / "data" / "big3").read_bytes() == (src / "data" / "big3").read_bytes()
    assert (root / "data" / "small").read_bytes() == b"small\n"


def test_path_imported_while_mounted_appears(tmp_path: Path, mount: MountFactory) -> None:
    """An import while the store is mounted shows up in the mount: the root listing at once, a
    path never looked up at once, and one whose lookup failed just before within about a second
    (the root remembers a miss for a second, other directories never change)."""
    trees = {}
    for label in ("looked-up", "fresh"):
        src = tmp_path / label
        src.mkdir()
        (src / "f").write_bytes(f"contents of {label}\n".encode())
        # The same import into another store gives the name it will have.
        printed = tvix(tmp_path / "names", "import", str(src)).stdout.decode().strip()
        trees[label] = (src, os.path.basename(printed))
    store = tmp_path / "store"
    tvix(store, "import", str(tmp_path / "names"))  # a store that is not empty
    root = mount(store, "--list-root").path
    looked_up = root / trees["looked-up"][1]
    assert not looked_up.exists()
    for src, _ in trees.values():
        tvix(store, "import", str(src))
    assert {trees["looked-up"][1], trees["fresh"][1]} <= set(os.listdir(root))
    assert (root / trees["fresh"][1] / "f").read_bytes() == b"contents of fresh\n"
    deadline = time.monotonic() + 10
    while not looked_up.exists():
        assert time.monotonic() < deadline, "a path imported after a failed lookup never appeared"
        time.sleep(0.1)
    assert (looked_up / "f").read_bytes() == b"contents of looked-up\n"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_signal_unmounts_and_exits_zero(
    program: tuple[Path, Path, str], mount: MountFactory, sig: signal.Signals
) -> None:
    store, _, name = program
    m = mount(store)
    assert (m.path / name / "data" / "small").read_bytes() == b"small\n"
    assert m.stop(sig) == 0
    assert not is_mounted(m.path)
    assert os.listdir(m.path) == []  # a plain empty directory again, not a stale mount
    # tvix's log lines for Ctrl-C; SIGTERM gets its own name.
    said = {signal.SIGINT: "interrupt", signal.SIGTERM: "terminate signal", signal.SIGHUP: "hangup"}[sig]
    assert f"{said} received, unmounting" in m.logs()
    assert "unmount occurred, terminating" in m.logs()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=lambda s: s.name)
def test_signal_while_mounting_still_unmounts(
    program: tuple[Path, Path, str], tmp_path: Path, sig: signal.Signals
) -> None:
    """A signal the moment the mount appears (still setting up) ends it as cleanly: exit 0, no
    stale mount. It used to kill the process mounted, or be lost, in one run of four."""
    store, _, _ = program
    for i in range(12):
        mnt = tmp_path / f"m{i}"
        mnt.mkdir()
        proc = subprocess.Popen(
            [TVIX_STORE, "mount", str(mnt)], env=cli_env(store), stderr=subprocess.DEVNULL
        )
        try:
            deadline = time.monotonic() + 30
            while not is_mounted(mnt) and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.001)
            os.kill(proc.pid, sig)
            assert proc.wait(20) == 0, i
            assert not is_mounted(mnt), i
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            force_unmount(mnt)


def test_more_signals_while_stopping_do_no_harm(program: tuple[Path, Path, str], mount: MountFactory) -> None:
    """Signals after the first are logged, not fatal, and the mount leaves the tree at the
    first: a reader whose READ is being answered cannot keep it mounted."""
    store, _, name = program
    m = mount(store)
    assert (m.path / name / "data" / "small").read_bytes() == b"small\n"
    os.kill(m.proc.pid, signal.SIGTERM)
    for _ in range(5):
        os.kill(m.proc.pid, signal.SIGTERM)
        os.kill(m.proc.pid, signal.SIGINT)
    assert m.proc.wait(20) == 0
    assert not is_mounted(m.path)
    assert m.logs().count("received, unmounting") == 1, m.logs()


def test_mount_point_through_a_symlink(program: tuple[Path, Path, str], tmp_path: Path) -> None:
    """A mount point named through a symlink is found in mountinfo: readahead is raised."""
    store, _, name = program
    (tmp_path / "real" / "m").mkdir(parents=True)
    os.symlink(tmp_path / "real", tmp_path / "link")
    m = start_mount(store, tmp_path / "link" / "m", wait=False)
    try:
        deadline = time.monotonic() + 30
        while not is_mounted(tmp_path / "real" / "m"):
            assert m.proc.poll() is None and time.monotonic() < deadline, m.logs()
            time.sleep(0.02)
        assert (tmp_path / "link" / "m" / name / "data" / "small").read_bytes() == b"small\n"
        deadline = time.monotonic() + 10
        while "readahead set to 1024 KiB" not in m.logs() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "readahead set to 1024 KiB" in m.logs(), m.logs()
    finally:
        assert m.stop() == 0
        force_unmount(tmp_path / "real" / "m")


def test_external_umount_ends_the_process(program: tuple[Path, Path, str], mount: MountFactory) -> None:
    store, _, _ = program
    m = mount(store)
    subprocess.run(["fusermount3", "-u", str(m.path)], check=True)
    assert m.proc.wait(20) == 0
    assert not is_mounted(m.path)


@pytest.mark.parametrize("root_seen", [False, True], ids=["root-unseen", "root-seen"])
def test_stale_mount_is_cleaned_up(
    program: tuple[Path, Path, str], mount: MountFactory, root_seen: bool
) -> None:
    store, _, name = program
    first = mount(store)
    if root_seen:
        # The kernel then keeps the root's attributes: stat of the dead mount still succeeds.
        os.stat(first.path)
    first.stop(signal.SIGKILL)
    try:
        with pytest.raises(OSError) as info:
            os.statvfs(first.path)
        assert info.value.errno == 107  # ENOTCONN: transport endpoint is not connected
        # mountinfo still lists the stale mount, so wait for the new one to answer instead.
        second = mount(store, mnt=first.path, wait=False)
        deadline = time.monotonic() + 30
        while True:
            assert second.proc.poll() is None, second.logs()
            try:
                os.stat(second.path / name)
                break
            except OSError:
                assert time.monotonic() < deadline, second.logs()
                time.sleep(0.05)
        assert (second.path / name / "data" / "small").read_bytes() == b"small\n"
        assert "stale" in second.logs()
    finally:
        force_unmount(first.path)


def test_mount_point_inside_a_stale_mount_names_it(
    program: tuple[Path, Path, str], mount: MountFactory
) -> None:
    """Only the dead mount can be detached: the error names it, not the directory inside it."""
    store, _, _ = program
    first = mount(store)
    first.stop(signal.SIGKILL)
    try:
        res = tvix(store, "mount", first.path / "sub", check=False)
        logs = res.stderr.decode()
        assert res.returncode == 1, logs
        assert f"lies inside {first.path}, a stale mount" in logs, logs
        assert f"fusermount3 -uz {first.path}'" in logs, logs
        assert is_mounted(first.path)  # left for its owner to detach
    finally:
        force_unmount(first.path)


def _helper_children(pid: int) -> list[int]:
    """PIDs of the read helper processes whose parent is pid."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid and b"tvix_castore.blobservice.lmdb_read_helper" in cmdline:
            found.append(int(entry.name))
    return found


def _gone(pid: int, seconds: float = 20) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state == "Z":  # exited; its new parent reaps it
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_read_helper_process_ends_with_the_mount(
    program: tuple[Path, Path, str], mount: MountFactory, sig: signal.Signals
) -> None:
    """The helper that prepares sequential reads does not outlive the mount, however the
    mount ends; meanwhile reads through it give the right bytes."""
    store, src, name = program
    m = mount(store)
    try:
        got = (m.path / name / "data" / "big0").read_bytes()
        assert hashlib.sha256(got).digest() == hashlib.sha256((src / "data" / "big0").read_bytes()).digest()
        children = _helper_children(m.proc.pid)
        assert len(children) == 1, children
        m.stop(sig)
        assert _gone(children[0]), f"read helper {children[0]} outlived the mount ({sig.name})"
    finally:
        force_unmount(m.path)


def test_bad_mount_points(program: tuple[Path, Path, str], tmp_path: Path) -> None:
    store, _, _ = program
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    afile = tmp_path / "file"
    afile.write_text("x")
    for path, message in (
        (tmp_path / "missing", "does not exist"),
        (full, "is not empty"),
        (afile, "is not a directory"),
    ):
        res = subprocess.run(
            [TVIX_STORE, "mount", str(path)], capture_output=True, env=cli_env(store), timeout=60
        )
        assert res.returncode == 1
        assert message in res.stderr.decode(), res.stderr
        assert not is_mounted(path)


def _super_options(path: Path) -> set[str]:
    with open("/proc/self/mountinfo") as f:
        fields = next(ln for ln in f if ln.split()[4] == str(path)).split()
    return set(fields[fields.index("-") + 3].split(","))


def test_allow_other_from_the_environment(
    program: tuple[Path, Path, str], mount: MountFactory, tmp_path: Path
) -> None:
    """ALLOW_OTHER (tvix's env var for --allow-other) takes tvix's boolean words."""
    store, _, _ = program
    assert "allow_other" in _super_options(mount(store, env_extra={"ALLOW_OTHER": "true"}).path)
    assert "allow_other" not in _super_options(mount(store, env_extra={"ALLOW_OTHER": "false"}).path)
    assert "allow_other" in _super_options(mount(store, "--allow-other").path)
    mnt = tmp_path / "refused"
    mnt.mkdir()
    env = cli_env(store, ALLOW_OTHER="maybe")
    res = subprocess.run([TVIX_STORE, "mount", str(mnt)], capture_output=True, env=env, timeout=60)
    assert res.returncode == 2  # a usage error, as clap makes a bad env value for a flag
    assert "ALLOW_OTHER: not a boolean: 'maybe'" in res.stderr.decode(), res.stderr
    assert not is_mounted(mnt)


def test_live_mount_point_is_refused(program: tuple[Path, Path, str], mount: MountFactory) -> None:
    """A second mount on a live one exits 1 with a clear error; the first keeps serving."""
    store, _, name = program
    for args, message in (((), "is already mounted"), (("--list-root",), "another filesystem is mounted")):
        live = mount(store, *args).path
        res = subprocess.run(
            [TVIX_STORE, "mount", str(live)], capture_output=True, env=cli_env(store), timeout=60
        )
        assert res.returncode == 1
        assert message in res.stderr.decode().splitlines()[-1], res.stderr
        assert (live / name / "data" / "small").read_bytes() == b"small\n"
