"""Redactor.may_match, the cheap pre-check in front of the regex: it may say "maybe" too often,
never "no" when a form of the secret is there. Checked against the regex itself and with the
independent detector of test_redact, in whole buffers, streams and compressed streams.

Negative twins: chunk-by-chunk redaction without the carry leaks a straddling secret, and
the detector finds each unredacted body leaky.
"""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Callable

import brotli  # type: ignore[import-untyped]
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.canary import make_canary
from tests.unit.test_redact import FORMS, PH, PH2, REDACTOR, SECRET, SECRET2, find_leak
from vaultproxy.values import redact as redact_mod
from vaultproxy.values.redact import Redactor, decoder_for
from vaultproxy.values.redact import stream_filter as _scrub_stream

CHUNK = 64 * 1024
_RE = REDACTOR._re
assert _RE is not None


def _found(r: Redactor, data: bytes) -> bool:
    """Does the regex alone (no pre-check) find a form in ``data``?"""
    assert r._re is not None
    return r._re.search(data) is not None


def _slow(data: bytes) -> bytes:
    """The regex alone, without the pre-check: what redact must always equal."""
    assert _RE is not None
    return _RE.sub(REDACTOR._sub, data)


FILLERS: dict[str, bytes] = {
    "zeros": bytes(CHUNK),
    "random": os.urandom(CHUNK),
    "json": (b'{"a": "x\\n\\"y\\" \\\\ %20 \\u00e9", "url": "https:\\/\\/h\\/p?q=%2F+1"}\n' * 2000)[
        :CHUNK
    ],
}


@pytest.mark.parametrize("filler", sorted(FILLERS))
@pytest.mark.parametrize("form", sorted(FORMS))
def test_each_form_found_in_any_filler(form: str, filler: str) -> None:
    f = FILLERS[filler]
    encoded = FORMS[form](SECRET)
    for data in (encoded, f + encoded, encoded + f, f[:1000] + encoded + f[1000:]):
        assert REDACTOR.may_match(data), form
        out = REDACTOR.redact(data)
        assert out == _slow(data)
        assert find_leak(SECRET, out) is None, form


def test_twin_fillers_carry_the_secret_before_redaction() -> None:
    """Negative twin: the detector sees every embedded form in the unredacted data."""
    for form, encode in FORMS.items():
        assert find_leak(SECRET, FILLERS["zeros"][:100] + encode(SECRET)) is not None, form


@pytest.mark.parametrize("filler", sorted(FILLERS))
def test_fillers_alone_pass_untouched(filler: str) -> None:
    data = FILLERS[filler]
    assert REDACTOR.redact(data) == data == _slow(data)
    # SECRET has '"', '\\', '/', ' ', 'é': the JSON filler holds escapes of those ("maybe").
    # A plain canary has no such characters; random bytes may still hold a "%HH" of one.
    assert REDACTOR.may_match(data) == (filler != "zeros")
    plain = Redactor([(SECRET2, PH2)])
    assert plain.may_match(data) == (filler == "random" and _found(plain, data))


def _mixed(secret: bytes, choices: list[int]) -> bytes:
    """``secret`` with each character written its own way: raw, %HH, \\uXXXX or short JSON."""
    out = b""
    for i, ch in enumerate(secret.decode()):
        how = choices[i % len(choices)] if choices else 0
        raw = ch.encode()
        if how == 1:
            out += b"".join(b"%%%02X" % b for b in raw)
        elif how == 2:
            out += b"".join(b"%%%02x" % b for b in raw)
        elif how == 3 and ord(ch) <= 0xFFFF:
            out += b"\\u%04x" % ord(ch)
        elif how == 4 and ch in '"\\/':
            out += b"\\" + raw
        elif how == 5 and ch == " ":
            out += b"+"
        else:
            out += raw
    return out


_NOISE = [b"%20", b"%zz", b"%7", b"\\n", b"\\\\", b"\\u00e9", b"\\", b"+", b".", b"\x00", b"\xff"]


@settings(max_examples=300, deadline=None)
@given(
    choices=st.lists(st.integers(min_value=0, max_value=5), max_size=len(SECRET)),
    pre=st.lists(st.sampled_from(_NOISE), max_size=30),
    post=st.lists(st.sampled_from(_NOISE), max_size=30),
)
def test_mixed_encodings_between_escape_noise(
    choices: list[int], pre: list[bytes], post: list[bytes]
) -> None:
    head = b" ".join(pre) + b" "
    tail = b" " + b" ".join(post)
    data = head + _mixed(SECRET, choices) + tail
    assert REDACTOR.may_match(data)
    out = REDACTOR.redact(data)
    assert out == _slow(data)
    # A last character written ``\\u005c`` may leave ``u005c`` behind (its raw ``\\`` form
    # matches first): the secret is gone either way.
    assert (
        out.startswith(head + PH)
        and out.endswith(tail)
        and len(out) <= len(head + PH) + 5 + len(tail)
    )


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([*_NOISE, b"vpcanary_", b"dnBj", SECRET2[:20]]), max_size=80))
def test_precheck_never_changes_the_result(tokens: list[bytes]) -> None:
    data = b"".join(tokens)
    if not REDACTOR.may_match(data):
        assert not _found(REDACTOR, data)
    assert REDACTOR.redact(data) == _slow(data)


def test_many_escapes_before_the_secret_give_up_early_and_still_redact() -> None:
    """Past _MAX_WINDOWS escapes that start no match, may_match answers "maybe"."""
    noise = b"%76 \\u0070 " * (redact_mod._MAX_WINDOWS * 4)
    for form in ("pct-upper", "json-all-u", "raw", "b64"):
        data = noise + FORMS[form](SECRET) + noise
        out = REDACTOR.redact(data)
        assert out == _slow(data) and out.startswith(noise + PH), form
        assert find_leak(SECRET, out) is None, form
        data = noise + FORMS[form](SECRET2) + noise
        assert REDACTOR.redact(data) == noise + PH2 + noise, form
    assert REDACTOR.may_match(noise)  # gave up: "maybe"
    assert REDACTOR.redact(noise) == noise


def test_escape_inside_a_longer_escape() -> None:
    """``\\\\`` then ``\\u0076...``: the regex matches from the second backslash."""
    for data in (b"\\\\" + FORMS["json-all-u"](SECRET), b"%%" + FORMS["pct-everything"](SECRET)):
        assert REDACTOR.may_match(data)
        assert find_leak(SECRET, REDACTOR.redact(data)) is None


def test_escape_at_the_buffer_edges() -> None:
    for form in ("pct-upper", "json-all-u", "json-slash"):
        encoded = FORMS[form](SECRET2)
        assert REDACTOR.redact(encoded) == PH2
        assert REDACTOR.redact(encoded[:-1]) == encoded[:-1]  # cut short: not a form
        encoded = FORMS[form](SECRET)
        assert REDACTOR.redact(encoded).startswith(PH)
        assert find_leak(SECRET, REDACTOR.redact(encoded)) is None


def test_short_and_non_utf8_secrets_prefilter() -> None:
    short = Redactor([(b"pw1 ", PH)])
    data = b"x pw1  %70w1+ " + bytes(1000)
    assert short.redact(data) == b"x " + PH + b" " + PH + b" " + bytes(1000)
    odd = make_canary().encode() + b"\xff\x00 "
    r = Redactor([(odd, PH)])
    pct = b"".join(b"%%%02x" % b for b in odd)
    assert r.redact(bytes(5000) + pct) == bytes(5000) + PH
    assert r.redact(bytes(5000) + odd[:-1] + b"+") == bytes(5000) + PH
    assert not r.may_match(bytes(5000))


def test_repr_names_no_secret() -> None:
    text = repr(REDACTOR) + str(REDACTOR)
    assert SECRET2[:12].decode() not in text and "vpcanary" not in text


# --- streams: big chunks, the secret across a boundary, at the very end ---------------------


def _stream(r: Redactor, chunks: list[bytes]) -> bytes:
    step = r.stream()
    return b"".join(step(c) for c in chunks) + step(b"")


@pytest.mark.parametrize("form", sorted(FORMS))
def test_secret_straddling_a_big_chunk_boundary(form: str) -> None:
    encoded = FORMS[form](SECRET)
    for cut in (1, len(encoded) // 2, len(encoded) - 1):
        first = FILLERS["json"] + encoded[:cut]
        second = encoded[cut:] + FILLERS["zeros"]
        out = _stream(REDACTOR, [first, second])
        assert out == REDACTOR.redact(first + second)
        assert find_leak(SECRET, out) is None and PH in out


def test_twin_straddling_secret_leaks_without_the_carry() -> None:
    encoded = FORMS["pct-upper"](SECRET)
    cut = len(encoded) // 2
    first, second = FILLERS["zeros"] + encoded[:cut], encoded[cut:] + FILLERS["zeros"]
    naive = REDACTOR.redact(first) + REDACTOR.redact(second)
    assert find_leak(SECRET, naive) is not None
    assert find_leak(SECRET, _stream(REDACTOR, [first, second])) is None


@pytest.mark.parametrize("form", ["raw", "b64url-nopad", "json-all-u", "quote-plus"])
def test_secret_in_the_last_bytes(form: str) -> None:
    head = FILLERS["zeros"] + FILLERS["random"]
    encoded = FORMS[form](SECRET2)
    assert _stream(REDACTOR, [FILLERS["zeros"], FILLERS["random"], encoded]) == head + PH2
    # The same bytes arriving byte by byte at the end.
    tail = [encoded[i : i + 1] for i in range(len(encoded))]
    assert _stream(REDACTOR, [FILLERS["zeros"], *tail]) == FILLERS["zeros"] + PH2
    encoded = FORMS[form](SECRET)
    out = _stream(REDACTOR, [FILLERS["zeros"], FILLERS["random"], encoded])
    assert out == REDACTOR.redact(head + encoded) and out.startswith(head + PH)
    assert find_leak(SECRET, out) is None


def test_stream_emits_everything_when_nothing_can_match() -> None:
    step = REDACTOR.stream()
    assert step(FILLERS["zeros"]) == FILLERS["zeros"]
    assert step(FILLERS["zeros"]) == FILLERS["zeros"]
    assert step(b"") == b""


def _deflate_raw(data: bytes) -> bytes:
    c = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return c.compress(data) + c.flush()


COMPRESS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.compress,
    "deflate": zlib.compress,
    "deflate-raw": _deflate_raw,
    "br": brotli.compress,
    "zstd": lambda d: zstandard.ZstdCompressor().compress(d),
}


@pytest.mark.parametrize("name", sorted(COMPRESS))
def test_compressed_stream_with_secrets_across_chunks(name: str) -> None:
    plain = (
        FILLERS["random"]
        + FORMS["raw"](SECRET)
        + FILLERS["zeros"]
        + FORMS["json-go-html"](SECRET)
        + FILLERS["json"]
        + FORMS["b64-inside-2"](SECRET)
        + SECRET2
    )
    packed = COMPRESS[name](plain)
    assert find_leak(SECRET, plain) is not None  # twin
    encoding = "deflate" if name == "deflate-raw" else name
    for size in (7, 1000, 65536):
        dec = decoder_for(encoding)
        assert dec is not None
        emit = _scrub_stream(REDACTOR, dec)  # the callable Scrub gives mitmproxy
        pieces = [emit(packed[i : i + size]) for i in range(0, len(packed), size)]
        pieces.append(emit(b""))
        assert all(p for chunks in pieces for p in chunks)  # never an empty chunk
        out = b"".join(p for chunks in pieces for p in chunks)
        assert out == REDACTOR.redact(plain), size
        assert find_leak(SECRET, out) is None and find_leak(SECRET2, out) is None
        assert out.endswith(PH2)


def test_identity_stream_callable_matches_redact() -> None:
    data = FILLERS["random"] + FORMS["b64-inside-1"](SECRET) + FILLERS["json"] + SECRET2
    emit = _scrub_stream(REDACTOR, None)
    pieces = [emit(data[i : i + 5000]) for i in range(0, len(data), 5000)] + [emit(b"")]
    out = b"".join(p for chunks in pieces for p in chunks)
    assert out == REDACTOR.redact(data) and find_leak(SECRET, out) is None
