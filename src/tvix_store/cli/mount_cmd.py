"""``tvix-store mount MOUNTPOINT``: the store as a read-only /nix/store, in the foreground.

Runs until SIGINT/SIGTERM/SIGHUP or an external ``umount``, then exits 0. Each store path is the entry
``<hash>-<name>`` at the top; directories and file chunks are fetched when first touched.
"""

from __future__ import annotations

import argparse
import os

__all__ = ["register"]


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off", ""})


def _env_flag(name: str, parser: argparse.ArgumentParser) -> bool:
    """A boolean environment variable as tvix's flags read them (true/false, 1/0, yes/no, on/off).

    Another value is a usage error, as clap makes it.
    """
    value = os.environ.get(name, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    parser.error(f"{name}: not a boolean: {os.environ[name]!r} (use true or false)")


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """Add the ``mount`` subcommand."""
    p = subparsers.add_parser(
        "mount",
        parents=[common],
        help="mount the store read-only with FUSE (foreground)",
        description="Mount the store read-only at MOUNTPOINT; runs until unmounted or interrupted.",
    )
    p.add_argument("mountpoint", metavar="MOUNTPOINT", help="an existing, empty directory")
    p.add_argument("-l", "--list-root", action="store_true", help="allow listing the top level (off: EPERM)")
    p.add_argument(
        "--allow-other",
        action="store_true",
        default=None,
        help="let other users access the mount (env ALLOW_OTHER=true; non-root users need "
        "user_allow_other in /etc/fuse.conf)",
    )
    p.add_argument(
        "--show-xattr",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="expose user.tvix.castore.{blob,directory}.digest xattrs (default on)",
    )
    p.add_argument(
        "--threads",
        type=_positive,
        default=None,
        metavar="N",
        help="worker threads for store requests (env THREADS; default: number of CPUs)",
    )
    p.set_defaults(func=run, parser=p)


def run(args: argparse.Namespace) -> int:
    """Mount and serve until unmounted."""
    from tvix_castore.fs.mount import mount
    from tvix_castore.fs.vfs import Vfs
    from tvix_store.root_nodes import PathInfoRootNodes
    from tvix_store.services import construct_services

    threads = args.threads
    if threads is None:
        env = os.environ.get("THREADS", "")
        try:
            threads = _positive(env) if env.strip() else (os.cpu_count() or 4)
        except argparse.ArgumentTypeError as exc:
            args.parser.error(f"THREADS: {exc}")
    allow_other = args.allow_other if args.allow_other is not None else _env_flag("ALLOW_OTHER", args.parser)
    services = construct_services(
        args.blob_service_addr, args.directory_service_addr, args.path_info_service_addr
    )
    try:
        vfs = Vfs(
            PathInfoRootNodes(services.path_info_service),
            services.blob_service,
            services.directory_service,
            list_root=args.list_root,
            show_xattr=args.show_xattr,
        )
        mount(vfs, args.mountpoint, threads=threads, allow_other=allow_other)
    finally:
        services.close()
    return 0
