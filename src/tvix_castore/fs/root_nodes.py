"""RootNodes: what the top level of a castore filesystem holds (tvix ``fs/root_nodes.rs``).

The root directory is never materialised: entries are looked up by name when the kernel asks,
and listed only when root listing is enabled. Implementations are blocking and thread-safe.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Protocol

from tvix_castore.nodes import Node

__all__ = ["DictRootNodes", "RootNodes"]


class RootNodes(Protocol):
    """Named root nodes."""

    def get_by_basename(self, name: bytes) -> Node | None:
        """The node called name at the top level, or None."""
        ...

    def list(self) -> Iterator[tuple[bytes, Node]]:
        """Every (name, node) at the top level, in no particular order."""
        ...


class DictRootNodes:
    """Root nodes from a fixed mapping, matched by exact name (tvix's BTreeMap provider)."""

    def __init__(self, nodes: Mapping[bytes, Node]) -> None:
        self._nodes = dict(nodes)

    def get_by_basename(self, name: bytes) -> Node | None:
        """The node called exactly name, or None."""
        return self._nodes.get(name)

    def list(self) -> Iterator[tuple[bytes, Node]]:
        """All entries, in name order."""
        return iter(sorted(self._nodes.items()))
