"""``tvix-store nar STORE_PATH``: write the store path's NAR to stdout, streamed.

The bytes are those ``nix-store --dump`` writes for the original tree. As with Nix, the
argument may name a path inside a store path (its NAR is that entry's, symlinks on the way
followed) or a symlink such as ``./result`` that leads into the store.
"""

from __future__ import annotations

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
    p.add_argument("store_path", metavar="STORE_PATH", help="/nix/store/<hash>-<name>[/path/inside]")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Render the NAR."""
    from tvix_store.cli.stdio import OutputError, stdout_binary
    from tvix_store.cli.store_path_args import node_to_dump, store_path_argument
    from tvix_store.nar.renderer import write_nar
    from tvix_store.services import construct_services

    store_path_argument(args.store_path)  # a malformed argument fails before the store is opened
    services = construct_services(
        args.blob_service_addr, args.directory_service_addr, args.path_info_service_addr
    )
    try:
        _, node = node_to_dump(args.store_path, services.path_info_service, services.directory_service)
        out = stdout_binary("the NAR")

        def write(piece: bytes | memoryview) -> object:
            try:
                return out.write(piece)
            except OSError as exc:
                raise OutputError("the NAR", exc) from exc

        # stdout's write copies or writes out each piece before returning: views are safe.
        write_nar(write, node, services.blob_service, services.directory_service, zero_copy=True)
        try:
            out.flush()
        except OSError as exc:
            raise OutputError("the NAR", exc) from exc
        return 0
    finally:
        services.close()
