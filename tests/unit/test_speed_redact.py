"""The response gate's pre-checks without ``bytes in bytes`` answer exactly as with it.

``Redactor.may_match`` on ``bytes`` (the function ``_unrolled`` makes per redactor: ``int in
bytes`` once per distinct anchor byte and escape lead, ``bytes.find`` for the needles)
against ``Redactor._may_match``, the general form (any bytes-like input still takes it), and
against the loop it replaces (``_may_match_before`` below, as it was); and
``_refuse_folded``'s first look against the expression it had, over seeded buffers built
from pieces that reach each branch: a needle, an anchor byte alone, escapes that do and do
not start a match, past the window budget, canary secrets in every encoding at random."""

from __future__ import annotations

import base64
import random
from typing import Any

import pytest

from tests.canary import make_canary
from tests.unit.test_redact import FORMS, REDACTOR, SECRET, SECRET2
from vaultproxy.errors import UpstreamProtocol
from vaultproxy.values import redact as redact_mod
from vaultproxy.values.redact import _MAX_WINDOWS, Redactor

PLAIN = Redactor([(b"sk-plain-0123456789", b"__vault.p__")])
EMPTY = Redactor([])
SPACED = Redactor([(b"a b/c\"d\xc3\xa9", b"__vault.s__")])
CANARIES = [make_canary().encode() for _ in range(5)]
MANY = Redactor([(c, b"__vault.m%d__" % i) for i, c in enumerate(CANARIES)]
                + [(b"\xff\xfe-not-utf8-\x80\x81-0123", b"__vault.b__")])


def _may_match_before(r: Redactor, data: bytes) -> bool:
    """``Redactor.may_match`` for ``bytes`` as it was before ``_unrolled``: a loop over the
    (anchor, needle) pairs and the escape leads."""
    if type(data) is not bytes:
        return r._may_match(data)
    find = data.find
    for anchor, needle in r._rare_needles:
        if anchor in data and find(needle) != -1:
            return True
    regex = r._re
    if regex is None:
        return False
    span = r.max_len
    windows = max(_MAX_WINDOWS, len(data) // (8 * span)) if span else _MAX_WINDOWS
    for lead, escape in r._lead_escapes:
        if lead not in data:
            continue
        for m in escape.finditer(data):
            if regex.search(data, max(0, m.start() + 1 - span), m.end() + span) is not None:
                return True
            windows -= 1
            if windows <= 0:
                return True
    return False

PIECES = [
    b"", b"x", b"hello world", b"%", b"%2", b"%2F", b"%2f", b"\\", b"\\u", b"\\u00", b"\\u0073",
    b"+", b"\\/", b"\\\"", b"\n", b"\r\n", b"\x00", b"\xff\xfe", bytes(range(256)),
    SECRET, SECRET[:5], SECRET[3:], b"sk-plain-0123456789", b"sk-plain-", b"0123456789",
    b"a b/c\"d\xc3\xa9", b"a+b%2Fc", b"%61%20b", base64.b64encode(SECRET),
    base64.b64encode(SECRET)[2:14], SECRET.hex().encode(), b"%" * 20, b"\\u0000" * 12,
    *(FORMS[name](SECRET) for name in sorted(FORMS)),
]
REDACTORS = {"main": REDACTOR, "plain": PLAIN, "empty": EMPTY, "spaced": SPACED,
             "many": MANY}
# Every encoding of every canary (and of the two secrets), whole and cut: the forms each
# redactor's needles and escapes stand for, and near misses of them.
FORM_PIECES = [FORMS[name](s) for name in sorted(FORMS) for s in (*CANARIES, SECRET, SECRET2)]
FORM_PIECES += [f[: len(f) // 2] for f in FORM_PIECES] + [f[1:] for f in FORM_PIECES]


@pytest.mark.parametrize("name", sorted(REDACTORS))
def test_may_match_on_bytes_is_the_general_form(name: str) -> None:
    r = REDACTORS[name]
    rng = random.Random(29)
    seen = {True: 0, False: 0}
    for _ in range(3000):
        data = b"".join(rng.choice(PIECES) for _ in range(rng.randint(0, 8)))
        if rng.random() < 0.1:
            data += bytes(rng.randrange(256) for _ in range(rng.randint(0, 300)))
        want = r._may_match(data)
        assert r.may_match(data) is want  # (no message: the buffer may hold the canary)
        seen[want] += 1
    # twin: both answers are reached (the empty redactor has nothing to find)
    assert seen[False] > 100 and (seen[True] > 100 or name == "empty")


@pytest.mark.parametrize("name", sorted(REDACTORS))
def test_may_match_is_the_loop_it_replaces(name: str) -> None:
    """Canary forms in every encoding placed at random in text, JSON-ish and random bytes:
    the unrolled check answers as the loop did, for each redactor."""
    r = REDACTORS[name]
    rng = random.Random(31)
    fillers = [b"x" * 1023 + b"\n", b'{"a": "b", "ok": true, "n": 1}', b"Last-Modified",
               b"keep-alive", b"abcdefZZ_%\\+", b""]
    seen = {True: 0, False: 0}
    for _ in range(4000):
        parts = [rng.choice(fillers) for _ in range(rng.randint(0, 3))]
        for _ in range(rng.randint(0, 2)):
            parts.insert(rng.randint(0, len(parts)),
                         rng.choice(FORM_PIECES if rng.random() < 0.7 else PIECES))
        if rng.random() < 0.2:
            parts.append(bytes(rng.randrange(256) for _ in range(rng.randint(0, 400))))
        data = b"".join(parts)
        want = _may_match_before(r, data)
        assert r.may_match(data) is want  # (no message: the buffer may hold a canary)
        assert r._may_match(data) is want
        seen[want] += 1
    assert seen[False] > 100 and (seen[True] > 100 or name == "empty")


def test_may_match_finds_each_form_of_each_secret() -> None:
    """Every form of every canary, alone and inside filler: found (the needles of all the
    groups and every escape lead are in the unrolled check); the filler alone is not."""
    for secret in CANARIES:
        for form in sorted(FORMS):
            encoded = FORMS[form](secret)
            for data in (encoded, b"x" * 500 + encoded + b"y" * 500):
                assert MANY.may_match(data), form
    assert not MANY.may_match(b"x" * 1000)


def test_may_match_takes_the_general_form_for_other_buffers() -> None:
    data = b"xx" + SECRET + b"yy"
    views: list[Any] = [bytearray(data), memoryview(data)]  # (typed bytes; honeytokens pass views)
    for view in views:
        assert REDACTOR.may_match(view) is REDACTOR._may_match(view)
    assert REDACTOR.may_match(views[0])


def _folded_before(fields: tuple[tuple[bytes, bytes], ...]) -> None:
    """``_refuse_folded`` as it was (``bytes in bytes`` in its first look)."""
    joined = b"\n".join(x for field in fields for x in field)
    if joined.count(b"\n") == 2 * len(fields) - 1 and b"\r" not in joined \
            and b"\x00" not in joined:
        return
    for name, value in fields:
        if redact_mod._LINE_BREAK.search(value) or redact_mod._LINE_BREAK.search(name):
            raise UpstreamProtocol("the upstream sent a folded (obs-fold) response header")


def _outcome(fields: tuple[tuple[bytes, bytes], ...], fn: object) -> str | None:
    try:
        fn(fields)  # type: ignore[operator]
    except UpstreamProtocol as e:
        return str(e)
    return None


def test_refuse_folded_first_look_is_the_expression_it_had() -> None:
    rng = random.Random(30)
    parts = [b"a", b"", b"Content-Type", b"x\r\n y", b"\r", b"\n", b"\x00", b"v\x00", b"ok"]
    refused = 0
    for _ in range(3000):
        fields = tuple((rng.choice(parts), rng.choice(parts)) for _ in range(rng.randint(0, 5)))
        want = _outcome(fields, _folded_before)
        got = _outcome(fields, lambda f: redact_mod._refuse_folded(f, None))
        assert got == want, fields
        refused += want is not None
    assert refused > 100  # twin: refusals are reached
