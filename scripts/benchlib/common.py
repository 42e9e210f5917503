"""Shared benchmark helpers: the result row, timing, peak RSS of a child, test data."""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TVIX_STORE = str(REPO / ".venv" / "bin" / "tvix-store")


@dataclass
class Row:
    """One figure: ours, the baseline, their ratio and the target the ratio is held to.

    ``ratio`` is ours/baseline; ``better`` says whether lower ("lower") or higher ("higher") is
    better, so that the target can be checked.
    """

    section: str
    figure: str
    ours: float
    baseline: float | None
    unit: str
    target: float | None = None
    better: str = "lower"
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.baseline in (None, 0):
            return None
        return self.ours / self.baseline

    @property
    def verdict(self) -> str:
        if self.target is None:
            return ""
        value = self.ratio if self.baseline is not None else self.ours
        if value is None:
            return "?"
        ok = value <= self.target if self.better == "lower" else value >= self.target
        return "ok" if ok else "MISS"

    @staticmethod
    def table(rows: Sequence[Row]) -> str:
        head = ("section", "figure", "ours", "baseline", "ratio", "target", "")
        lines = [head]
        for r in rows:
            tgt = "" if r.target is None else ("≤" if r.better == "lower" else "≥") + f"{r.target:g}"
            lines.append(
                (
                    r.section,
                    r.figure,
                    f"{r.ours:.3f} {r.unit}",
                    "" if r.baseline is None else f"{r.baseline:.3f} {r.unit}",
                    "" if r.ratio is None else f"{r.ratio:.2f}",
                    tgt,
                    r.verdict + (f" {r.note}" if r.note else ""),
                )
            )
        widths = [max(len(str(x[i])) for x in lines) for i in range(len(head))]
        out = []
        for i, ln in enumerate(lines):
            out.append("  ".join(str(c).ljust(w) for c, w in zip(ln, widths, strict=True)).rstrip())
            if i == 0:
                out.append("  ".join("-" * w for w in widths))
        return "\n".join(out)


@dataclass
class BenchContext:
    """Where a run keeps its data; caches shared inputs between sections."""

    work: Path
    cache: dict[str, object] = field(default_factory=dict)

    def dir(self, name: str) -> Path:
        p = self.work / name
        p.mkdir(parents=True, exist_ok=True)
        return p

    def stdlib_tree(self) -> Path:
        """A copy of Python's stdlib (~40 MB of real files), made once per run."""
        dst = self.work / "inputs" / "stdlib"
        if not dst.exists():
            src = Path(sysconfig.get_paths()["stdlib"])
            shutil.copytree(
                src, dst, symlinks=True,
                ignore=shutil.ignore_patterns("__pycache__", "site-packages", "*.pyc"),
            )
        return dst

    def random_file(self, name: str, size: int, seed: int = 0) -> Path:
        """A file of pseudo-random bytes (fast to make, incompressible, not dedupable)."""
        p = self.work / "inputs" / name
        if not p.exists():
            p.parent.mkdir(parents=True, exist_ok=True)
            with open(p, "wb") as f:
                remaining = size
                block = 1 << 20
                i = seed
                while remaining:
                    n = min(block, remaining)
                    f.write(os.urandom(n))
                    remaining -= n
                    i += 1
        return p


def timed(fn: Callable[[], object], repeat: int = 1) -> float:
    """Best wall time of fn over repeat runs, in seconds."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def run(cmd: Sequence[str], **kw: object) -> subprocess.CompletedProcess[bytes]:
    """Run a command, raising with its stderr when it fails."""
    res = subprocess.run(list(cmd), capture_output=True, **kw)  # type: ignore[call-overload]
    if res.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({res.returncode}): {res.stderr.decode(errors='replace')}")
    return res  # type: ignore[no-any-return]


def peak_rss_of(cmd: Sequence[str], env: dict[str, str] | None = None) -> tuple[float, bytes]:
    """Run cmd to completion; return (peak RSS of that child in MiB, its stdout)."""
    import tempfile

    with tempfile.TemporaryFile() as out:
        pid = os.fork()
        if pid == 0:  # child: stdout into the temp file, so the table stays clean
            try:
                os.dup2(out.fileno(), 1)
                os.execvpe(cmd[0], list(cmd), env or dict(os.environ))
            finally:
                os._exit(127)
        _, status, usage = os.wait4(pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"{cmd} failed with {status}")
        out.seek(0)
        return usage.ru_maxrss / 1024, out.read()


def drop_caches() -> bool:
    """Drop the page cache (root only); returns whether it worked."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def self_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def python() -> str:
    return sys.executable
