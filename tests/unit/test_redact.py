"""redact.py: every encoded form of an injected secret disappears, in whole and streamed bodies.

``find_leak`` is an independent detector (it decodes the output rather than re-deriving the
redactor's patterns); ``test_detector_catches_unredacted`` is its failing twin.
"""

from __future__ import annotations

import base64
import binascii
import functools
import gzip
import json
import random
import re
import zlib
from collections.abc import Callable
from urllib.parse import quote, quote_plus, unquote_to_bytes

import brotli  # type: ignore[import-untyped]
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st
from mitmproxy import http

from tests.canary import make_canary
from vaultproxy.errors import BodyTooLarge
from vaultproxy.values.redact import Redactor, decoder_for, drop_set_cookie, redact_headers

# Characters chosen so std and url base64 differ (">>>" -> "Pj4+", "???" -> "Pz8/"), and so
# percent, JSON, \/ and \u escaping all change the text.
SUFFIX = '~>>>???/ +&<é"\\'
SECRET = (make_canary() + SUFFIX).encode()
SECRET2 = make_canary().encode()
PH = b"__vault.svc__"
PH2 = b"__vault.two__"
REDACTOR = Redactor([(SECRET, PH), (SECRET2, PH2)])

_JSON_ESC = re.compile(
    rb'\\u[dD][89abAB][0-9a-fA-F]{2}\\u[0-9a-fA-F]{4}|\\u[0-9a-fA-F]{4}|\\["\\/bfnrt]'
)
_B64_RUN = re.compile(rb"[A-Za-z0-9+/_-]{8,}")


@functools.lru_cache(maxsize=65536)
def _json_escape_value(escape: bytes) -> bytes:
    """One escape's bytes, as JSON reads it. Cached: a JSON filler repeats a few escapes
    ~10^6 times per run (test_json_unescape_cache_is_json_loads checks it against the call)."""
    return json.loads(b'"' + escape + b'"').encode("utf-8")


def _json_unescape(data: bytes) -> bytes:
    return _JSON_ESC.sub(lambda m: _json_escape_value(m.group()), data)


def test_json_unescape_cache_is_json_loads() -> None:
    """The detector's cached escape decoding is what one ``json.loads`` per escape gave (the
    code it replaced): seeded text with every kind of escape, upper and lower case hex,
    surrogate pairs; each text twice, the second time from the cache."""
    rng = random.Random(20261207)

    def reference(data: bytes) -> bytes:
        return _JSON_ESC.sub(lambda m: json.loads(b'"' + m.group() + b'"').encode("utf-8"), data)

    simple = [b"\\n", b'\\"', b"\\\\", b"\\/", b"\\b", b"\\f", b"\\r", b"\\t"]
    for _ in range(300):
        parts = []
        for _ in range(rng.randrange(1, 40)):
            kind = rng.randrange(5)
            hexfmt = rng.choice([b"%04x", b"%04X"])
            if kind == 0:
                parts.append(rng.choice(simple))
            elif kind == 1:
                code = rng.choice([rng.randrange(0x80), rng.randrange(0x800),
                                   rng.randrange(0xD800), rng.randrange(0xE000, 0x10000)])
                parts.append(b"\\u" + hexfmt % code)
            elif kind == 2:
                hi, lo = rng.randrange(0xD800, 0xDC00), rng.randrange(0xDC00, 0xE000)
                parts.append(b"\\u" + hexfmt % hi + b"\\u" + hexfmt % lo)
            else:
                parts.append(rng.randbytes(rng.randrange(6)).replace(b"\\", b"x"))
        data = b"".join(parts)
        for _ in range(2):
            assert _json_unescape(data) == reference(data), data


def _b64_views(data: bytes) -> list[bytes]:
    out = []
    for run in _B64_RUN.findall(data):
        std = run.replace(b"-", b"+").replace(b"_", b"/")
        for off in range(4):
            piece = std[off:]
            rest = len(piece) % 4
            piece = piece[:-1] if rest == 1 else piece + b"=" * (-rest % 4)
            out.append(base64.b64decode(piece))
    return out


def find_leak(secret: bytes, data: bytes) -> str | None:
    """Which decoding of ``data`` still shows ``secret`` (None: no leak)."""
    views = {
        "raw": data,
        "percent": unquote_to_bytes(data),
        "percent-plus": unquote_to_bytes(data.replace(b"+", b" ")),
        "json": _json_unescape(data),
    }
    for name, view in views.items():
        if secret in view:
            return name
    if any(secret in v for v in _b64_views(data)):
        return "base64"
    if any(secret in v for v in _hex_views(data)):
        return "hex"
    if any(secret in v for v in _b32_views(data)):
        return "base32"
    return None


_HEX_RUN = re.compile(rb"[0-9a-fA-F]{8,}")
_B32_RUN = re.compile(rb"[A-Z2-7]{8,}=*")


def _hex_views(data: bytes) -> list[bytes]:
    return [bytes.fromhex(run[off:len(run) - (len(run) - off) % 2].decode())
            for run in _HEX_RUN.findall(data) for off in range(2)]


def _b32_views(data: bytes) -> list[bytes]:
    out = []
    for run in _B32_RUN.findall(data):
        run = run.rstrip(b"=")
        for cut in range(8):  # a run's tail may not be a whole base32 group
            piece = run[: len(run) - cut]
            try:
                out.append(base64.b32decode(piece + b"=" * (-len(piece) % 8)))
                break
            except binascii.Error:
                continue
    return out


def _b64_inside(prefix: int, enc: Callable[[bytes], bytes]) -> Callable[[bytes], bytes]:
    return lambda s: enc(b"P" * prefix + s + b"tail-bytes")


def _go_json(s: bytes) -> bytes:
    text = json.dumps(s.decode())[1:-1]
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").encode()


FORMS: dict[str, Callable[[bytes], bytes]] = {
    "raw": lambda s: s,
    "b64": base64.b64encode,
    "b64-nopad": lambda s: base64.b64encode(s).rstrip(b"="),
    "b64url": base64.urlsafe_b64encode,
    "b64url-nopad": lambda s: base64.urlsafe_b64encode(s).rstrip(b"="),
    **{f"b64-inside-{k}": _b64_inside(k, base64.b64encode) for k in range(6)},
    **{f"b64url-inside-{k}": _b64_inside(k, base64.urlsafe_b64encode) for k in range(6)},
    "hex": lambda s: s.hex().encode(),
    "hex-upper": lambda s: s.hex().upper().encode(),
    "hex-inside": lambda s: (b"odd" + s + b"tail").hex().encode(),
    "b32": base64.b32encode,
    "b32-nopad": lambda s: base64.b32encode(s).rstrip(b"="),
    "pct-upper": lambda s: quote(s, safe="").encode(),
    "pct-lower": lambda s: re.sub(
        rb"%[0-9A-F]{2}", lambda m: m.group().lower(), quote(s, safe="").encode()
    ),
    "pct-default-safe": lambda s: quote(s).encode(),
    "quote-plus": lambda s: quote_plus(s, safe="").encode(),
    "pct-everything": lambda s: b"".join(b"%%%02X" % c for c in s),
    "json": lambda s: json.dumps(s.decode(), ensure_ascii=False)[1:-1].encode(),
    "json-ascii": lambda s: json.dumps(s.decode())[1:-1].encode(),
    "json-slash": lambda s: json.dumps(s.decode())[1:-1].replace("/", "\\/").encode(),
    "json-go-html": _go_json,
    "json-all-u": lambda s: "".join(f"\\u{ord(c):04X}" for c in s.decode()).encode(),
}


@pytest.mark.parametrize("form", sorted(FORMS))
def test_each_form_removed(form: str) -> None:
    encoded = FORMS[form](SECRET)
    body = b'{"echo": "' + encoded + b'", "n": 1}\n'
    out = REDACTOR.redact(body)
    assert find_leak(SECRET, out) is None, form
    assert PH in out
    assert out.startswith(b'{"echo": "') and out.endswith(b'", "n": 1}\n')


@pytest.mark.parametrize("form", sorted(FORMS))
def test_detector_catches_unredacted(form: str) -> None:
    """Negative twin: without redaction, the detector above reports the leak."""
    assert find_leak(SECRET, b"xx" + FORMS[form](SECRET) + b"yy") is not None


def test_plain_canary_forms() -> None:
    for form in FORMS.values():
        try:
            encoded = form(SECRET2)
        except UnicodeDecodeError:  # pragma: no cover
            continue
        out = REDACTOR.redact(b"<" + encoded + b">")
        assert find_leak(SECRET2, out) is None
        assert PH2 in out


def test_each_secret_gets_its_own_placeholder() -> None:
    out = REDACTOR.redact(SECRET + b" and " + SECRET2)
    assert out == PH + b" and " + PH2


def test_non_secret_data_unchanged() -> None:
    data = b'{"a": "vpcanary_", "b": "%76%70", "c": "\\u0076", "d": "dnBjYW5hcnlf"}' * 50
    assert REDACTOR.redact(data) == data


def test_short_and_empty_secrets() -> None:
    assert Redactor([]).redact(b"abc") == b"abc"
    assert Redactor([(b"", PH)]).redact(b"abc") == b"abc"
    short = Redactor([(b"pw1", PH)])
    assert short.redact(b"x pw1 %70w1") == b"x " + PH + b" " + PH


def test_non_utf8_secret() -> None:
    secret = make_canary().encode() + b"\xff\x00\xfe"
    r = Redactor([(secret, PH)])
    for data in (secret, quote(secret).encode(), base64.b64encode(b"z" + secret)):
        assert find_leak(secret, r.redact(data)) is None


# --- streaming ---------------------------------------------------------------------------------


def _run_stream(r: Redactor, data: bytes, cuts: list[int]) -> bytes:
    step = r.stream()
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, prev = [], 0
    for p in [*points, len(data)]:
        out.append(step(data[prev:p]) if p > prev else b"")
        prev = p
    out.append(step(b""))
    return b"".join(out)


_filler = st.binary(max_size=300).filter(lambda b: SECRET2[:9] not in b)
_forms = st.sampled_from(sorted(FORMS))


@settings(max_examples=200, deadline=None)
@given(
    parts=st.lists(st.tuples(_filler, _forms), max_size=4),
    tail=_filler,
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=12),
)
def test_stream_any_split(parts: list[tuple[bytes, str]], tail: bytes, cuts: list[int]) -> None:
    data = b"".join(f + FORMS[name](SECRET) for f, name in parts) + tail
    out = _run_stream(REDACTOR, data, cuts)
    assert out == REDACTOR.redact(data)
    assert find_leak(SECRET, out) is None


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=2000), cuts=st.lists(st.integers(min_value=0), max_size=12))
def test_stream_passes_other_data_identically(data: bytes, cuts: list[int]) -> None:
    assert _run_stream(REDACTOR, data, cuts) == data


def test_stream_one_byte_chunks() -> None:
    data = b"a" * 10 + SECRET + b"b" * 10 + quote(SECRET2).encode() + b"c"
    assert _run_stream(REDACTOR, data, list(range(len(data)))) == (
        b"a" * 10 + PH + b"b" * 10 + PH2 + b"c"
    )


def test_stream_emits_early() -> None:
    """Text that cannot begin any form is sent at once, whole: nothing is held back."""
    step = REDACTOR.stream()
    big = b"x" * (REDACTOR.max_len * 3) + b"\n\n"
    assert step(big) == big
    assert step(b"") == b""


def test_stream_holds_only_a_possible_start() -> None:
    """A chunk ending in the first half of a secret: exactly that half waits."""
    step = REDACTOR.stream()
    half = SECRET[: len(SECRET) // 2]
    assert step(b"data: x\n\n" + half) == b"data: x\n\n"
    assert step(SECRET[len(half) :] + b"\n\n") == PH + b"\n\n"


def test_stream_holds_nothing_for_an_event_boundary_negative_twin() -> None:
    """The old fixed window held ``max_len - 1`` bytes of every chunk; the new tail is
    empty for the same SSE chunk: a regression to the window fails here."""
    event = b"data: " + b"y" * 40 + b"\n\n"
    assert REDACTOR.hold_from(event) == len(event)
    assert REDACTOR.hold_from(event + SECRET[:3]) == len(event)


def test_stream_negative_twin_naive_chunking_leaks() -> None:
    """Chunk-by-chunk redaction without the carry-over would miss a split secret."""
    data = b"head " + SECRET + b" tail"
    mid = 5 + len(SECRET) // 2
    naive = REDACTOR.redact(data[:mid]) + REDACTOR.redact(data[mid:])
    assert find_leak(SECRET, naive) is not None
    assert find_leak(SECRET, _run_stream(REDACTOR, data, [mid])) is None


# --- headers -----------------------------------------------------------------------------------


def test_redact_headers_all_values() -> None:
    h = http.Headers(
        [
            (b"X-Echo", SECRET),
            (b"X-Echo", b"Basic " + base64.b64encode(b"u:" + SECRET)),
            (b"Location", b"https://x/?k=" + quote_plus(SECRET).encode()),
            (b"X-Two", b"folded\r\n " + SECRET2),
            (b"Content-Type", b"text/plain"),
        ]
    )
    redact_headers(REDACTOR, h)
    raw = bytes(h)
    assert find_leak(SECRET, raw) is None and find_leak(SECRET2, raw) is None
    assert h.get_all("x-echo")[0] == PH.decode()
    assert h["content-type"] == "text/plain"
    REDACTOR.redact_headers(h)  # idempotent
    assert bytes(h) == raw


def test_drop_set_cookie() -> None:
    h = http.Headers([(b"Set-Cookie", b"a=1"), (b"set-cookie", b"b=2"), (b"X", b"y")])
    drop_set_cookie(h)
    assert "set-cookie" not in h and h["x"] == "y"
    drop_set_cookie(h)


# --- decoders ----------------------------------------------------------------------------------

PLAIN = b"".join(b"line %d " % i + SECRET2 + b"\n" for i in range(2000))


def _deflate_raw(data: bytes) -> bytes:
    c = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return c.compress(data) + c.flush()


ENCODERS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.compress,
    "x-gzip": gzip.compress,
    "deflate": zlib.compress,
    "deflate-raw": _deflate_raw,
    "br": brotli.compress,
    "zstd": lambda d: zstandard.ZstdCompressor().compress(d),
    "identity": lambda d: d,
    "gzip, br": lambda d: brotli.compress(gzip.compress(d)),
}


def _decode_chunks(dec: Callable[[bytes], bytes], data: bytes, size: int) -> bytes:
    out = [dec(data[i : i + size]) for i in range(0, len(data), size)]
    return b"".join(out) + dec(b"")


@pytest.mark.parametrize("size", [1, 7, 4096, 10**7])
@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_decoder_round_trip(name: str, size: int) -> None:
    encoding = "deflate" if name == "deflate-raw" else name
    dec = decoder_for(encoding.upper() if name == "gzip" else encoding)
    assert dec is not None
    assert _decode_chunks(dec, ENCODERS[name](PLAIN), size) == PLAIN


def test_gzip_multi_member_and_zstd_multi_frame() -> None:
    half = len(PLAIN) // 2
    dec = decoder_for("gzip")
    assert dec is not None
    data = gzip.compress(PLAIN[:half]) + gzip.compress(PLAIN[half:])
    assert _decode_chunks(dec, data, 333) == PLAIN
    z = zstandard.ZstdCompressor()
    dec = decoder_for("zstd")
    assert dec is not None
    assert _decode_chunks(dec, z.compress(PLAIN[:half]) + z.compress(PLAIN[half:]), 333) == PLAIN


@pytest.mark.parametrize("encoding", ["compress", "gzip, snappy", "x-unknown"])
def test_unknown_encoding_refused(encoding: str) -> None:
    assert decoder_for(encoding) is None


@pytest.mark.parametrize("name", ["gzip", "deflate", "br", "zstd"])
def test_decoder_limit(name: str) -> None:
    bomb = ENCODERS[name](b"\0" * 5_000_000)
    dec = decoder_for(name, limit=100_000)
    assert dec is not None
    with pytest.raises(BodyTooLarge):
        _decode_chunks(dec, bomb, 65536)


def test_decode_then_redact_stream() -> None:
    dec = decoder_for("gzip")
    assert dec is not None
    step = REDACTOR.stream()
    data = gzip.compress(PLAIN)
    out = b"".join(step(dec(data[i : i + 100])) for i in range(0, len(data), 100))
    out += step(dec(b"")) + step(b"")
    assert out == PLAIN.replace(SECRET2, PH2)
