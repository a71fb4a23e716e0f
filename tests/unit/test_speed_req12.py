"""``PlaceholderIndex.scan_head`` (``inject_head``'s placeholder check: the filter's text
built from the head without the ordered pieces) answers exactly as the code it replaced
(kept here as the reference: ``scan_all`` of ``_pieces(sent, path, query)``): the same
refusal, or none, and the same per-piece scans in the same order, on seeded heads built
from the pieces that trip each rule (in names, values, the path and the query), for a
registry with one needle (``__vault.`` only) and one with custom placeholders (several).
Twins: refusals and passes, scans run and skipped, are each reached; list fields and more
than ``_FEW_FIELDS`` fields take the ordered pieces too."""

from __future__ import annotations

import random
from collections.abc import Sequence

from vaultproxy.errors import VaultproxyError
from vaultproxy.inject.request import _FEW_FIELDS, _pieces
from vaultproxy.values.placeholders import PlaceholderIndex

PIECES = [
    b"", b"host", b"%", b"%2e", b"a+b", b"\\u005f", b"\\/", b"__vault.gh__", b"__vault.oai__",
    b"PH-OAI-1", b"PH-OAI-", b"__vault.", b"__vault.Nope__", b"__vault.nope__", b"__vault._x__",
    b"__vault", b"_vault.gh__", b"x__vault.c__y", b"BASIC", b"bAsIc", b"Basic dTpw",
    b"Basic X192YXVsdC5naF9f", b"basic X192YXVsdC5ub3BlX18=", b"B\xc3\xa1sic", b"\xc5\xbfasic",
    b"ba\nsic", b"PH-", b"identity", b"example.test:443", b"/v1/x", b"q=1", b"?", b"a?b",
    b"__vault.gh", b"__", b"PH-OAI", b"1",
]


class _Seen(PlaceholderIndex):
    """Records the per-piece scans run, in order (a subclass: the index has slots)."""

    seen: list[bytes] = []

    def scan(self, data: bytes, service_name: str) -> None:
        type(self).seen.append(data)
        super().scan(data, service_name)


def _reference(index: PlaceholderIndex, sent: Sequence[tuple[bytes, bytes]], full: bytes,
               service: str) -> None:
    """``inject_head``'s check as it read before this change."""
    path, sep, query = full.partition(b"?")
    try:
        pieces = sum(sent, ()) + (path, query) if len(sent) <= _FEW_FIELDS else None
    except TypeError:
        pieces = None
    index.scan_all(pieces or _pieces(sent, path, query), service)  # type: ignore[arg-type]


def _outcome(call, *args) -> tuple[str, str] | None:  # type: ignore[no-untyped-def]
    try:
        call(*args)
    except VaultproxyError as e:
        return type(e).__name__, str(e)
    return None


def _head(rng: random.Random) -> tuple[object, bytes]:
    many = rng.random() < 0.05
    n = rng.randint(_FEW_FIELDS - 1, _FEW_FIELDS + 3) if many else rng.randint(0, 5)
    fields = [(rng.choice(PIECES), rng.choice(PIECES)) for _ in range(n)]
    path = b"".join(rng.choice(PIECES) for _ in range(rng.randint(0, 3)))
    if rng.random() < 0.2:
        return [list(f) if rng.random() < 0.5 else f for f in fields], path
    return tuple(fields), path


def _compare(mapping: dict[str, str], seed: int) -> tuple[int, int, int, int]:
    index = _Seen(mapping)
    assert (index._needle is None) == (len(index._needles) > 1)
    rng = random.Random(seed)
    refused = scanned = skipped = extra = 0
    services = sorted(set(mapping.values())) + [""]
    for _ in range(8000):
        sent, path = _head(rng)
        service = rng.choice(services)
        _Seen.seen = []
        want = _outcome(_reference, index, sent, path, service)
        want_seen = _Seen.seen
        _Seen.seen = []
        got = _outcome(index.scan_head, sent, path, service)
        assert got == want, (sent, path, service)
        if _Seen.seen != want_seen:
            # only text this join makes across the path's ``?`` (a custom placeholder
            # holding one) trips the filter more: every piece scanned, in order, passing
            assert b"?" in path and want_seen == [] and want is None, (sent, path, service)
            assert b"?" in b"".join(index._owner), (sent, path, service)
            assert _Seen.seen == list(_pieces(sent, *path.partition(b"?")[::2]))
            extra += 1
        refused += want is not None
        scanned += bool(want_seen)
        skipped += not want_seen
    return refused, scanned, skipped, extra


def test_scan_head_one_needle_is_the_reference() -> None:
    refused, scanned, skipped, extra = _compare(
        {"__vault.gh__": "gh", "__vault.oai__": "oai"}, 21)
    assert refused > 500 and scanned > 1000 and skipped > 300, (refused, scanned, skipped)
    assert extra == 0


def test_scan_head_several_needles_is_the_reference() -> None:
    refused, scanned, skipped, extra = _compare(
        {"__vault.gh__": "gh", "PH-OAI-1": "oai", "x__vault.c__y": "c"}, 22)
    assert refused > 500 and scanned > 1000 and skipped > 300, (refused, scanned, skipped)
    assert extra == 0


def test_scan_head_custom_placeholder_with_a_question_mark() -> None:
    """A custom placeholder holding ``?`` may trip the filter across the path's ``?``: the
    per-piece scans then run and decide as before (the same answer)."""
    refused, scanned, skipped, extra = _compare(
        {"__vault.gh__": "gh", "PH-OAI-1": "oai", "a?b": "q"}, 23)
    assert refused > 500 and scanned > 1000 and skipped > 300, (refused, scanned, skipped)
    assert extra > 0


def test_scan_head_skips_a_clean_head_and_refuses_a_token_in_the_query() -> None:
    """A clean head runs no per-piece scan; a token in the query (after the ``?``), in a
    value or in a name is refused (the negative twins)."""
    index = _Seen({"__vault.gh__": "gh"})
    _Seen.seen = []
    index.scan_head(((b"host", b"api.test"), (b"x-note", b"__vault.")), b"/p?a=1", "gh")
    assert _Seen.seen == []
    for sent, path in (
        (((b"host", b"api.test"),), b"/p?t=__vault.zz__"),
        (((b"x", b"__vault.zz__"),), b"/p"),
        (((b"__vault.zz__", b"v"),), b"/p"),
    ):
        try:
            index.scan_head(sent, path, "gh")
        except VaultproxyError as e:
            assert type(e).__name__ == "PlaceholderUnknown"
        else:
            raise AssertionError("an unknown token passed")


def test_scan_head_few_fields_is_pieces_few_fields() -> None:
    """``scan_head`` sums at most 24 fields, ``_pieces``'s bound."""
    assert _FEW_FIELDS == 24
