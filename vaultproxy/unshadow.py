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


def unshadowed[T: type](cls: T) -> T:
    """``cls`` (a data class with its generated ``__init__``) without the class attributes
    of its fields' plain defaults."""
    params = getattr(cls, "__dataclass_params__", None)
    if params is None or not params.init:
        raise TypeError(f"{cls.__name__}: unshadowed needs a data class with its __init__")
    for f in dataclasses.fields(cls):
        if f.name in vars(cls) and vars(cls)[f.name] is f.default:
            delattr(cls, f.name)
    return cls
