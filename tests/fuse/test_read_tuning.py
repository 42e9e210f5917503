"""The kernel-side settings that make sequential reads through the mount fast.

Readahead of our mount's bdi is 1024 KiB once the mount serves (the kernel resets it while it
processes the FUSE INIT reply, so setting it before that is lost), and the mount says so in
its log. File contents stay in the page cache across opens (``keep_cache``): a second read of
a file sends (almost) no bytes through the mount process.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest
from fuse_mounts import MountFactory
from tvix_cli import tvix

MiB = 1024 * 1024


def _bdi(mnt: Path) -> Path:
    target = str(mnt.absolute())
    with open("/proc/self/mountinfo") as f:
        devices = [line.split()[2] for line in f if line.split()[4] == target]
    assert devices, f"{mnt} is not mounted"
    return Path("/sys/class/bdi") / devices[-1] / "read_ahead_kb"


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes, str]:
    base = tmp_path_factory.mktemp("tuning")
    src = base / "big"
    data = os.urandom(6 * MiB + 123)
    src.write_bytes(data)
    store = base / "store"
    store_path = tvix(store, "import", str(src)).stdout.decode().strip()
    return store, data, os.path.basename(store_path)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root may write /sys/class/bdi/*/read_ahead_kb")
def test_readahead_is_one_mib_once_serving(big_file: tuple[Path, bytes, str], mount: MountFactory) -> None:
    store, data, name = big_file
    m = mount(store)
    # A lookup is answered only after INIT, and the readahead follows right behind it.
    assert (m.path / name).stat().st_size == len(data)
    knob = _bdi(m.path)
    deadline = time.monotonic() + 10
    while knob.read_text().strip() != "1024" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert knob.read_text().strip() == "1024"
    assert f"readahead set to 1024 KiB on {knob}" in m.logs()
    assert hashlib.sha256((m.path / name).read_bytes()).digest() == hashlib.sha256(data).digest()


def test_rereads_come_from_the_page_cache(big_file: tuple[Path, bytes, str], mount: MountFactory) -> None:
    store, data, name = big_file
    m = mount(store)
    assert (m.path / name).read_bytes() == data
    # Every READ reply is written to /dev/fuse by the mount process: its wchar counts them.
    before = _written(m.proc.pid)
    for _ in range(5):
        assert (m.path / name).read_bytes() == data
    assert _written(m.proc.pid) - before < len(data) // 4


def _written(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise AssertionError(f"no wchar in /proc/{pid}/io")
