"""Store paths as command arguments: what ``nix path-info`` and ``nix-store --dump`` accept.

``/nix/store/<hash>-<name>``, possibly followed by a path inside it, written with redundant
slashes, ``.`` or ``..``; or a path outside the store whose symlinks lead into it: a link such
as ``./result``, or a path through one (``./result/bin/foo``, ``./store-link/<hash>-<name>``).
Outside the store, links are followed component by component, as the kernel does; the store
directory and the path to it are taken as they are written. ``node_to_dump`` goes on inside
the store as the kernel does for ``nix-store --dump``: symlinks on the way are followed (into
other store paths too), the last component only when a slash follows it.
"""

from __future__ import annotations

import os
from collections import deque
from typing import TYPE_CHECKING

from nix_compat.errors import StorePathError
from nix_compat.store_path import STORE_DIR, STORE_DIR_WITH_SLASH, StorePath, canon_path
from tvix_castore.errors import StorageError
from tvix_castore.nodes import DirectoryNode, Node, SymlinkNode

if TYPE_CHECKING:
    from tvix_castore.directoryservice import DirectoryService
    from tvix_store.pathinfoservice import PathInfoService

__all__ = ["node_to_dump", "store_path_argument"]

# As many links as the kernel follows in one path lookup.
_MAX_LINKS = 40


def store_path_argument(arg: str) -> tuple[StorePath, str]:
    """The store path arg names and the path inside it (``""`` for the store path itself).

    Raises:
        StorePathError: arg does not lead into the store directory, or names no valid store
            path there.

    """
    # os.getcwd only for a relative arg: it fails when the working directory was removed.
    path = canon_path(_into_store(arg if arg.startswith("/") else os.path.join(os.getcwd(), arg), arg))
    if path.startswith(STORE_DIR_WITH_SLASH):
        return StorePath.from_absolute_path_full(path)
    raise StorePathError(f"{arg!r} is not in the store directory {STORE_DIR}")


def _into_store(path: str, arg: str) -> str:
    """Absolute path with its symlinks outside the store followed, the rest as written.

    Component by component, as the kernel resolves a path, until it reaches the store
    directory, a place on the way to it (``/nix``), or the end.

    Raises:
        StorePathError: more than ``_MAX_LINKS`` links.

    """
    pending = deque(path.split("/"))
    here = ""  # resolved so far: absolute, without a trailing slash ("" is the root)
    links = 0
    while pending:
        name = pending.popleft()
        if name in ("", "."):
            continue
        if name == "..":
            here = here.rpartition("/")[0]
            continue
        candidate = f"{here}/{name}"
        if candidate == STORE_DIR or candidate.startswith(STORE_DIR_WITH_SLASH):
            return "/".join([candidate, *pending])
        if STORE_DIR.startswith(candidate + "/"):
            here = candidate
            continue
        try:
            target = os.readlink(candidate)
        except OSError:  # not a link (or not there): a name like any other
            here = candidate
            continue
        links += 1
        if links > _MAX_LINKS:
            raise StorePathError(f"too many levels of symbolic links in {arg!r}")
        if target.startswith("/"):
            here = ""
        pending.extendleft(reversed(target.split("/")))
    return here or "/"


def node_to_dump(
    arg: str, path_infos: PathInfoService, directories: DirectoryService
) -> tuple[StorePath, Node]:
    """The store path arg leads into and the node ``nix-store --dump`` of arg would write.

    Raises:
        StorePathError: arg leads outside the store, into a store path that is not in it, to
            no entry, through a file as if it were a directory, or round too many symlinks;
            the message names what arg led to.
        StorageError: a Directory on the way is missing from the store.

    """
    store_path, inside = store_path_argument(arg)
    # A trailing slash (or "/.") makes the kernel follow a final symlink and want a directory.
    want_directory = arg.endswith(("/", "/."))
    # The nodes walked through from the store path's root, and their names; the last is where
    # we are. A symlink gets in only to be replaced by its target at the next step.
    walked: list[Node] = [_root_node(store_path, path_infos)]
    names: list[str] = []
    pending = _components(inside)
    links = 0

    def restart_at(path: str) -> None:
        """Go on from path, a place in the store that arg led to, from its store path's root."""
        nonlocal store_path, walked, names, pending
        try:
            store_path, rest = store_path_argument(path)
        except StorePathError as exc:
            raise StorePathError(f"{arg!r} leads to {path!r}: {exc}") from exc
        walked, names = [_root_node(store_path, path_infos)], []
        pending = _components(rest)

    while True:
        here = walked[-1]
        if isinstance(here, SymlinkNode) and (pending or want_directory):
            links += 1
            if links > _MAX_LINKS:
                raise StorePathError(f"too many levels of symbolic links in {arg!r}")
            target = os.fsdecode(here.target)
            walked.pop()
            if names:
                names.pop()
            if target.startswith("/") or not walked:
                # Absolute, or the store path itself is the link: relative to the store directory.
                base = target if target.startswith("/") else f"{STORE_DIR}/{target}"
                restart_at("/".join([base, *pending]))
            else:
                pending.extendleft(reversed(_components(target)))
            continue
        if not pending:
            break
        name = pending.popleft()
        if name == ".":
            continue
        if name == "..":
            if len(walked) > 1:
                walked.pop()
                names.pop()
                continue
            # Up into the store directory: what follows names another store path.
            if not pending:
                raise StorePathError(f"{arg!r} leads to {STORE_DIR}, which is not a store path")
            restart_at("/".join([STORE_DIR, *pending]))
            continue
        where = _absolute(store_path, names)
        if not isinstance(here, DirectoryNode):
            raise StorePathError(f"path '{where}' is not a directory (following {arg!r})")
        directory = directories.get(here.digest)
        if directory is None:
            raise StorageError(f"directory {here.digest} of '{where}' is missing from the store")
        child = directory.get(os.fsencode(name))
        if child is None:
            missing = _absolute(store_path, [*names, name])
            raise StorePathError(f"path '{missing}' does not exist in the store")
        walked.append(child)
        names.append(name)
    if want_directory and not isinstance(walked[-1], DirectoryNode):
        raise StorePathError(f"path '{_absolute(store_path, names)}' is not a directory (following {arg!r})")
    return store_path, walked[-1]


def _components(path: str) -> deque[str]:
    return deque(c for c in path.split("/") if c)


def _root_node(store_path: StorePath, path_infos: PathInfoService) -> Node:
    info = path_infos.get(store_path.digest)
    if info is None or info.store_path != store_path:
        raise StorePathError(f"path '{store_path.absolute()}' is not in the store")
    return info.node


def _absolute(store_path: StorePath, names: list[str]) -> str:
    return "/".join([store_path.absolute(), *names])
