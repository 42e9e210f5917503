"""The order validators of Directory closures (spec §3.3 matrix, tvix order_validator.rs tests).

A = empty, B = {a -> A}, C = {a -> A, a' -> A}, D = {a -> A, b -> B}.
"""

from __future__ import annotations

import pytest
from fixtures import DIRECTORY_A, DIRECTORY_B, DIRECTORY_C, DIRECTORY_D, DIRECTORY_WITH_KEEP

from tvix_castore.directory import Directory
from tvix_castore.directory_graph import LeavesToRootValidator, RootToLeavesValidator
from tvix_castore.errors import DirectoryError
from tvix_castore.nodes import DirectoryNode

A, B, C, D = DIRECTORY_A, DIRECTORY_B, DIRECTORY_C, DIRECTORY_D
B_WRONG_SIZE = Directory({b"a": DirectoryNode(A.digest(), A.size() + 42)})


@pytest.mark.parametrize(
    ("inputs", "drained"),
    [
        ([A], [A]),
        ([A, B], [A, B]),
        ([A, A, C], [A, C]),
        ([A, C], [A, C]),
        ([A, B, D], [A, B, D]),
        ([A, A, B, A, B, D], [A, B, D]),
    ],
    ids=["A", "A,B", "A,A,C", "A,C", "A,B,D", "repeats"],
)
def test_leaves_to_root_ok(inputs: list[Directory], drained: list[Directory]) -> None:
    """Valid upload orders are accepted; repeats are dropped; the root is the last Directory."""
    v = LeavesToRootValidator()
    added = [v.add(d) for d in inputs]
    assert added.count(True) == len(drained)
    root, dirs = v.finalize()
    assert root == drained[-1].digest()
    assert dirs == drained


def test_leaves_to_root_disconnected() -> None:
    """A, C, B: every put succeeds, but finalize finds two roots."""
    v = LeavesToRootValidator()
    for d in (A, C, B):
        v.add(d)
    with pytest.raises(DirectoryError, match="graph has disconnected roots"):
        v.finalize()


def test_leaves_to_root_unrelated_roots() -> None:
    """Two unrelated Directories are two roots."""
    v = LeavesToRootValidator()
    v.add(A)
    v.add(DIRECTORY_WITH_KEEP)
    with pytest.raises(DirectoryError, match="graph has disconnected roots"):
        v.finalize()


def test_leaves_to_root_dangling() -> None:
    """B alone refers to an A that was never sent: refused immediately, and not added."""
    v = LeavesToRootValidator()
    with pytest.raises(DirectoryError, match="unknown directory was referenced"):
        v.add(B)
    assert len(v) == 0


def test_leaves_to_root_wrong_size() -> None:
    """A then a parent recording A's size + 42: refused with both sizes in the message."""
    v = LeavesToRootValidator()
    v.add(A)
    with pytest.raises(DirectoryError, match="'a' has wrong size, specified 42, recorded 0"):
        v.add(B_WRONG_SIZE)
    # The failed Directory was not taken in: A is still the only root.
    assert v.finalize() == (A.digest(), [A])


def test_leaves_to_root_empty() -> None:
    """Nothing added: finalize says so."""
    with pytest.raises(DirectoryError, match="got no directories"):
        LeavesToRootValidator().finalize()


@pytest.mark.parametrize(
    "inputs",
    [[A], [B, A], [C, A], [D, A, B], [D, B, A], [D, A, B, A]],
    ids=["A", "B,A", "C,A", "D,A,B", "D,B,A", "repeat"],
)
def test_root_to_leaves_ok(inputs: list[Directory]) -> None:
    """Root first, then only referenced Directories (repeats allowed) is a valid download."""
    v = RootToLeavesValidator(inputs[0].digest())
    for d in inputs:
        v.add(d)
    assert v.missing() == 0
    assert v.finalize() == list(dict.fromkeys(inputs))


def test_root_to_leaves_unknown_root() -> None:
    """Without a given root, the first Directory becomes the root."""
    v = RootToLeavesValidator()
    assert v.root is None
    assert v.add(B)
    assert v.root == B.digest()
    assert v.add(A)
    assert not v.add(A)
    assert v.finalize() == [B, A]


def test_root_to_leaves_c_then_b() -> None:
    """C then B: B was never referenced."""
    v = RootToLeavesValidator(C.digest())
    v.add(C)
    with pytest.raises(DirectoryError, match="received unexpected directory"):
        v.add(B)


def test_root_to_leaves_wrong_first() -> None:
    """Expecting B but receiving A first fails."""
    v = RootToLeavesValidator(B.digest())
    with pytest.raises(DirectoryError, match="received unexpected directory"):
        v.add(A)


def test_root_to_leaves_incomplete() -> None:
    """D then A: B is still missing when the stream ends."""
    v = RootToLeavesValidator(D.digest())
    v.add(D)
    v.add(A)
    assert v.missing() == 1
    with pytest.raises(DirectoryError, match="graph is incomplete"):
        v.finalize()


def test_root_to_leaves_wrong_size() -> None:
    """A child whose size() differs from what its parent recorded is refused on arrival."""
    v = RootToLeavesValidator(B_WRONG_SIZE.digest())
    v.add(B_WRONG_SIZE)
    with pytest.raises(DirectoryError, match="'a' has wrong size, specified 42, recorded 0"):
        v.add(A)


def test_root_to_leaves_inconsistent_references() -> None:
    """Two parents recording different sizes for the same child: the second one is refused."""
    parent = Directory({b"good": B.as_node(), b"x": B_WRONG_SIZE.as_node()})
    v = RootToLeavesValidator(parent.digest())
    v.add(parent)
    v.add(B)
    v.add(A)
    with pytest.raises(DirectoryError, match="has wrong size"):
        v.add(B_WRONG_SIZE)
