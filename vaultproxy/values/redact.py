"""Response redaction: every encoded form of an injected secret becomes its placeholder.

:class:`Redactor` is built once per secret set. For each secret it compiles:

* **raw / percent / JSON, per character.** Each character of the secret matches its raw
  bytes, any ``%HH`` encoding of each byte (either hex case; ``+`` for a space), or a JSON
  escape (``\\uXXXX`` in either hex case, a surrogate pair for astral characters, and the
  short forms ``\\"`` ``\\\\`` ``\\/`` ``\\b`` ``\\f`` ``\\n`` ``\\r`` ``\\t``). One pattern
  therefore covers ``quote``/``quote_plus`` upper and lower hex, ``json.dumps`` with or
  without ``ensure_ascii``, ``\\/``-escaping encoders, Go's ``\\u003c`` HTML escapes, and
  any mix of them. Secrets that are not UTF-8 are matched per byte (raw or ``%HH``).
* **base64 and base64url**, whole (with and without ``=`` padding) and **at each of the
  three alignments** a secret can have inside a longer base64 text. A secret starting at
  byte offset ``k`` (mod 3) of the encoded plaintext starts at bit ``8k``; base64 character
  ``i`` covers bits ``[6i, 6i+6)``, so the characters wholly determined by the secret are
  ``ceil(8k/6) .. floor(8(k+L)/6) - 1``. We encode ``k`` zero bytes + secret + two zero
  bytes and keep that slice: the *stable core*. Whatever surrounds the secret, its base64
  contains one of the three cores, and replacing the core removes every character that
  depends on the secret alone. (The at most two edge characters mixing secret and
  neighbour bits still carry 2-4 bits each; that is not enough to matter.) Cores shorter
  than 8 characters (secrets under ~7 bytes) are not matched: they would hit ordinary text.
  Line-wrapped (MIME) base64 is not matched.
* **hex (base16)**, lower and upper case, and **base32**, whole (with and without ``=``
  padding). Hex is byte-aligned, so the secret's hex stands whole inside the hex of any
  longer text; mixed-case hex and base32 inside a longer base32 text are not matched.

All alternatives of all secrets form **one** compiled regex, longest first. The stream
variant holds back only the tail that is, or could still become, a form: the earliest
position from which the rest of the buffer is a proper prefix of some form (or a form that
more bytes could lengthen). That is decided with the ``regex`` package's partial matching
over the same pattern, so a chunk ending in ``\n\n`` (a server-sent event) is flushed at
once, while a secret split across two chunks sent seconds apart is still caught. A stream's
output is byte-identical to ``redact`` of the whole body.

That regex tries every position (tens of MB/s), so a **pre-check** (``may_match``) runs
first and skips buffers that cannot hold a form. Every match of the regex contains a
*needle* (the raw secret, or a base64 form) or an *escape* of one secret character (``%HH``
of a secret byte, ``+`` for a space, ``\\uXXXX`` of a secret character, a short JSON escape
of one): a text-form match that is not the raw secret writes at least one character escaped.
Needles are found with ``bytes`` search (memchr on their rarest byte first); escapes with a
memchr for their lead byte (``%``, ``\\``, ``+``), then a trie-shaped regex anchored on that
byte; each escape found costs one regex search over the window a match containing it could
span (``2 * max_len``), and after ``_MAX_WINDOWS`` of those the check gives up and says
"maybe". On bodies without a candidate this runs at GB/s. For ``bytes`` the check is a
function made per redactor (``_unrolled``): one memchr per distinct rarest byte and escape
lead, no loop.

The response gate's rules that both the proxy and ``POST /proxy`` apply are here too
(``gate_head`` for the header section, ``stream_filter`` for the body, behind the streaming
decoders of net/decoding.py: a compressed body cannot be redacted without decompressing it).
``decoder_for`` is re-exported for callers that decode without a gate.
"""

from __future__ import annotations

import base64
import itertools
import re
from collections.abc import Callable, Iterable
from typing import Any

import regex
from mitmproxy import http

from vaultproxy.errors import UnscannableResponse, UpstreamProtocol, VaultproxyError
from vaultproxy.net.decoding import Decoder, decoder_for

__all__ = [
    "Redactor",
    "base64_forms",
    "encoded_forms",
    "decoder_for",
    "drop_set_cookie",
    "gate_head",
    "gate_wire_head",
    "redact_headers",
    "refuse_folded",
    "stream_filter",
]

_MIN_CORE = 8
_MAX_WINDOWS = 8  # escapes checked one by one before may_match gives up (at least)
_JSON_SHORT = {
    '"': rb'\\"',
    "\\": rb"\\\\",
    "/": rb"\\/",
    "\b": rb"\\b",
    "\f": rb"\\f",
    "\n": rb"\\n",
    "\r": rb"\\r",
    "\t": rb"\\t",
}


def _hex_ci(value: int, width: int) -> bytes:
    """``value`` as hex digits matching either case, e.g. ``2[fF]``."""
    out = b""
    for ch in f"{value:0{width}x}":
        out += f"[{ch}{ch.upper()}]".encode() if ch.isalpha() else ch.encode()
    return out


def _byte_pattern(b: int) -> tuple[bytes, int]:
    alts = [re.escape(bytes([b])), b"%" + _hex_ci(b, 2)]
    if b == 0x20:
        alts.append(rb"\+")
    return b"(?:" + b"|".join(alts) + b")", 3


def _char_pattern(ch: str) -> tuple[bytes, int]:
    per_byte = [_byte_pattern(b) for b in ch.encode("utf-8")]
    alts = [b"".join(p for p, _ in per_byte)]
    longest = sum(n for _, n in per_byte)
    cp = ord(ch)
    if cp > 0xFFFF:
        hi, lo = 0xD800 + ((cp - 0x10000) >> 10), 0xDC00 + ((cp - 0x10000) & 0x3FF)
        alts.append(rb"\\u" + _hex_ci(hi, 4) + rb"\\u" + _hex_ci(lo, 4))
        longest = max(longest, 12)
    else:
        alts.append(rb"\\u" + _hex_ci(cp, 4))
        longest = max(longest, 6)
    if ch in _JSON_SHORT:
        alts.append(_JSON_SHORT[ch])
    return b"(?:" + b"|".join(alts) + b")", longest


def _text_pattern(secret: bytes) -> tuple[bytes, int]:
    """Raw, percent-encoded and JSON-escaped forms (and mixes) of ``secret``."""
    try:
        parts = [_char_pattern(ch) for ch in secret.decode("utf-8")]
    except UnicodeDecodeError:
        parts = [_byte_pattern(b) for b in secret]
    return b"".join(p for p, _ in parts), sum(n for _, n in parts)


def _hex_variants(value: int, width: int) -> list[bytes]:
    """``value`` as hex digits in every mix of letter case (what :func:`_hex_ci` matches)."""
    options = [{ch, ch.upper()} for ch in f"{value:0{width}x}"]
    return ["".join(p).encode() for p in itertools.product(*(sorted(o) for o in options))]


def _escapes(secret: bytes) -> set[bytes]:
    """Every escape a non-raw text-form match of ``secret`` may use, as literal bytes.

    A match of :func:`_text_pattern` that is not the raw secret itself writes at least one
    character (or byte) as ``%HH``, ``+`` (a space), ``\\uXXXX`` or a short JSON escape;
    these are exactly those escapes (for a surrogate pair, its first half).
    """
    out: set[bytes] = set()
    for b in set(secret):
        out.update(b"%" + h for h in _hex_variants(b, 2))
        if b == 0x20:
            out.add(b"+")
    try:
        text = secret.decode("utf-8")
    except UnicodeDecodeError:
        return out
    for ch in set(text):
        cp = ord(ch)
        if cp > 0xFFFF:
            cp = 0xD800 + ((cp - 0x10000) >> 10)
        out.update(b"\\u" + h for h in _hex_variants(cp, 4))
        if ch in _JSON_SHORT:
            out.add(_JSON_SHORT[ch].replace(b"\\\\", b"\\"))
    return out


def _trie_pattern(strings: Iterable[bytes]) -> bytes:
    """A regex matching where any of ``strings`` starts (a string whose prefix is also in
    ``strings`` is dropped: finding the prefix suffices). Factored as a trie so re tries
    each byte once."""
    trie: dict[int, Any] = {}
    for s in strings:
        node = trie
        for b in s:
            node = node.setdefault(b, {})
        node[-1] = {}

    def emit(node: dict[int, Any]) -> bytes:
        if -1 in node or not node:
            return b""
        leaves = sorted(b for b, child in node.items() if -1 in child)
        parts = []
        if len(leaves) == 1:
            parts.append(re.escape(bytes(leaves)))
        elif leaves:
            parts.append(b"[" + b"".join(re.escape(bytes([b])) for b in leaves) + b"]")
        for b, child in sorted(node.items()):
            if -1 not in child:
                parts.append(re.escape(bytes([b])) + emit(child))
        return parts[0] if len(parts) == 1 else b"(?:" + b"|".join(parts) + b")"

    return emit(trie)


def _escape_scanners(escapes: set[bytes]) -> tuple[tuple[bytes, re.Pattern[bytes]], ...]:
    """(lead byte, pattern) per escape lead (``%``, ``\\``, ``+``): a memchr for the lead, then
    re's literal-prefix scan, which stops only at the lead."""
    groups: dict[bytes, set[bytes]] = {}
    for esc in escapes:
        groups.setdefault(esc[:1], set()).add(esc)
    return tuple((lead, re.compile(_trie_pattern(g))) for lead, g in sorted(groups.items()))


# Bytes by how often they occur in text (most common last); any other byte ranks rarest.
_COMMON = b"=+/_-ZQXJKVWYUGBFHPMDCLONSITERAzqxjkvwyugbfhpmdclonsitera9876543210 "


def _commonness(b: int) -> int:
    return _COMMON.find(bytes([b]))


def _minimal(needles: set[bytes]) -> tuple[bytes, ...]:
    """``needles`` without any that contains another (finding the shorter one suffices)."""
    ordered = sorted(needles, key=len)
    kept: list[bytes] = []
    for n in ordered:
        if not any(k in n for k in kept):
            kept.append(n)
    return tuple(kept)


def base64_forms(secret: bytes) -> set[bytes]:
    """Whole encodings (padded and not) and the three stable alignment cores, std and url."""
    forms: set[bytes] = set()
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        whole = encode(secret)
        forms.update({whole, whole.rstrip(b"=")})
        for k in range(3):
            encoded = encode(b"\0" * k + secret + b"\0\0")
            start, end = -(-8 * k // 6), 8 * (k + len(secret)) // 6
            core = encoded[start:end]
            if len(core) >= _MIN_CORE:
                forms.add(core)
    forms.discard(b"")
    return forms


def encoded_forms(secret: bytes) -> set[bytes]:
    """Every whole-token encoding the redactor matches as a needle: base64 (see
    :func:`base64_forms`), hex in either case and base32. An upstream that reflects what it
    received in one of these (a debug echo, a signature input dump) is the case covered."""
    forms = base64_forms(secret)
    if len(secret) * 2 >= _MIN_CORE:
        forms.update({secret.hex().encode(), secret.hex().upper().encode()})
        b32 = base64.b32encode(secret)
        forms.update({b32, b32.rstrip(b"=")})
    forms.discard(b"")
    return forms


def _general(
    data: bytes,
    needles: tuple[tuple[bytes, bytes], ...],
    regex: re.Pattern[bytes] | None,
    span: int,
    escapes: tuple[tuple[bytes, re.Pattern[bytes]], ...],
) -> bool:
    """``Redactor.may_match`` in its general form (any bytes-like ``data``)."""
    for anchor, needle in needles:
        if anchor in data and needle in data:
            return True
    if regex is None:
        return False
    return _escaped(data, regex, span, escapes)


def _escaped(
    data: bytes,
    regex: re.Pattern[bytes],
    span: int,
    lead_escapes: tuple[tuple[int | bytes, re.Pattern[bytes]], ...],
) -> bool:
    """The escapes' part of ``may_match`` (no needle is in ``data``): at each escape of a
    secret character, the full regex over the window a match holding it could span; after
    the window budget, "maybe". A lead is a byte's value (the unrolled form, ``bytes`` data)
    or the byte itself (the general form, any bytes-like ``data``)."""
    # Windows cost about as much per byte as the full regex: spend at most ~1/4 of it.
    windows = max(_MAX_WINDOWS, len(data) // (8 * span)) if span else _MAX_WINDOWS
    for lead, escape in lead_escapes:
        if lead not in data:
            continue
        for m in escape.finditer(data):
            # A match holding an escape that starts in [m.start(), m.end()) (this one, or
            # one finditer stepped over) lies within this window.
            if regex.search(data, max(0, m.start() + 1 - span), m.end() + span) is not None:
                return True
            windows -= 1
            if windows <= 0:
                return True
    return False


def _unrolled(
    rare_needles: tuple[tuple[int, bytes], ...],
    lead_escapes: tuple[tuple[int, re.Pattern[bytes]], ...],
    regex: re.Pattern[bytes] | None,
    span: int,
    needles: tuple[tuple[bytes, bytes], ...],
    escapes: tuple[tuple[bytes, re.Pattern[bytes]], ...],
) -> Callable[[bytes], bool]:
    """``may_match`` for one redactor, its loops unrolled: for ``bytes``, one ``int in
    bytes`` (memchr) per distinct anchor byte, ``bytes.find`` for that anchor's needles only
    when it is there; then one ``int in bytes`` per escape lead, and :func:`_escaped` only
    when one is there (no lead byte in ``data``: no escape, so no window to look at). Any
    other buffer (a bytearray, a memoryview) takes :func:`_general`. The same answer as
    :func:`_general` for every buffer (tests/unit/test_speed_redact.py); about half its
    instructions when nothing is found (a loop turn, a tuple unpack and the window budget's
    ``max`` per call saved).

    The source names its constants (``a0``, ``n0_1``...) and binds them in the function's
    namespace: no byte of a secret is in the text compiled."""
    groups: dict[int, list[bytes]] = {}
    for anchor, needle in rare_needles:
        groups.setdefault(anchor, []).append(needle)
    namespace: dict[str, Any] = {
        "bytes": bytes, "_general": _general, "_escaped": _escaped, "needles": needles,
        "regex": regex, "span": span, "escapes": escapes, "lead_escapes": lead_escapes,
    }
    lines = [
        "def may_match(data):",
        "    if type(data) is not bytes:",
        "        return _general(data, needles, regex, span, escapes)",
    ]
    for i, (anchor, group) in enumerate(groups.items()):
        namespace[f"a{i}"] = anchor
        found = []
        for j, needle in enumerate(group):
            namespace[f"n{i}_{j}"] = needle
            # (``data.find`` only behind its anchor: no bound method made per call)
            found.append(f"data.find(n{i}_{j}) != -1")
        lines += [f"    if a{i} in data and ({' or '.join(found)}):", "        return True"]
    if regex is not None and lead_escapes:
        leads = []
        for k, (lead, _escape) in enumerate(lead_escapes):
            namespace[f"l{k}"] = lead
            leads.append(f"l{k} in data")
        lines += [f"    if {' or '.join(leads)}:",
                  "        return _escaped(data, regex, span, lead_escapes)"]
    lines.append("    return False")
    source = "\n".join(lines)
    exec(compile(source, "<redactor may_match>", "exec"), namespace)  # noqa: S102 - our text
    fn: Callable[[bytes], bool] = namespace["may_match"]
    return fn


class Redactor:
    """Replaces every known form of each secret with that secret's placeholder.

    Before the (slow, per-position) regex runs, :meth:`may_match` checks a buffer with a few
    ``bytes`` searches: every match of the regex contains one of the *needles* (the raw
    secret, each base64 form) or one of the *escapes* (``%HH`` of a secret byte, ``\\uXXXX``
    of a secret character, ...). A buffer with none of them is returned as it is.
    """

    __slots__ = ("_escapes", "_lead_escapes", "_needles", "_partial", "_re", "_repl",
                 "_rare_needles", "max_len", "may_match")

    #: False only if no form of any secret occurs in ``data``; cheap when none does. The
    #: needles are looked for with ``bytes`` searches; then, at each escape of a secret
    #: character, the full regex runs over the window a match containing that escape could
    #: span; after ``_MAX_WINDOWS`` (more in a long buffer) such escapes in no match it gives
    #: up and answers True. A function made for this redactor (:func:`_unrolled`), kept in a
    #: slot: called as ``redactor.may_match(data)``, without a method's frame.
    may_match: Callable[[bytes], bool]

    def __init__(self, pairs: Iterable[tuple[bytes, bytes]]) -> None:
        alternatives: dict[bytes, tuple[int, bytes]] = {}
        firsts: set[int] = set()
        needles: set[bytes] = set()
        escapes: set[bytes] = set()
        for secret, placeholder in pairs:
            if not secret:
                continue
            text, text_len = _text_pattern(secret)
            alternatives.setdefault(text, (text_len, placeholder))
            firsts.update((secret[0], ord("%"), ord("\\"), ord("+")))
            needles.add(secret)
            escapes.update(_escapes(secret))
            for form in encoded_forms(secret):
                alternatives.setdefault(re.escape(form), (len(form), placeholder))
                firsts.add(form[0])
                needles.add(form)
        ordered = sorted(alternatives.items(), key=lambda kv: kv[1][0], reverse=True)
        self._repl: tuple[bytes, ...] = tuple(ph for _, (_, ph) in ordered)
        self.max_len: int = max((n for _, (n, _) in ordered), default=0)
        # (rarest byte, needle): the byte is looked for first, with memchr.
        self._needles: tuple[tuple[bytes, bytes], ...] = tuple(
            (bytes([min(n, key=_commonness)]), n) for n in _minimal(needles)
        )
        self._escapes = _escape_scanners(escapes)
        # The same, the lead bytes as ints: ``int in bytes`` is a memchr, while ``bytes in
        # bytes`` first tries the operand as an int and raises (and clears) a TypeError
        # inside CPython, ~2.8k instructions each (may_match's common case, below).
        self._rare_needles: tuple[tuple[int, bytes], ...] = tuple(
            (anchor[0], needle) for anchor, needle in self._needles
        )
        self._lead_escapes: tuple[tuple[int, re.Pattern[bytes]], ...] = tuple(
            (lead[0], escape) for lead, escape in self._escapes
        )
        if ordered:
            # The leading lookahead lets re skip positions that cannot start any form:
            # about 9x faster than the bare alternation.
            first = b"".join(re.escape(bytes([c])) for c in sorted(firsts))
            body = b"|".join(b"(" + pat + b")" for pat, _ in ordered)
            pattern = b"(?=[" + first + b"])(?:" + body + b")"
            self._re: re.Pattern[bytes] | None = re.compile(pattern)
            self._partial: Any = regex.compile(pattern)
        else:
            self._re = None
            self._partial = None
        self.may_match = _unrolled(self._rare_needles, self._lead_escapes, self._re,
                                   self.max_len, self._needles, self._escapes)

    def __repr__(self) -> str:
        return f"<Redactor {len(self._repl)} forms>"

    def _may_match(self, data: bytes) -> bool:
        """``may_match`` in its general form (any bytes-like ``data``)."""
        return _general(data, self._needles, self._re, self.max_len, self._escapes)

    def _sub(self, m: re.Match[bytes]) -> bytes:
        assert m.lastindex is not None
        return self._repl[m.lastindex - 1]

    def redact(self, data: bytes) -> bytes:
        """``data`` with every secret form replaced."""
        if self._re is None or not data or not self.may_match(data):
            return data
        return self._re.sub(self._sub, data)

    def hold_from(self, buf: bytes) -> int:
        """Where the undecided tail of ``buf`` starts (``len(buf)``: nothing is undecided).

        The earliest position from which the rest of ``buf`` is a proper prefix of a form,
        or a whole form that more bytes could still change. Only the last ``max_len`` bytes
        can hold one. A ``fullmatch`` with ``partial=True`` tries every alternative against
        the whole rest, so a shorter form matching there cannot hide a longer one still
        arriving; the ``search`` before it skips to the first position where anything could.
        """
        partial = self._partial
        end = len(buf)
        if partial is None or not buf:
            return end
        first = partial.search(buf, max(0, end - self.max_len), partial=True)
        if first is None:
            return end
        for pos in range(first.start(), end):
            if partial.fullmatch(buf, pos, partial=True) is not None:
                return pos
        return end

    def stream(self) -> Callable[[bytes], bytes]:
        """A per-chunk redactor for ``flow.response.stream``; call it with ``b""`` to flush.

        It holds back only the undecided tail (:meth:`hold_from`); everything before it is
        final and sent at once. The output is byte-identical to :meth:`redact` of the whole
        input however it is split.
        """
        carry = b""
        pattern = self._re
        may_match = self.may_match
        hold_from = self.hold_from

        def step(chunk: bytes) -> bytes:
            nonlocal carry
            buf = carry + chunk if carry else chunk
            if not chunk or pattern is None:
                carry = b""
                return self.redact(buf)
            hold = hold_from(buf)
            if hold == 0:
                carry = buf
                return b""
            out: list[bytes] = []
            pos = 0
            if may_match(buf):
                for m in pattern.finditer(buf):
                    if m.end() > hold:
                        # a form that reaches into the undecided tail is decided with it
                        hold = min(hold, m.start())
                        break
                    out.append(buf[pos : m.start()])
                    out.append(self._sub(m))
                    pos = m.end()
            out.append(buf[pos:hold])
            carry = buf[hold:]
            return b"".join(out)

        return step

    def redact_headers(self, headers: http.Headers, joined: bytes | None = None) -> None:
        """Redact every header field (names and each of several values) in place.
        ``joined``: the fields' names and values joined by LF, if the caller has them."""
        if self._re is None:
            return
        # One pre-check over all of them: a form inside any field is inside the joined bytes.
        if joined is None:
            joined = _joined(headers.fields)
        if not self.may_match(joined):
            return
        fields = tuple((self.redact(k), self.redact(v)) for k, v in headers.fields)
        if fields != headers.fields:
            headers.fields = fields


def _joined(fields: tuple[tuple[bytes, bytes], ...]) -> bytes:
    """Every name and value of ``fields``, in order, joined by LF. A few fields (the common
    head) are flattened by one tuple ``sum`` (no iterator; quadratic, so only a few)."""
    if len(fields) <= _FEW_FIELDS:
        try:
            return b"\n".join(sum(fields, ()))
        except TypeError:  # a field that is not a tuple (a list): as below
            pass
    return b"\n".join(itertools.chain.from_iterable(fields))


_FEW_FIELDS = 24


def redact_headers(redactor: Redactor, headers: http.Headers) -> None:
    """Function form of :meth:`Redactor.redact_headers`."""
    redactor.redact_headers(headers)


_LINE_BREAK = re.compile(rb"[\r\n\x00]")


def refuse_folded(headers: http.Headers) -> None:
    """A response header field holding a line break (an obs-fold continuation, RFC 9112
    §5.2, which mitmproxy keeps as ``"\r\n "`` in the value) or NUL is refused as a request
    one is: forwarded, it would split a value (a secret among them) across two lines that no
    redactor pattern spans, and the agent's client may read the second line as a header.

    First one look at all the fields joined by LF: without CR or NUL and with only the
    joins' LFs, no field holds any (the common case); else each field is looked at."""
    _refuse_folded(headers.fields, None)


def _refuse_folded(fields: tuple[tuple[bytes, bytes], ...], joined: bytes | None) -> None:
    if joined is None:
        joined = _joined(fields)
    # ``int in bytes``: a memchr (``bytes in bytes`` raises a TypeError inside, see
    # ``Redactor._rare_needles``); ``joined`` is bytes (a ``bytes.join``).
    if joined.count(b"\n") == 2 * len(fields) - 1 and 13 not in joined and 0 not in joined:
        return
    for name, value in fields:
        if _LINE_BREAK.search(value) or _LINE_BREAK.search(name):
            raise UpstreamProtocol("the upstream sent a folded (obs-fold) response header")


def drop_set_cookie(headers: http.Headers) -> None:
    """Remove every ``Set-Cookie`` (an injected service's cookies never reach the agent)."""
    if "set-cookie" in headers:
        del headers["set-cookie"]


def stream_filter(
    redactor: Redactor,
    decode: Callable[[bytes], bytes] | None,
    on_error: Callable[[VaultproxyError], None] | None = None,
) -> Callable[[bytes], list[bytes]]:
    """A response body's filter, chunk by chunk: decode, redact, and never emit an empty chunk
    (``b""`` in: the end of the body, flush). The proxy's ``flow.response.stream`` callable
    and ``POST /proxy``'s relay.

    mitmproxy sends every returned item as a chunk; on HTTP/1.1 an empty one is written as
    ``0\\r\\n\\r\\n``, the end of a chunked body, which would truncate the response while
    the redactor holds back a possible partial match. So return a list, empty when holding.

    A body that stops decoding (corrupt, trailing bytes, over the size cap) after its head
    went out: ``on_error`` gets the error (the proxy cuts the connection, so the agent sees
    an incomplete body, never a complete-looking one) and nothing more is emitted; without
    ``on_error`` the error is raised.
    """
    feed = redactor.stream()

    if decode is None:

        def plain(chunk: bytes) -> list[bytes]:
            out = feed(chunk)
            return [out] if out else []

        return plain

    failed = False

    def decoded(chunk: bytes) -> list[bytes]:
        nonlocal failed
        if failed:
            return []
        try:
            data = decode(chunk)
        except VaultproxyError as e:
            if on_error is None:
                raise
            failed = True
            on_error(e)
            return []
        if chunk:
            out = feed(data) if data else b""
        else:
            out = feed(data) + feed(b"") if data else feed(b"")
        return [out] if out else []

    return decoded


def gate_head(
    redactor: Redactor, headers: http.Headers, plain: bool = False
) -> tuple[str, Decoder | None]:
    """The response gate's header rules, for the proxy and ``POST /proxy`` alike: drop
    ``Set-Cookie``, redact every field, and pick the body's decoder. Returns the
    ``Content-Encoding`` ("" for identity) and its decoder (None for identity); an encoding
    no decoder reads raises UnscannableResponse (the body could hide a secret); a folded
    header field raises UpstreamProtocol.

    ``plain``: the caller found no ``Set-Cookie`` and no ``Content-Encoding`` field in
    ``headers`` (returns ``("", None)`` without looking for them again)."""
    fields = headers.fields
    joined = _joined(fields)  # one join for the fold check and the redactor's pre-check
    # ``_refuse_folded``'s first look, inline: its field loop only when that fails
    if not (joined.count(b"\n") == 2 * len(fields) - 1 and 13 not in joined
            and 0 not in joined):
        _refuse_folded(fields, joined)
    if not plain:
        drop_set_cookie(headers)
    redactor.redact_headers(headers, joined if headers.fields is fields else None)
    if plain:
        return "", None
    encoding = headers.get("content-encoding", "identity").strip().lower()
    if encoding in ("", "identity"):
        return "", None
    decode = decoder_for(encoding)
    if decode is None:
        raise UnscannableResponse()
    return encoding, decode


def gate_wire_head(
    redactor: Redactor, headers: http.Headers, block: bytes, cookie: bool
) -> None:
    """``gate_head(redactor, headers, plain=not cookie)`` for a head without
    ``Content-Encoding`` (``cookie``: it holds a ``Set-Cookie``), given ``block``, its
    fields' wire form (``b"\\r\\n".join(map(b": ".join, headers.fields))``), which
    stands in for ``_joined``'s bytes: each name and value is in it whole, between ": "
    and CRLF joins. So no field holds CR, LF or NUL exactly when it holds one CR and one
    LF per join and no NUL; and a form inside a field is inside it (``may_match`` is
    False only when no form is in the buffer, whatever the bytes around one: a "maybe"
    costs only the per-field pass, which decides). tests/unit/test_speed_response_out.py
    compares it with ``gate_head``."""
    fields = headers.fields
    joins = len(fields) - 1
    if not (block.count(b"\n") == joins and block.count(b"\r") == joins
            and 0 not in block):
        _refuse_folded(fields, None)
    if cookie:
        drop_set_cookie(headers)
    redactor.redact_headers(headers, block if headers.fields is fields else None)
