"""``Frozen``: the base of this package's immutable value classes (nodes, chunk metadata, …).

The value classes were frozen dataclasses. ``@dataclass`` compiles each class's methods when its
module is imported (~0.3 ms a class on our machines) and imports ``inspect`` (~5 ms): about
10 ms, a third of a short ``tvix-store`` command's start-up. A ``Frozen`` subclass instead
names its fields in ``__slots__``, validates and sets them in its own ``__init__`` (with
``object.__setattr__``), and gets the rest from here: equality and hashing by class and field
values, a dataclass-style repr, ``replace``, copying and pickling, and refusal of assignment.
``nix_compat.frozen`` is this module's twin: neither package imports the other.
"""

from __future__ import annotations

from operator import attrgetter
from typing import Any, ClassVar, Self

__all__ = ["Frozen"]


def _tuple_getter(names: list[str] | tuple[str, ...]) -> Any:
    """A function giving the tuple of an object's attributes of those names (C speed from two)."""
    if len(names) > 1:
        return attrgetter(*names)
    if names:
        one = attrgetter(names[0])
        return lambda obj: (one(obj),)
    return lambda obj: ()


class Frozen:
    """Immutable, slotted value object.

    A subclass's fields are its annotated attributes, in the order written, and its ``__slots__``
    must name exactly those; ``__init__`` must take them as parameters of the same names, in
    that order. Fields named in the class keyword ``uncompared`` take no part in equality and
    hashing.
    """

    __slots__ = ()
    _names: ClassVar[tuple[str, ...]] = ()  # the fields, in order
    # Functions of an instance: its compared field values, and all of them, as tuples.
    _key: ClassVar[Any]
    _fields: ClassVar[Any]

    def __init_subclass__(cls, *, uncompared: tuple[str, ...] = (), **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # The class's own annotations, not inherited ones; inspect is what this module avoids.
        names = tuple(cls.__dict__.get("__annotations__", {}))  # noqa: RUF063
        if set(names) != set(cls.__dict__.get("__slots__", ())):
            raise TypeError(f"{cls.__qualname__}: __slots__ must name exactly the annotated fields")
        if unknown := set(uncompared) - set(names):
            raise TypeError(f"{cls.__qualname__}: uncompared names no field: {sorted(unknown)}")
        cls._names = names
        cls._key = staticmethod(_tuple_getter([name for name in names if name not in uncompared]))
        cls._fields = staticmethod(_tuple_getter(names))

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return bool(self._key(self) == self._key(other))

    def __hash__(self) -> int:
        return hash(self._key(self))

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._names)
        return f"{type(self).__qualname__}({fields})"

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"cannot assign to field {name!r} of immutable {type(self).__name__}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"cannot delete field {name!r} of immutable {type(self).__name__}")

    def __reduce__(self) -> tuple[type[Self], tuple[Any, ...]]:
        return type(self), self._fields(self)

    def replace(self, **changes: Any) -> Self:
        """A copy with the given fields changed (validated again by ``__init__``)."""
        values = dict(zip(self._names, self._fields(self), strict=True))
        values.update(changes)
        return type(self)(**values)
