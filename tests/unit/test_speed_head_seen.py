"""``head_seen``'s ``Head`` (net/outbound.py) is a slots class built once per response in
place of the dataclass it was: it reads, compares and prints as the dataclass did, and holds
nothing else."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from vaultproxy.net.outbound import Head


@dataclass
class _Reference:  # the dataclass Head was (the reference)
    status: int = 0
    folded: bool = False


@pytest.mark.parametrize("args", [(), (200,), (101, False), (200, True), (599, True)])
def test_head_reads_as_the_dataclass_did(args: tuple[object, ...]) -> None:
    new, old = Head(*args), _Reference(*args)  # type: ignore[arg-type]
    assert (new.status, new.folded) == (old.status, old.folded)
    assert repr(new) == repr(old).replace("_Reference", "Head")
    assert new == Head(*args) and new != Head(1, True)  # type: ignore[arg-type]
    kw = Head(status=new.status, folded=new.folded)
    assert kw == new


def test_head_holds_nothing_else() -> None:
    head = Head(200, False)
    with pytest.raises(AttributeError):
        head.extra = 1  # type: ignore[attr-defined]
    with pytest.raises(TypeError):
        hash(head)
