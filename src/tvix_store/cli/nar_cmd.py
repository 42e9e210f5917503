"""``tvix-store nar STORE_PATH``: write the store path's NAR to stdout, streamed.

The bytes are those ``nix-store --dump`` writes for the original tree.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import argparse

__all__ = ["register"]


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """Add the ``nar`` subcommand."""
    p = subparsers.add_parser(
        "nar",
        parents=[common],
        help="write the NAR of a store path to stdout",
        description="Write the NAR serialisation of STORE_PATH to stdout (as nix-store --dump does).",
    )
    p.add_argument("store_path", metavar="STORE_PATH", help="/nix/store/<hash>-<name>")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Render the NAR."""
    from nix_compat.store_path import StorePath
    from tvix_store.nar.renderer import write_nar
    from tvix_store.services import construct_services

    store_path = StorePath.from_absolute_path(args.store_path.rstrip("/"))
    services = construct_services(
        args.blob_service_addr, args.directory_service_addr, args.path_info_service_addr
    )
    try:
        info = services.path_info_service.get(store_path.digest)
        if info is None or info.store_path != store_path:
            print(f"error: path '{store_path.absolute()}' is not in the store", file=sys.stderr)
            return 1
        out = sys.stdout.buffer
        # stdout's write copies or writes out each piece before returning: views are safe.
        write_nar(out.write, info.node, services.blob_service, services.directory_service, zero_copy=True)
        out.flush()
        return 0
    finally:
        services.close()
