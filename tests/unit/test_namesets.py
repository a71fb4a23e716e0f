"""net/namesets.py: the bounded table of header-name sets both pattern readers share
(net/h1pool.py for the upstream's heads, seam/lean.py for the agent's)."""

from __future__ import annotations

import pytest

from vaultproxy.net import h1pool, namesets
from vaultproxy.net.namesets import NameSets
from vaultproxy.seam import lean


def _sets(**kw: float) -> NameSets[tuple[bytes, ...]]:
    args = {"max_sets": 4, "max_names": 3, "max_name_bytes": 12, "budget": 2, "window": 10.0}
    args.update(kw)
    return NameSets(**args)  # type: ignore[arg-type]


def test_a_record_is_made_on_the_second_sight_and_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(namesets.time, "monotonic", lambda: 100.0)
    sets, made = _sets(), []

    def make(names: tuple[bytes, ...]) -> tuple[bytes, ...]:
        made.append(names)
        return names

    assert sets.of((b"a", b"b"), make) is None and made == []  # seen once: nothing compiled
    got = sets.of((b"a", b"b"), make)
    assert got == (b"a", b"b") and made == [(b"a", b"b")]
    assert sets.of((b"a", b"b"), make) is got and len(made) == 1  # the same record after
    assert sets.of((b"b", b"a"), make) is None  # another order is another set


def test_a_set_past_the_bounds_is_never_kept() -> None:
    """Too many names, or too many bytes of names: not even kept as seen once (the twin:
    one within both bounds is)."""
    sets = _sets()
    for names in [(b"a", b"b", b"c", b"d"), (b"x" * 13,)]:
        for _ in range(3):
            assert sets.of(names, lambda n: n) is None
        assert names not in sets.table
    assert sets.of((b"x" * 12,), lambda n: n) is None and (b"x" * 12,) in sets.table


def test_the_table_and_the_builds_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    monkeypatch.setattr(namesets.time, "monotonic", lambda: clock[0])
    sets, made = _sets(), []

    def make(names: tuple[bytes, ...]) -> tuple[bytes, ...]:
        made.append(names)
        return names

    for i in range(40):
        sets.of((b"n%d" % i,), make)
        assert len(sets.table) <= 4
    sets.table.clear()  # four sets seen once each: only two made in this window
    names = [(b"m%d" % i,) for i in range(4)]
    for n in names:
        sets.of(n, make)
    made.clear()
    assert [sets.of(n, make) for n in names] == [names[0], names[1], None, None]
    clock[0] += 10.0  # the next window: the rest are made on their next sight
    assert [sets.of(n, make) for n in names] == names and len(made) == 4


def test_both_readers_use_one_table_each() -> None:
    assert isinstance(h1pool._SETS, NameSets) and isinstance(lean._SETS, NameSets)
    assert h1pool._SETS is not lean._SETS
    assert h1pool._KNOWN is h1pool._SETS.table and lean._KNOWN is lean._SETS.table
