"""``tvix-store`` with Nix's durability: the contents it stores are left to the kernel to write.

Run as ``python -P nosync.py ARGS...`` (``-P``: nothing beside this file shadows a package): the
command ``tvix-store ARGS...``, except that the LMDB store is never synced to disk (neither each
commit's flush nor the syncs around a PathInfo put).
``nix-store --add`` syncs only its SQLite database, not the files it adds; the store section
runs this beside our real import, so that the table shows what our durability costs against
Nix.
"""

from __future__ import annotations

import sys


def main() -> int:
    import lmdb

    import tvix_castore._lmdb_env as lmdb_env
    from tvix_store.cli import main as tvix_store_main

    def no_sync(path: str, env: object) -> None:
        return None

    open_synced = lmdb.open

    def open_unsynced(path: bytes, **options: object) -> lmdb.Environment:
        return open_synced(path, **{**options, "sync": False})

    lmdb.open = open_unsynced  # type: ignore[assignment]
    lmdb_env._sync = no_sync  # the syncs of durable writes (PathInfos) and of other stores
    return tvix_store_main()


if __name__ == "__main__":
    sys.exit(main())
