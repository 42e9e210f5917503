"""The malloc settings of the long-running commands are taken by this machine's C library."""

from __future__ import annotations

import ctypes
import subprocess
import sys

from tvix_castore.allocator import keep_large_buffers


def test_glibc_takes_the_thresholds() -> None:
    """On glibc (Debian), mallopt accepts both settings, and applying them twice is harmless."""
    assert ctypes.CDLL(None).gnu_get_libc_version  # this is glibc
    assert keep_large_buffers() is True
    assert keep_large_buffers() is True


def test_flush_buffers_in_a_thread_stop_faulting_in() -> None:
    """The pattern of a NAR writer flushing from a request thread (a bytearray grown to 512 KiB in
    small pieces, copied out, cleared) costs fresh page faults on every round with glibc's
    defaults, and none once the thresholds are set.

    (At 256 KiB, whether the defaults fault depends on the heap's layout, which changes with
    what the interpreter happened to import before.)"""
    probe = """
import resource, sys, threading
from tvix_castore.allocator import keep_large_buffers
if sys.argv[1] == "tuned":
    keep_large_buffers()
piece = b"x" * 3000
def rounds(n):
    buf = bytearray()
    kept = []
    for _ in range(n):
        while len(buf) < 512 * 1024:
            buf += piece
        kept.append(bytes(buf))
        buf.clear()
        if len(kept) > 3:
            kept.pop(0)
def work():
    rounds(5)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    rounds(100)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
t = threading.Thread(target=work)
t.start()
t.join()
"""
    faults = {
        mode: int(subprocess.run([sys.executable, "-c", probe, mode], capture_output=True, check=True).stdout)
        for mode in ("default", "tuned")
    }
    assert faults["default"] > 1000, faults
    assert faults["tuned"] < 100, faults
