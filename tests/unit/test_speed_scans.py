"""The one-pass request scans answer exactly as their field-by-field loops do.

``PlaceholderIndex.scan_all`` (one search over a request's pieces joined) against ``scan`` of
each piece, and ``check_headers``' all-at-once path against its loop, over random requests
built from pieces that trip each rule (seeded: the same cases every run)."""

from __future__ import annotations

import base64
import random
from collections.abc import Callable

import pytest

from vaultproxy.core import pipeline
from vaultproxy.errors import InvalidRequest, VaultproxyError
from vaultproxy.values.placeholders import PlaceholderIndex

INDEX = PlaceholderIndex({"__vault.gh__": "gh", "PH-OAI-1": "oai"})
PIECES = [
    b"", b"host", b"example.com", b"text/html", b"__vault.gh__", b"PH-OAI-1", b"__vault.nope__",
    b"PH-OAI-1 and more", b"a%20b", b"%5F_vault.gh__", b"a+b", b"x\\u005f", b"Basic " +
    base64.b64encode(b"u:__vault.gh__"), b"bAsIc " + base64.b64encode(b"u:p"), b"basic",
    b"__vault.", b"gh__", b"\n", b"caf\xc3\xa9",
]


def _outcome(call: Callable[[], None]) -> tuple[type[BaseException], str] | None:
    try:
        call()
    except VaultproxyError as e:
        return type(e), str(e)
    return None


def _each(pieces: list[bytes], service: str) -> None:
    for piece in pieces:
        INDEX.scan(piece, service)


@pytest.mark.parametrize("service", ["gh", "oai", ""])
def test_scan_all_is_scan_of_each_piece(service: str) -> None:
    rng = random.Random(7)
    refused = 0
    for _ in range(4000):
        pieces = [rng.choice(PIECES) for _ in range(rng.randint(0, 6))]
        want = _outcome(lambda: _each(pieces, service))  # noqa: B023
        assert _outcome(lambda: INDEX.scan_all(pieces, service)) == want, pieces  # noqa: B023
        refused += want is not None
    assert refused > 100  # twin: the cases do reach refusals


NAMES = [b"a", b"X-Y", b"", b"a:b", b":", b"a b", b"\n", b"\xff", b"ok-1"]
VALUES = [b"v", b"", b"a\r\n b", b"\x00", b"x" * 40_000, b":"]


def _loop(fields: tuple[tuple[bytes, bytes], ...]) -> None:
    """check_headers as a field-by-field loop only (what it was before its fast path)."""
    if len(fields) > pipeline.MAX_HEADER_FIELDS:
        raise InvalidRequest(f"more than {pipeline.MAX_HEADER_FIELDS} header fields")
    size = 0
    for i, (name, value) in enumerate(fields):
        size += len(name) + len(value)
        if not pipeline._TOKEN.match(name):
            raise InvalidRequest(f"header field {i + 1}: the name is not an HTTP token")
        if pipeline._BAD_VALUE.search(value):
            raise InvalidRequest(
                f"header field {i + 1}: the value holds a line break (obs-fold) or NUL"
            )
    if size > pipeline.MAX_HEADER_BYTES:
        raise InvalidRequest(
            f"the header section is over {pipeline.MAX_HEADER_BYTES // 1024} KiB")


def test_check_headers_is_the_loop() -> None:
    rng = random.Random(11)
    refused = 0
    for _ in range(20_000):
        fields = tuple((rng.choice(NAMES), rng.choice(VALUES)) for _ in range(rng.randint(0, 4)))
        want = _outcome(lambda: _loop(fields))  # noqa: B023
        assert _outcome(lambda: pipeline.check_headers(fields)) == want, fields  # noqa: B023
        refused += want is not None
    assert refused > 1000
    # the name with a ":" (the separator of the joined names) is refused, not split in two
    assert _outcome(lambda: pipeline.check_headers(((b"a:b", b"v"),))) is not None


def test_may_trip_basic_word_is_bytes_lower() -> None:
    """``_may_trip`` looks for ``basic`` in the Latin-1 text lower-cased by ``str.lower``:
    it answers as ``bytes.lower`` would, for every byte beside each letter (seeded mixes)."""
    index = PlaceholderIndex({"PH-1": "s"})  # no %, +, \\ or placeholder in the data below

    def want(data: bytes) -> bool:
        return "basic" in data.lower().decode("latin-1")

    rng = random.Random(11)
    found = 0
    words = [b"basic", b"BASIC", b"bAsIc", b"bas", b"ic", b"\xc2\xc1SIC"]
    for c in range(256):
        if c in b"%+\\":
            continue
        for data in (bytes([c]) + b"ASIC", b"B" + bytes([c]) + b"SIC", b"BASI" + bytes([c])):
            assert index._may_trip(data) == want(data), data
            found += want(data)
    for _ in range(3000):
        data = b"".join(rng.choice(words + [bytes([rng.randrange(256)])])
                        for _ in range(rng.randint(0, 5)))
        if any(b in data for b in b"%+\\"):
            continue
        assert index._may_trip(data) == want(data), data
        found += want(data)
    assert found > 100  # twin: the word is found


def _scan_before(index: PlaceholderIndex, data: bytes, service: str) -> None:
    """``PlaceholderIndex.scan`` as it was (``bytes in bytes`` for the three escape bytes)."""
    from vaultproxy.values import placeholders as ph

    if b"%" not in data and b"+" not in data and b"\\" not in data:
        for m in index._any_re.finditer(data):
            index._check(m.group(), service)
        if ph._BASIC_RE.match(data) is None:
            return
        creds = ph.basic_credentials(data)
        if creds is not None:
            _scan_before(index, creds, service)
        return
    for view in ph.decoded_views(data):
        for m in index._any_re.finditer(view):
            index._check(m.group(), service)


@pytest.mark.parametrize("service", ["gh", "oai", ""])
def test_scan_is_the_scan_it_replaced(service: str) -> None:
    rng = random.Random(12)
    refused = 0
    for _ in range(4000):
        data = b"".join(rng.choice(PIECES) for _ in range(rng.randint(0, 4)))
        want = _outcome(lambda: _scan_before(INDEX, data, service))  # noqa: B023
        assert _outcome(lambda: INDEX.scan(data, service)) == want, data  # noqa: B023
        refused += want is not None
    assert refused > 100  # twin: refusals are reached


def test_holds_is_bytes_in() -> None:
    """``holds`` (``bytes.find`` on bytes) answers as ``needle in data`` on seeded pieces,
    for bytes and for another bytes-like type (which takes ``in`` itself)."""
    from vaultproxy.values.placeholders import holds

    rng = random.Random(13)
    found = 0
    for _ in range(4000):
        data = b"".join(rng.choice(PIECES) for _ in range(rng.randint(0, 4)))
        needle = rng.choice([b"__vault.gh__", b"PH-OAI-1", b"%", b"a", b"gh__", b"\n", b"zz"])
        want = needle in data
        assert holds(data, needle) is want, (data, needle)
        assert holds(bytearray(data), needle) is want
        found += want
    assert 500 < found < 3500  # twin: both answers are reached
    assert holds(b"", b"") and holds(b"x", b"")  # the empty needle is in everything, as `in`
