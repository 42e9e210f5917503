"""RootNodes over a PathInfoService: the mount's top level is the set of store paths.

A name is looked up by parsing it as a store-path basename and fetching the PathInfo by its
digest; unlike tvix, the whole basename must then match (spec decision 7), so
``<hash>-wrongname`` is not found. Names that are not store-path basenames are simply absent.
"""

from __future__ import annotations

from collections.abc import Iterator

from nix_compat.errors import StorePathError
from nix_compat.store_path import StorePath
from tvix_castore.nodes import Node
from tvix_store.pathinfoservice import PathInfoService

__all__ = ["PathInfoRootNodes"]


class PathInfoRootNodes:
    """Root nodes backed by a PathInfoService (tvix ``pathinfoservice/fs/mod.rs``)."""

    def __init__(self, path_info_service: PathInfoService) -> None:
        self._service = path_info_service

    def get_by_basename(self, name: bytes) -> Node | None:
        """The root node of the store path called exactly name, or None."""
        try:
            store_path = StorePath.from_bytes(name)
        except StorePathError:
            return None
        info = self._service.get(store_path.digest)
        if info is None or info.store_path.basename().encode() != name:
            return None
        return info.node

    def list(self) -> Iterator[tuple[bytes, Node]]:
        """Every store path's basename and root node."""
        for info in self._service.list():
            yield info.store_path.basename().encode(), info.node
