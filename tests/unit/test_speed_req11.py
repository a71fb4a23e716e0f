"""``PlaceholderIndex.scan_all`` (the general path's: plain HTTP, ``prepare_request``,
``scan_head``'s fallback; ``scan_head``'s own filter is tests/unit/test_speed_req12.py's)
answers exactly as the form kept here as the reference: the same refusal, or
none, and the per-piece scans run on exactly the same requests, on seeded requests built
from the pieces that trip each rule, for a registry with one needle (``__vault.`` only) and
one with custom placeholders (several needles). Twins: refusals and passes, scans run and
skipped, are each reached."""

from __future__ import annotations

import random
from collections.abc import Sequence

from vaultproxy.errors import VaultproxyError
from vaultproxy.values.placeholders import PlaceholderIndex

PIECES = [
    b"", b"host", b"%", b"%2e", b"a+b", b"\\u005f", b"\\/", b"__vault.gh__", b"__vault.oai__",
    b"PH-OAI-1", b"PH-OAI-", b"__vault.", b"__vault.Nope__", b"__vault.nope__", b"__vault._x__",
    b"__vault", b"_vault.gh__", b"x__vault.c__y", b"BASIC", b"bAsIc", b"Basic dTpw",
    b"Basic X192YXVsdC5naF9f", b"basic X192YXVsdC5ub3BlX18=", b"B\xc3\xa1sic", b"\xc5\xbfasic",
    b"ba\nsic", b"PH-", b"identity", b"example.test:443", b"/v1/x", b"q=1",
]


class _Counted(PlaceholderIndex):
    """Counts the per-piece scans ``scan_all`` runs (a subclass: the index has slots)."""

    scans = 0

    def scan(self, data: bytes, service_name: str) -> None:
        type(self).scans += 1
        super().scan(data, service_name)


def _reference(index: PlaceholderIndex, pieces: Sequence[bytes], service: str) -> None:
    """``scan_all`` as it read before this change."""
    joined = b"\n".join(pieces)
    if index._may_trip(joined):
        for piece in pieces:
            index.scan(piece, service)


def _outcome(call, *args) -> tuple[str, str] | None:  # type: ignore[no-untyped-def]
    try:
        call(*args)
    except VaultproxyError as e:
        return type(e).__name__, str(e)
    return None


def _compare(mapping: dict[str, str], seed: int) -> tuple[int, int, int]:
    index = _Counted(mapping)
    assert (index._needle is None) == (len(index._needles) > 1)
    rng = random.Random(seed)
    refused = scanned = skipped = 0
    services = sorted(set(mapping.values())) + [""]
    for _ in range(6000):
        pieces = tuple(rng.choice(PIECES) for _ in range(rng.randint(0, 7)))
        service = rng.choice(services)
        _Counted.scans = 0
        want = _outcome(_reference, index, pieces, service)
        want_scans = _Counted.scans
        _Counted.scans = 0
        got = _outcome(index.scan_all, pieces, service)
        assert got == want, (pieces, service)
        assert _Counted.scans == want_scans, (pieces, service)
        refused += want is not None
        scanned += want_scans > 0
        skipped += bool(pieces) and want_scans == 0
    return refused, scanned, skipped


def test_scan_all_one_needle_is_the_reference() -> None:
    refused, scanned, skipped = _compare({"__vault.gh__": "gh", "__vault.oai__": "oai"}, 11)
    assert refused > 500 and scanned > 1000 and skipped > 300, (refused, scanned, skipped)


def test_scan_all_several_needles_is_the_reference() -> None:
    refused, scanned, skipped = _compare(
        {"__vault.gh__": "gh", "PH-OAI-1": "oai", "x__vault.c__y": "c"}, 12)
    assert refused > 500 and scanned > 1000 and skipped > 300, (refused, scanned, skipped)


def test_scan_all_needle_without_match_is_skipped_and_with_one_refused() -> None:
    """The one-needle branch: ``__vault.`` alone (no token) runs no scan; a token is
    refused (the negative twin)."""
    index = _Counted({"__vault.gh__": "gh"})
    _Counted.scans = 0
    index.scan_all((b"x-note", b"__vault.", b"/p", b""), "gh")
    assert _Counted.scans == 0
    try:
        index.scan_all((b"x-note", b"__vault.zz__", b"/p", b""), "gh")
    except VaultproxyError as e:
        assert type(e).__name__ == "PlaceholderUnknown"
    else:
        raise AssertionError("an unknown token passed")
