"""``tvix-store`` with Nix's durability: the contents it stores are left to the kernel to write.

Run as ``python -P nosync.py ARGS...`` (``-P``: nothing beside this file shadows a package): the
command ``tvix-store ARGS...``, except that the LMDB store is never synced to disk (neither the
syncs around a PathInfo put nor an import's background write-back). ``nix-store --add`` syncs
only its SQLite database, not the files it adds; the store section runs this beside our real
import, so that the table shows what our durability costs against Nix.
"""

from __future__ import annotations

import sys


def main() -> int:
    import tvix_castore._lmdb_env as lmdb_env
    from tvix_store import writeback
    from tvix_store.cli import main as tvix_store_main

    def no_sync(self: object) -> None:
        return None

    lmdb_env.LmdbStore.sync = no_sync  # type: ignore[method-assign]
    writeback.BackgroundWriteback._flush = no_sync  # type: ignore[method-assign]
    return tvix_store_main()


if __name__ == "__main__":
    sys.exit(main())
