"""Process-wide malloc settings for every ``tvix-store`` command (and any mount).

They all allocate and free buffers of 128 KiB to a few MiB at a high rate: file reads and
chunks on import, FUSE replies, NAR flushes, decoded chunks, gRPC messages. glibc's malloc
gives such a buffer a fresh ``mmap`` and returns it with ``munmap`` (or trims a thread's arena
with ``MADV_DONTNEED``) until its adaptive thresholds catch up, and in threads they keep
falling back: the same pages fault in and are zeroed again and again. On our VMs a page fault
costs several microseconds: ~10% of the mount's sequential read, ~2,000 faults (~20 ms) per
stdlib NAR rendered over HTTP, and 26,000 instead of 10,000 faults (0.91 instead of 0.73 s)
for importing a 256 MiB file.

Fixed thresholds keep buffers up to ``MMAP_THRESHOLD`` in the heap and let up to
``TRIM_THRESHOLD`` of free heap stay mapped for the next buffer; memory use stays bounded by
what is alive at once plus that slack. Without glibc this does nothing.
"""

from __future__ import annotations

from tvix_castore.lazy_logging import get_logger

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "keep_large_buffers"]

log = get_logger(__name__)

MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's largest accepted value on 64-bit
TRIM_THRESHOLD = 128 * 1024 * 1024

# mallopt parameters from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def keep_large_buffers() -> bool:
    """Apply the thresholds; True when the C library took them."""
    try:
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        log.debug("malloc tuning unavailable: no mallopt in the C library")
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # mallopt answers 1 on success, 0 on a refused value.
    ok: bool = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    ok = mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and ok
    if not ok:
        log.debug("malloc tuning refused by the C library")
    return ok
