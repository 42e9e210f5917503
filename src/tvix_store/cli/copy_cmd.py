"""``tvix-store copy --from URL STORE_PATH...`` and ``tvix-store copy CLOSURE.json``.

With ``--from``, the store paths and their closure are copied from a Nix binary cache
(``file:///dir``, ``http(s)://host/path``), verified (NarHash, NarSize, and with
``--trusted-public-keys`` a signature) and ingested; paths already present are skipped. Without
it, tvix's form: the ``closure`` of an exportReferencesGraph JSON file (positional or
``NIX_ATTRS_JSON_FILE``) is ingested from the local filesystem. Prints nothing on stdout; a
progress line on stderr when it is a terminal; the first failure aborts and nothing is put.
"""

from __future__ import annotations

import argparse
import os
import threading

from tvix_castore.lazy_logging import get_logger

__all__ = ["register"]

log = get_logger(__name__)


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """Add the ``copy`` subcommand."""
    p = subparsers.add_parser(
        "copy",
        parents=[common],
        help="copy store paths (with their closure) from a Nix binary cache, or a closure JSON file",
        description=(
            "copy --from URL STORE_PATH...: copy from a binary cache (file:///dir, http(s)://host/path). "
            "copy FILE.json: ingest an exportReferencesGraph closure from the local filesystem."
        ),
    )
    p.add_argument("paths", nargs="*", metavar="STORE_PATH|FILE.json")
    p.add_argument("--from", dest="from_url", metavar="URL", help="binary cache to copy from")
    p.add_argument(
        "--trusted-public-keys",
        default=None,
        metavar="KEYS",
        help="whitespace-separated 'name:base64' keys; at least one must have signed each path",
    )
    p.add_argument("-j", "--jobs", type=int, default=4, metavar="N", help="NARs fetched in parallel (4)")
    p.set_defaults(func=run, parser=p)


def run(args: argparse.Namespace) -> int:
    """Run the copy."""
    parser: argparse.ArgumentParser = args.parser
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    if args.from_url is None:
        return _copy_local(args, parser)

    from nix_compat.errors import NixCompatError
    from tvix_store.binary_cache import BinaryCacheError

    # Only what it takes to start the NAR downloads is loaded first: their decompression (the
    # bulk of a copy) then runs while the rest loads and the store opens.
    from tvix_store.binary_cache.download import parse_trusted_keys, parse_wanted_path, start_downloads
    from tvix_store.binary_cache.fetch import cache_base_url

    if not args.paths:
        parser.error("copy --from URL needs at least one STORE_PATH")
    base = cache_base_url(args.from_url)
    try:
        wanted = [parse_wanted_path(p) for p in args.paths]
    except NixCompatError as exc:
        raise BinaryCacheError(f"invalid store path: {exc}") from exc
    keys = parse_trusted_keys(args.trusted_public_keys or "")
    started = start_downloads(base, wanted, keys, limit=min(4, args.jobs))
    try:
        from tvix_store.binary_cache.copy import copy_closure

        with _Session(args) as session:
            result = copy_closure(
                session.services,
                base,
                wanted,
                keys,
                jobs=args.jobs,
                on_bytes=session.on_bytes if session.progress.enabled else None,
                on_path=session.on_path,
                started=started,
            )
    finally:
        for download in started.values():  # those the copy did not get to
            download.abandon()
    log.debug("copied %d paths, %d already present", len(result.copied), len(result.present))
    return 0


def _copy_local(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from tvix_store.binary_cache.copy import copy_local_closure, parse_closure_json

    if args.trusted_public_keys is not None:
        parser.error("--trusted-public-keys is only valid with --from")
    files = args.paths or (
        [os.environ["NIX_ATTRS_JSON_FILE"]] if os.environ.get("NIX_ATTRS_JSON_FILE") else []
    )
    if len(files) != 1:
        parser.error("expected --from URL STORE_PATH..., or exactly one closure JSON file")
    with open(files[0], "rb") as f:
        entries = parse_closure_json(f.read(), files[0])
    with _Session(args) as session:
        result = copy_local_closure(session.services, entries, jobs=args.jobs, on_path=session.on_path)
    log.debug("copied %d paths, %d already present", len(result.copied), len(result.present))
    return 0


class _Session:
    """The services and the progress display of one copy; closes both."""

    def __init__(self, args: argparse.Namespace) -> None:
        from tvix_store.progress import Progress
        from tvix_store.services import construct_services

        self.services = construct_services(
            args.blob_service_addr, args.directory_service_addr, args.path_info_service_addr
        )
        self.progress = Progress("copying")
        self._lock = threading.Lock()

    def on_bytes(self, n: int) -> None:
        with self._lock:
            self.progress.add_bytes(n)

    def on_path(self, _info: object) -> None:
        self.progress.add_file()

    def __enter__(self) -> _Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.finish()
        self.services.close()
