"""Store paths as command arguments: what ``nix path-info`` and ``nix-store --dump`` accept.

``/nix/store/<hash>-<name>``, possibly followed by a path inside it, written with redundant
slashes, ``.`` or ``..``; or a symlink outside the store (``./result``) whose chain of targets
leads into it, as Nix follows such links.
"""

from __future__ import annotations

import os

from nix_compat.errors import StorePathError
from nix_compat.store_path import STORE_DIR, STORE_DIR_WITH_SLASH, StorePath, canon_path

__all__ = ["store_path_argument"]

# As many links as the kernel follows in one path lookup.
_MAX_LINKS = 40


def store_path_argument(arg: str) -> tuple[StorePath, str]:
    """The store path arg names and the path inside it (``""`` for the store path itself).

    Raises:
        StorePathError: arg does not lead into the store directory, or names no valid store
            path there.

    """
    path = canon_path(os.path.join(os.getcwd(), arg))
    for _ in range(_MAX_LINKS):
        if path.startswith(STORE_DIR_WITH_SLASH):
            return StorePath.from_absolute_path_full(path)
        try:
            target = os.readlink(path)
        except OSError:
            break
        path = canon_path(os.path.join(os.path.dirname(path), target))
    raise StorePathError(f"{arg!r} is not in the store directory {STORE_DIR}")
