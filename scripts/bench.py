#!/usr/bin/env python3
"""Benchmark driver: runs the sections in scripts/benchlib/ and prints one table.

Each section module defines ``SECTION`` (its name) and ``run(ctx) -> list[Row]``; every row
carries our figure and a baseline measured in the same run (Nix, native disk, a trivial FUSE
filesystem…), the ratio, and the target it is checked against.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib.common import BenchContext, Row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("sections", nargs="*", help="sections to run (default: all)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    import benchlib

    # A section is a module with SECTION and run(); helpers such as common or memfs are not.
    names = sorted(
        m.name
        for m in pkgutil.iter_modules(benchlib.__path__)
        if hasattr(importlib.import_module(f"benchlib.{m.name}"), "SECTION")
    )
    wanted = args.sections or names
    unknown = set(wanted) - set(names)
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))} (have: {', '.join(names)})")
    rows: list[Row] = []
    failed = []
    with tempfile.TemporaryDirectory(prefix="tvix-bench-", dir="/var/tmp") as tmp:
        ctx = BenchContext(Path(tmp))
        for name in wanted:
            module = importlib.import_module(f"benchlib.{name}")
            print(f"== {module.SECTION} ...", file=sys.stderr, flush=True)
            t0 = time.monotonic()
            try:
                rows.extend(module.run(ctx))
            except Exception:
                traceback.print_exc()
                failed.append(name)
            print(f"   ({time.monotonic() - t0:.1f}s)", file=sys.stderr, flush=True)
        if args.keep:
            print(f"work directory kept: {tmp}", file=sys.stderr)
            input("press enter to delete it ")
    print(Row.table(rows))
    if failed:
        print(f"sections that failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
