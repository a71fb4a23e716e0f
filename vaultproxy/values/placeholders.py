"""Find, check and substitute placeholders. Bytes in, bytes out; no I/O.

A placeholder is the text an agent holds instead of a secret (``__vault.<name>__`` unless the
service sets its own). Two checks run over every request surface before anything changes:

* **misdirected** - another service's placeholder (default or custom) is present;
* **unknown** - a ``__vault.<x>__`` token is present that is nobody's placeholder.

The checks also look through the encodings an upstream would undo, so encoding cannot hide a
token: percent-encoding (repeated, e.g. ``%252E``; ``+`` as space), JSON ``\\uXXXX`` / ``\\/``
escapes, and a ``Basic`` credential's base64. Every view is scanned, the raw one included.

A ``__vault.<x>__`` token whose ``x`` is a registered *service name* but not that service's
placeholder (the service set a custom one) counts as misdirected when sent to another service
and as unknown when sent to ``x`` itself: it is never a valid credential carrier.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Literal
from urllib.parse import quote, quote_plus, unquote_to_bytes

from vaultproxy.errors import PlaceholderMisdirected, PlaceholderUnknown, SecretMissing

__all__ = [
    "TOKEN_RE",
    "Context",
    "PlaceholderIndex",
    "basic_credentials",
    "decoded_views",
    "encode_secret",
    "substitute",
]

#: Any ``__vault.<name>__`` token, name per the services.toml name rule.
TOKEN_RE = re.compile(rb"__vault\.([a-z0-9][a-z0-9_-]{0,63})__")
_TOKEN_PREFIX = b"__vault."  # in every match of TOKEN_RE

Context = Literal["raw", "percent", "json", "form"]

_PERCENT_RE = re.compile(rb"%[0-9A-Fa-f]{2}")
_JSON_ESCAPE_RE = re.compile(rb"\\u([0-9A-Fa-f]{4})|\\(/)")
_BASIC_RE = re.compile(rb"^\s*basic\s+([A-Za-z0-9+/_-]+=*)\s*$", re.IGNORECASE)
_BASIC_WORD = re.compile(rb"basic", re.IGNORECASE)  # in every value _BASIC_RE matches
_MAX_DECODE_ROUNDS = 4


def basic_credentials(value: bytes) -> bytes | None:
    """The decoded ``user:pass`` of a ``Basic`` header value, or None if it is not one."""
    m = _BASIC_RE.match(value)
    if m is None:
        return None
    raw = m.group(1).rstrip(b"=")
    raw += b"=" * (-len(raw) % 4)
    try:
        return base64.b64decode(raw.replace(b"-", b"+").replace(b"_", b"/"), validate=True)
    except (binascii.Error, ValueError):
        return None


def _json_unescape(data: bytes) -> bytes:
    def one(m: re.Match[bytes]) -> bytes:
        if m.group(2) is not None:
            return b"/"
        cp = int(m.group(1), 16)
        return chr(cp).encode("utf-8", "surrogatepass")

    return _JSON_ESCAPE_RE.sub(one, data)


def holds(data: bytes, needle: bytes) -> bool:
    """``needle in data``; on ``bytes`` as ``data.find(needle) != -1``, the same search
    without the TypeError ``bytes in bytes`` raises and clears inside CPython first (it
    tries the needle as an int): several times the cost of the search on a header value."""
    if type(data) is bytes:
        return data.find(needle) != -1
    return needle in data


def decoded_views(data: bytes) -> Iterator[bytes]:
    """``data`` and every decoding of it an upstream might apply (see module docstring)."""
    yield data
    if holds(data, b"%"):
        view = data
        for _ in range(_MAX_DECODE_ROUNDS):
            if not _PERCENT_RE.search(view):
                break
            view = unquote_to_bytes(view)
            yield view
    if holds(data, b"+"):
        yield unquote_to_bytes(data.replace(b"+", b" "))
    if holds(data, b"\\"):
        yield _json_unescape(data)
    creds = basic_credentials(data)
    if creds is not None:
        yield from decoded_views(creds)


class PlaceholderIndex:
    """All services' placeholders, compiled once per registry.

    ``mapping`` is ``{placeholder_text: service_name}`` over every service.
    """

    __slots__ = ("_owner", "_own", "_any_re", "_names", "_needle", "_needles")

    def __init__(self, mapping: Mapping[str, str]) -> None:
        self._owner: dict[bytes, str] = {}
        self._own: dict[str, bytes] = {}
        for text, service in mapping.items():
            if not text:
                raise ValueError(f"service {service!r} has an empty placeholder")
            ph = text.encode("utf-8")
            self._owner[ph] = service
            self._own[service] = ph
        self._names = frozenset(self._own)
        alternatives = sorted(self._owner, key=len, reverse=True)
        pattern = b"|".join([re.escape(p) for p in alternatives] + [TOKEN_RE.pattern])
        self._any_re = re.compile(pattern)
        # Literals one of which is in any text ``_any_re`` matches: the token's fixed prefix
        # (every default placeholder holds it) and each custom placeholder that does not.
        self._needles = tuple(
            n.decode("latin-1")
            for n in (_TOKEN_PREFIX, *(p for p in alternatives if _TOKEN_PREFIX not in p))
        )
        # the one needle when there is only one (``__vault.``), else None
        self._needle: str | None = self._needles[0] if len(self._needles) == 1 else None

    def placeholder_of(self, service_name: str) -> bytes:
        return self._own[service_name]

    def scan(self, data: bytes, service_name: str) -> None:
        """Raise if ``data`` (in any decoded view) carries a foreign or unknown placeholder."""
        if (37 not in data and 43 not in data and 92 not in data) if type(data) is bytes else (
                b"%" not in data and b"+" not in data and b"\\" not in data):
            # No ``%``, ``+`` or ``\\`` (on bytes as ``int in bytes``, a memchr: ``bytes in
            # bytes`` raises and clears a TypeError inside CPython first). The common case
            # (runs for every header of every request): the raw view only, plus a Basic
            # credential's decodings; the same views decoded_views would give.
            for m in self._any_re.finditer(data):
                self._check(m.group(), service_name)
            if _BASIC_RE.match(data) is None:
                return
            creds = basic_credentials(data)
            if creds is not None:
                self.scan(creds, service_name)
            return
        for view in decoded_views(data):
            for m in self._any_re.finditer(view):
                self._check(m.group(), service_name)

    def scan_all(self, pieces: Sequence[bytes], service_name: str) -> None:
        """``scan`` of each piece (a request's header names, values, path and query).

        Each piece's scan can only raise on a match of the placeholder/token pattern in it,
        on a ``%``, ``+`` or ``\\`` (a decoded view), or on a ``Basic`` value; all of them
        are substrings of the pieces joined. So when the joined bytes hold none, no piece
        does: one search instead of one per piece. Otherwise every piece is scanned."""
        # (the per-request head takes ``scan_head``, its filter inline; this is the general
        # path's: plain HTTP, ``prepare_request``, ``scan_head``'s fallback)
        if self._may_trip(b"\n".join(pieces)):
            for piece in pieces:
                self.scan(piece, service_name)

    def scan_head(self, fields: Sequence[tuple[bytes, bytes]], path: bytes,
                  service_name: str) -> None:
        """``scan_all`` of a request head's pieces: every name and value of ``fields`` in
        order, then ``path`` before its first ``?`` and the query after it (``_pieces``).

        The filter (``scan_all``'s) reads the same text without those pieces: ``path``
        whole first, then the fields' names and values, joined by one tuple ``sum`` (C,
        quadratic: a few fields only). Each piece is a substring of that text (the path's
        two parts of ``path``), and what can trip the filter (a ``%``, ``+`` or ``\\``,
        ``basic``, a match of ``_any_re``) trips it wherever a piece holds it: order does
        not matter to it; text that only this join makes (across a ``?`` or a field) can
        only trip it more, and then the per-piece scans, in ``scan_all``'s order, decide.
        (tests/unit/test_speed_req12.py compares it with ``scan_all``.)"""
        if len(fields) > 24:  # (``_FEW_FIELDS``)
            self._scan_pieces(fields, path, service_name)
            return
        try:
            joined = b"\n".join(sum(fields, (path,)))
        except TypeError:  # a field that is not a tuple (a list): as ``_pieces`` does
            self._scan_pieces(fields, path, service_name)
            return
        text = joined.decode("latin-1")
        if "%" in text or "+" in text or "\\" in text or "basic" in text.lower():
            pass
        elif (one := self._needle) is not None:
            if one not in text or self._any_re.search(joined) is None:
                return
        elif not self._may_trip(joined):
            return
        path, _, query = path.partition(b"?")
        for field in fields:
            for piece in field:
                self.scan(piece, service_name)
        self.scan(path, service_name)
        self.scan(query, service_name)

    def _scan_pieces(self, fields: Sequence[Sequence[bytes]], path: bytes,
                     service_name: str) -> None:
        """``scan_all`` of the pieces ``scan_head`` reads, built as ``_pieces`` does."""
        pieces = [x for field in fields for x in field]
        before, _, query = path.partition(b"?")
        pieces.append(before)
        pieces.append(query)
        self.scan_all(pieces, service_name)

    def _may_trip(self, data: bytes) -> bool:
        """Whether ``data`` holds a ``%``, ``+`` or ``\\``, a match of ``_any_re`` or of
        ``_BASIC_WORD`` (``basic``, ASCII case-insensitive): what ``scan_all`` asks of the
        joined request, nearly always False.

        The substring tests run on ``data`` decoded as Latin-1 (one character per byte, so a
        ``str`` substring is exactly a ``bytes`` one): ``bytes in bytes`` first tries its
        argument as an integer and raises inside, several times the cost of ``str in str``.
        ``_any_re`` runs only when one of its literals (``_needles``) is there."""
        text = data.decode("latin-1")
        if "%" in text or "+" in text or "\\" in text:
            return True
        for needle in self._needles:
            if needle in text:
                if self._any_re.search(data) is not None:
                    return True
                break
        # ``str.lower`` of Latin-1 text changes A-Z as ``bytes.lower`` does, and otherwise only
        # \xc0-\xde, each to one non-ASCII character: "basic" is in either or in neither.
        return "basic" in text.lower()

    def _check(self, token: bytes, service_name: str) -> None:
        owner = self._owner.get(token)
        if owner is not None:
            if owner != service_name:
                raise PlaceholderMisdirected(
                    f"placeholder of service {owner!r} sent to service {service_name!r}"
                )
            return
        # A __vault.x__ token that is not a registered placeholder.
        m = TOKEN_RE.fullmatch(token)
        name = m.group(1).decode() if m else ""
        if name in self._names and name != service_name:
            raise PlaceholderMisdirected(
                f"placeholder of service {name!r} sent to service {service_name!r}"
            )
        raise PlaceholderUnknown(f"a __vault.*__ token names no placeholder ({name!r})")

    def contains_own(self, data: bytes, service_name: str) -> bool:
        """Whether ``data`` holds ``service_name``'s placeholder verbatim (or in Basic base64)."""
        ph = self._own.get(service_name)
        if ph is None:
            return False
        if ph in data:
            return True
        creds = basic_credentials(data)
        return creds is not None and ph in creds


def encode_secret(secret: bytes, context: Context) -> bytes:
    """``secret`` encoded for the place it is going to."""
    if context == "raw":
        return secret
    if context == "percent":
        return quote(secret, safe="").encode("ascii")
    if context == "form":
        return quote_plus(secret, safe="").encode("ascii")
    try:
        text = secret.decode("utf-8")
    except UnicodeDecodeError:
        raise SecretMissing("the secret is not UTF-8 text and cannot go into JSON") from None
    return json.dumps(text, ensure_ascii=False)[1:-1].encode("utf-8")


def substitute(data: bytes, placeholder: bytes, secret: bytes, context: Context) -> bytes:
    """Replace every ``placeholder`` in ``data`` with ``secret`` encoded for ``context``.

    ``percent`` is for query and path (``quote(safe="")``), ``form`` for
    ``application/x-www-form-urlencoded`` bodies, ``json`` for JSON string content.
    """
    if not holds(data, placeholder):
        return data
    return data.replace(placeholder, encode_secret(secret, context))
