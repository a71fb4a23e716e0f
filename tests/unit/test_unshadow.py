"""``unshadowed`` data classes (vaultproxy/unshadow.py): no class attribute shadows a field,
and every way the class is used reads as with the plain data class."""

from __future__ import annotations

import dataclasses
import random
from typing import Any, ClassVar

import pytest

from vaultproxy.core.decide import Decision, Facts, Plan
from vaultproxy.core.state import ProxyState
from vaultproxy.stages.pool import Exchange
from vaultproxy.unshadow import unshadowed

CLASSES = (Facts, Plan, Decision, ProxyState, Exchange)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_no_field_default_stays_on_the_class(cls: type) -> None:
    fields = dataclasses.fields(cls)
    assert any(f.default is not dataclasses.MISSING for f in fields)  # (something to remove)
    for f in fields:
        assert f.name not in vars(cls), f.name
    assert cls.__dataclass_params__.init  # type: ignore[attr-defined]


def _reference(cls: type) -> type:
    """The same data class, its defaults left on the class."""
    params = cls.__dataclass_params__  # type: ignore[attr-defined]
    spec = [(f.name, f.type, dataclasses.field(
        default=f.default, default_factory=f.default_factory, init=f.init, repr=f.repr,
        compare=f.compare)) for f in dataclasses.fields(cls)]
    return dataclasses.make_dataclass(cls.__name__, spec, frozen=params.frozen, eq=params.eq)


def test_instances_read_as_the_plain_data_class() -> None:
    """Seeded: each class made with a seeded part of its fields given, the rest defaulted:
    the same attributes (every field in the instance itself), ``repr``, ``==``, ``replace``
    and ``fields`` as the same data class with its defaults on the class."""
    rng = random.Random(13)
    values: list[Any] = [None, 0, 1, "x", b"y", (), 2.5, True]
    for cls in (Facts, Plan, Decision, Exchange):
        ref = _reference(cls)
        fields = dataclasses.fields(cls)
        for _ in range(200):
            given = {f.name: rng.choice(values) for f in fields
                     if f.init and (f.default is dataclasses.MISSING
                                    and f.default_factory is dataclasses.MISSING
                                    or rng.random() < 0.5)}
            got, want = cls(**given), ref(**given)
            for f in fields:
                assert f.name in vars(got), f.name  # (read from the instance: specialised)
                assert getattr(got, f.name) == getattr(want, f.name), f.name
            assert repr(got).split("(", 1)[1] == repr(want).split("(", 1)[1]
            assert got == cls(**given) and (got == want) is False  # (eq compares classes)
            name = rng.choice([f.name for f in fields if f.init])
            value = rng.choice(values)
            assert getattr(dataclasses.replace(got, **{name: value}), name) == value


def test_only_data_classes_with_their_init() -> None:
    """The negative twin: a class not made by a generated ``__init__`` is refused (its
    instances would lack the field); an instance made without ``__init__`` does lack it."""

    @dataclasses.dataclass(init=False)
    class Own:
        x: int = 0

    with pytest.raises(TypeError, match="needs a data class"):
        unshadowed(Own)
    with pytest.raises(TypeError):
        unshadowed(type("Plain", (), {"x": 0}))
    bare = object.__new__(Plan)
    with pytest.raises(AttributeError):
        bare.drop  # noqa: B018 - the read is the test


def test_drop_defaults_removes_the_named_defaults_only() -> None:
    """``drop_defaults`` (also FlowRecord's, whose own ``__init__`` sets every field): the
    named fields' defaults go, the others and a ClassVar stay; a name that is not a field
    (a ClassVar, a method) is refused, and nothing is removed then. Twin: a class attribute
    that is not the field's default (replaced after the class was made) stays."""
    from vaultproxy.stages.flowrecord import FlowRecord
    from vaultproxy.unshadow import drop_defaults

    @dataclasses.dataclass
    class C:
        k: ClassVar[int] = 7  # (ClassVar imported at the module's top: so dataclasses sees it)
        a: int = 1
        b: str = "b"
        c: int = 3

    drop_defaults(C, ["a", "b"])
    assert "a" not in vars(C) and "b" not in vars(C) and vars(C)["c"] == 3 and C.k == 7
    assert (C().a, C().b, C().c) == (1, "b", 3)
    for bad in ("k", "nope", "__init__"):
        with pytest.raises(TypeError, match="not a data class field"):
            drop_defaults(C, [bad])
    assert C.k == 7
    C.c = 4  # type: ignore[misc]  # (no longer the field's default)
    drop_defaults(C, ["c"])
    assert vars(C)["c"] == 4
    for f in dataclasses.fields(FlowRecord):
        assert f.name not in vars(FlowRecord), f.name
