"""Real FUSE mounts for the tests in this folder.

Every mount is the real ``tvix-store mount`` console script in a subprocess (pyfuse3's own
tests do the same), over an LMDB store in the test's tmp dir that the test seeded first. The
mount fixture waits until the kernel shows the mount, and in teardown always ends the process
by its PID and lazily unmounts whatever is left. Tests skip with the exact reason when the
machine cannot mount FUSE filesystems.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from fuse_mounts import Mount, MountFactory, force_unmount, fuse_problem, start_mount

_PROBLEM = fuse_problem()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).is_relative_to(here):
            item.add_marker(pytest.mark.fuse)
            if _PROBLEM is not None:
                item.add_marker(pytest.mark.skip(reason=f"FUSE unavailable: {_PROBLEM}"))


@pytest.fixture
def mount(tmp_path: Path) -> Iterator[MountFactory]:
    """A factory ``mount(store, *args, mnt=None, env_extra=None)``; every mount is torn down after
    the test."""
    started: list[Mount] = []
    counter = iter(range(1000))

    def factory(
        store: Path,
        *args: str,
        mnt: Path | None = None,
        wait: bool = True,
        env_extra: dict[str, str] | None = None,
    ) -> Mount:
        if mnt is None:
            mnt = tmp_path / f"mnt{next(counter)}"
            mnt.mkdir()
        m = start_mount(store, mnt, *args, wait=wait, env_extra=env_extra)
        started.append(m)
        return m

    yield factory
    for m in started:
        if m.proc.poll() is None:
            os.kill(m.proc.pid, signal.SIGTERM)
            try:
                m.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.kill(m.proc.pid, signal.SIGKILL)
                m.proc.wait(20)
        force_unmount(m.path)
