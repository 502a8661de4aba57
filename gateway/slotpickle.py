"""Cheap pickling for the frozen, slotted dataclasses that cross process boundaries.

Theory of operation: ``@dataclass(frozen=True, slots=True)`` pickles through ``_dataclass_getstate`` /
``_dataclass_setstate``, which call :func:`dataclasses.fields` on every object, both ways. The ingress
workers send every classification (a :class:`~gateway.pipeline.Classified` with its events) to the
gateway process, so that cost is paid per message on both sides. :func:`fast_pickle` gives such a class
a ``__reduce__`` that reads the field values with one precomputed :func:`operator.attrgetter` and
rebuilds the object by storing each value through its slot descriptor (no ``__init__``, no
``__post_init__``: the object was valid when it was pickled). The pickled form names the class and
:func:`_restore`, so both sides must run the same code, which spawned workers do.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from operator import attrgetter
from typing import Any, TypeVar

__all__ = ["fast_pickle"]

_T = TypeVar("_T")
_new = object.__new__
# class -> the slot setters of its fields, in field order (filled by fast_pickle at import time)
_SETTERS: dict[type, tuple[Callable[[Any, Any], None], ...]] = {}


def _restore(cls: type[_T], values: Sequence[Any]) -> _T:
    obj = _new(cls)
    for setter, value in zip(_SETTERS[cls], values, strict=True):
        setter(obj, value)
    return obj


def fast_pickle(cls: type[_T]) -> type[_T]:
    """Class decorator (put it above ``@dataclass(..., slots=True)``): pickle by field values."""
    if not dataclasses.is_dataclass(cls) or "__slots__" not in cls.__dict__:
        raise TypeError(f"{cls.__name__}: fast_pickle needs a slotted dataclass")
    names = tuple(f.name for f in dataclasses.fields(cls))
    _SETTERS[cls] = tuple(getattr(cls, name).__set__ for name in names)
    get: Callable[[Any], Any]
    if len(names) == 1:  # attrgetter of one name returns the value, not a tuple
        one = attrgetter(names[0])

        def get(obj: Any) -> tuple[Any, ...]:
            return (one(obj),)

    else:
        get = attrgetter(*names)

    def __reduce__(self: Any) -> tuple[Any, ...]:
        if type(self) is not cls:  # a subclass has fields of its own: it needs its own decorator
            raise TypeError(f"{type(self).__name__} inherits fast pickling from {cls.__name__}; decorate it too")
        return _restore, (cls, get(self))

    cls.__reduce__ = __reduce__  # type: ignore[method-assign]
    return cls
