"""``tvix-store import PATH...`` and ``tvix-store import --nar FILE --name NAME``.

Prints one absolute store path per argument on stdout, in argument order, as each import
finishes (the paths ``nix-store --add`` would print). A progress line is drawn on stderr when
it is a terminal. The first failure aborts the command.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import argparse

__all__ = ["register"]


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """Add the ``import`` subcommand."""
    p = subparsers.add_parser(
        "import",
        parents=[common],
        help="import paths (or a NAR) into the store and print their store paths",
        description="Import files, directories and symlinks (or one NAR stream) into the store.",
    )
    p.add_argument("paths", nargs="*", metavar="PATH", help="file, directory or symlink to import")
    p.add_argument(
        "--nar",
        metavar="FILE",
        help="import the NAR in FILE ('-' for stdin; plain or xz, zstd, bzip2, gzip, lz4: detected)",
    )
    p.add_argument("--name", help="store path name for --nar")
    p.set_defaults(func=run, parser=p)


def run(args: argparse.Namespace) -> int:
    """Run the import."""
    parser: argparse.ArgumentParser = args.parser
    if args.nar is not None:
        if args.paths:
            parser.error("--nar takes no PATH arguments")
        if not args.name:
            parser.error("--nar needs --name NAME")
    elif args.name is not None:
        parser.error("--name is only valid with --nar")

    from tvix_store.import_path import import_nar, import_path, open_nar_file
    from tvix_store.progress import Progress
    from tvix_store.services import construct_services

    services = construct_services(
        args.blob_service_addr, args.directory_service_addr, args.path_info_service_addr
    )
    try:
        if args.nar is not None:
            name = str(args.name)
            progress = Progress(f"importing NAR as {name}")
            stream = open_nar_file(args.nar)
            try:
                info = import_nar(
                    services,
                    stream,
                    name,
                    progress if progress.enabled else None,
                    source="stdin" if args.nar == "-" else repr(args.nar),
                )
            finally:
                progress.finish()
                stream.close()
            _emit(info.store_path.absolute())
            return 0
        for path in args.paths:
            progress = Progress(f"importing {path}")
            try:
                info = import_path(services, path, progress if progress.enabled else None)
            finally:
                progress.finish()
            _emit(info.store_path.absolute())
        return 0
    finally:
        services.close()


def _emit(line: str) -> None:
    from tvix_store.cli.stdio import write_stdout_text

    write_stdout_text("the store path", line + "\n")
