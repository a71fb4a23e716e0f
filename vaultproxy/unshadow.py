"""Data classes whose plain field defaults do not stay on the class.

``@dataclass`` keeps each plain default (``x: int = 0``) as a class attribute, and its
``__init__`` sets the same name on every instance. CPython 3.12 specialises no read of an
instance attribute that a class attribute of the same name shadows: such a read takes the
generic path, about three times a plain one (``x.error`` on a per-request object, dozens of
times per request). ``unshadowed`` removes those class attributes after the class is made;
the defaults stay where the generated ``__init__`` and ``dataclasses.fields`` keep them, so
construction, ``replace``, ``repr``, ``==`` and ``fields`` are unchanged. Only for a class
whose every instance is made by that ``__init__`` (or sets every field itself, as
stages/pool.py's ``Exchange`` path does): an instance made otherwise would lack the field
instead of reading the default (tests/unit/test_unshadow.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable


def unshadowed[T: type](cls: T) -> T:
    """``cls`` (a data class with its generated ``__init__``) without the class attributes
    of its fields' plain defaults."""
    params = getattr(cls, "__dataclass_params__", None)
    if params is None or not params.init:
        raise TypeError(f"{cls.__name__}: unshadowed needs a data class with its __init__")
    drop_defaults(cls, [f.name for f in dataclasses.fields(cls)])
    return cls


def drop_defaults(cls: type, names: Iterable[str]) -> None:
    """Remove from the data class ``cls`` the class attribute of each field in ``names`` that
    holds the field's plain default (``unshadowed``'s work). Without the check on
    ``__init__``: for a class whose own ``__init__`` sets every field itself
    (stages/flowrecord.py's ``FlowRecord``; its test asserts that it does). A name that is
    not a field of ``cls`` (a ``ClassVar``, a method) is a TypeError."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name in names:
        f = fields.get(name)
        if f is None:
            raise TypeError(f"{cls.__name__}.{name} is not a data class field")
        if name in vars(cls) and vars(cls)[name] is f.default:
            delattr(cls, name)
