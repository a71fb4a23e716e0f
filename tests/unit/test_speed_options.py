"""An option read (seam/options.py) gives what mitmproxy's ``_Option.current`` gives: seeded
values of every kind, set and unset, compared by value and by identity where ``deepcopy``
gives the object itself; anything else still gets its own copy."""

from __future__ import annotations

import copy
import random
from collections.abc import Sequence
from typing import Any, Optional

import pytest
from mitmproxy import optmanager

from vaultproxy.seam import need, options


class Tagged(int):
    def __deepcopy__(self, memo: Any) -> Tagged:
        return Tagged(int(self) + 1)  # a subclass whose copy differs


def _stock() -> Any:
    assert options.install()
    return options.STOCK["current"]


def _value(rng: random.Random) -> tuple[Any, Any]:
    """A (typespec, value) pair."""
    kind = rng.randrange(10)
    if kind == 0:
        return bool, rng.random() < 0.5
    if kind == 1:
        return int, rng.randrange(-5, 10**6)
    if kind == 2:
        return float, rng.random()
    if kind == 3:
        return str, "".join(rng.choice("abc/:") for _ in range(rng.randrange(8)))
    if kind == 4:
        return bytes | None, rng.choice((None, b"x" * rng.randrange(4)))
    if kind == 5:
        return str | None, None
    if kind == 6:
        return list[str], [str(rng.randrange(9)) for _ in range(rng.randrange(4))]
    if kind == 7:
        items: list[Any] = [str(rng.randrange(9)) for _ in range(rng.randrange(3))]
        if rng.random() < 0.5:
            items.append(["nested"])  # deepcopy copies this tuple; of str only, it does not
        return tuple[Any, ...], tuple(items)
    if kind == 8:
        return int, Tagged(rng.randrange(100))
    return typing_sequence(), ["a", ["b"]]


def typing_sequence() -> Any:
    from collections.abc import Sequence

    return Sequence[Any]


@pytest.mark.parametrize("seed", range(20))
def test_same_value_as_mitmproxys(seed: int) -> None:
    rng = random.Random(seed)
    stock = _stock()
    for _ in range(100):
        typespec, default = _value(rng)
        opt: Any = object.__new__(optmanager._Option)  # any value, without the type check
        opt.name, opt.typespec, opt._default, opt.value = "o", typespec, default, optmanager.unset
        if rng.random() < 0.5:
            opt.value = _value(rng)[1] if rng.random() < 0.3 else copy.deepcopy(default)
        want, got = stock(opt), opt.current()
        assert type(got) is type(want) and got == want
        v = opt._default if opt.value is optmanager.unset else opt.value
        assert (got is v) == (want is v)  # the object itself exactly where deepcopy gives it
        if type(v) in options.ATOMIC:
            assert got is v
        assert (type(v) is Tagged) == (got != v)


def test_through_the_option_manager() -> None:
    _stock()
    opts = optmanager.OptManager()
    opts.add_option("flag", bool, False, "a flag")
    opts.add_option("names", Sequence[str], ["a"], "names")
    opts.add_option("maybe", Optional[str], None, "maybe")  # noqa: UP045 - mitmproxy's spelling
    assert opts.flag is False and opts.maybe is None
    names = opts.names
    names.append("b")  # the caller's copy: the option keeps its value
    assert opts.names == ["a"]
    opts.update(flag=True, maybe="x")
    assert opts.flag is True and opts.maybe == "x"


def test_fingerprints() -> None:
    stock = _stock()
    assert need.fingerprint(stock) == options.FINGERPRINTS["current"][0]
    assert need.fingerprint(optmanager._Option.default.fget) == options.FINGERPRINTS["default"][0]
    if need.code_magic_matches():
        assert need.code_fingerprint(stock) == options.FINGERPRINTS["current"][1]


def test_a_changed_current_stays_mitmproxys(monkeypatch: pytest.MonkeyPatch) -> None:
    def current(self: Any) -> Any:  # a release that copies differently
        return copy.copy(self.value)

    _stock()
    monkeypatch.setattr(options, "_installed", False)
    monkeypatch.setattr(optmanager._Option, "current", current)
    assert not options.install()
    assert optmanager._Option.current is current


def test_switched_off_stays_mitmproxys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(options, "_installed", False)
    monkeypatch.setenv(options.ENV, "0")
    before = optmanager._Option.current
    assert not options.install()
    assert optmanager._Option.current is before
