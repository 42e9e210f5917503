"""``Frozen``, the base of the value classes, in both its twins (nix_compat and tvix_castore)."""

from __future__ import annotations

import copy
import pickle
from pathlib import Path
from typing import Any

import pytest

import nix_compat.frozen
import tvix_castore.frozen
from nix_compat.errors import StorePathError
from nix_compat.store_path import StorePath
from tvix_castore.blobservice import ChunkMeta
from tvix_castore.digests import B3Digest
from tvix_castore.nodes import DirectoryNode, FileNode
from tvix_store.path_info import PathInfo

TWINS = [nix_compat.frozen.Frozen, tvix_castore.frozen.Frozen]
DIGEST = B3Digest(bytes(range(32)))


def _point_class(base: Any) -> Any:
    class Point(base, uncompared=("label",)):  # type: ignore[misc,valid-type]
        """A test value: two compared fields and one that is not."""

        __slots__ = ("label", "x", "y")
        x: int
        y: int
        label: str

        def __init__(self, x: int, y: int, label: str = "") -> None:
            if x < 0:
                raise ValueError("x must not be negative")
            object.__setattr__(self, "x", x)
            object.__setattr__(self, "y", y)
            object.__setattr__(self, "label", label)

    return Point


@pytest.mark.parametrize("base", TWINS)
def test_equality_and_hash_follow_the_compared_fields(base: Any) -> None:
    point = _point_class(base)
    a, b = point(1, 2, "a"), point(1, 2, "b")
    assert a == b and hash(a) == hash(b)  # label is uncompared
    assert a != point(1, 3) and a != point(2, 2)
    assert len({a, b, point(2, 2)}) == 2


@pytest.mark.parametrize("base", TWINS)
def test_repr_lists_every_field_in_order(base: Any) -> None:
    assert repr(_point_class(base)(1, 2, "p")).endswith("Point(x=1, y=2, label='p')")


@pytest.mark.parametrize("base", TWINS)
def test_fields_cannot_be_assigned_or_deleted(base: Any) -> None:
    p = _point_class(base)(1, 2)
    with pytest.raises(AttributeError, match="cannot assign to field 'x'"):
        p.x = 5
    with pytest.raises(AttributeError, match="cannot delete field 'y'"):
        del p.y
    with pytest.raises(AttributeError):
        p.other = 1  # slots: no instance dict either
    assert (p.x, p.y) == (1, 2)


@pytest.mark.parametrize("base", TWINS)
def test_replace_validates_again(base: Any) -> None:
    p = _point_class(base)(1, 2, "p")
    q = p.replace(y=7)
    assert (q.x, q.y, q.label) == (1, 7, "p") and (p.x, p.y) == (1, 2)
    with pytest.raises(ValueError, match="negative"):
        p.replace(x=-1)
    with pytest.raises(TypeError):
        p.replace(z=1)


@pytest.mark.parametrize("base", TWINS)
def test_slots_must_name_the_annotated_fields(base: Any) -> None:
    with pytest.raises(TypeError, match="__slots__ must name exactly the annotated fields"):

        class Broken(base):  # type: ignore[misc,valid-type]
            __slots__ = ("x",)
            x: int
            y: int

    with pytest.raises(TypeError, match=r"uncompared names no field: \['extar'\]"):

        class Misspelt(base, uncompared=("extar",)):  # type: ignore[misc,valid-type]
            __slots__ = ("extra",)
            extra: int


def test_different_classes_with_equal_fields_differ() -> None:
    # A tuple-based record would call these equal; a DirectoryNode is no chunk.
    assert DirectoryNode(DIGEST, 5) != ChunkMeta(DIGEST, 5)
    assert DirectoryNode(DIGEST, 5) == DirectoryNode(bytes(DIGEST), 5)
    assert FileNode(DIGEST, 5) != FileNode(DIGEST, 5, executable=True)


def test_real_value_classes_copy_and_pickle() -> None:
    path = StorePath.from_bytes("00bgd045z0d4icpbc2yyz4gx48ak44la-net-tools-1.60_p20170221182432")
    info = PathInfo(path, FileNode(DIGEST, 3), 120, bytes(32), references=[path], extra={"k": "v"})
    for value in (path, info, FileNode(DIGEST, 3, True)):
        assert copy.copy(value) == value and copy.deepcopy(value) == value
        assert pickle.loads(pickle.dumps(value)) == value
    assert pickle.loads(pickle.dumps(info)).extra == {"k": "v"}
    assert info.references == (path,)  # an iterable argument is kept as a tuple


def test_validation_runs_on_construction() -> None:
    with pytest.raises(StorePathError):
        StorePath(bytes(19), "x")
    with pytest.raises(StorePathError):
        StorePath(bytes(20), "not/a name")


def test_the_twins_differ_only_in_their_docstrings() -> None:
    """The two copies exist because neither package may import the other: keep them in step."""

    def body(module: Any) -> str:
        text = Path(module.__file__).read_text()
        return text[text.index('"""', 3) + 3 :]  # after the module docstring

    assert body(nix_compat.frozen) == body(tvix_castore.frozen)
