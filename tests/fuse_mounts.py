"""Helpers for tests that mount the store with FUSE: start ``tvix-store mount``, find mounts.

Used by tests/fuse (whose conftest provides the ``mount`` fixture) and by any other test that
needs a real mount. A module of its own, not a conftest, so that importing it never depends on
which ``conftest`` module pytest loaded first.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tvix_cli import TVIX_STORE, cli_env


def fuse_problem() -> str | None:
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse does not exist"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is not installed (apt package fuse3)"
    try:
        os.close(os.open("/dev/fuse", os.O_RDWR))
    except OSError as exc:
        return f"/dev/fuse cannot be opened: {exc.strerror}"
    return None


def is_mounted(path: Path) -> bool:
    target = str(path.absolute())
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == target for line in f)


def force_unmount(path: Path) -> None:
    if is_mounted(path):
        subprocess.run(["fusermount3", "-u", "-z", str(path)], capture_output=True, check=False)
    if is_mounted(path):
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


@dataclass
class Mount:
    """A running ``tvix-store mount`` process and where it is mounted."""

    proc: subprocess.Popen[bytes]
    path: Path
    log: Path

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        """Signal the mount process by PID and wait for it; returns its exit status."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
        return self.proc.wait(timeout)

    def logs(self) -> str:
        return self.log.read_text(errors="replace")


def start_mount(
    store: Path, mnt: Path, *args: str, wait: bool = True, env_extra: dict[str, str] | None = None
) -> Mount:
    """Start ``tvix-store mount mnt args…`` on the embedded store in directory store."""
    log = mnt.parent / f"{mnt.name}.log"
    env = cli_env(store, **(env_extra or {}))
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [TVIX_STORE, "mount", str(mnt), "--threads", "4", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    m = Mount(proc, mnt, log)
    if wait:
        deadline = time.monotonic() + 30
        while not is_mounted(mnt):
            if proc.poll() is not None:
                raise AssertionError(f"mount exited with {proc.returncode}: {m.logs()}")
            if time.monotonic() > deadline:
                m.stop(signal.SIGKILL)
                raise AssertionError(f"mount did not appear: {m.logs()}")
            time.sleep(0.02)
    return m


MountFactory = Callable[..., Mount]
