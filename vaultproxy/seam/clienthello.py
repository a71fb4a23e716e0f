"""The agent's TLS ClientHello read in one pass over its bytes (a speed patch of the seam).

Every new agent connection's inner TLS starts with mitmproxy's ``parse_client_hello``, whose
``ClientHello`` parses the message with a generated kaitaistruct grammar
(``contrib/kaitaistruct/tls_client_hello.py``): ~60 objects and ~370 Python calls, ~0.46 M
instructions of a new connection's ~9 M (bench/newconn.py), for the four things anything
reads of it: the cipher suites, the extensions, the SNI and the ALPN offers.

``parse_client_hello`` here is mitmproxy's with ``FastClientHello`` in ``ClientHello``'s
place: one pass over the same fields in the same order, as the grammar reads them (the
lengths the grammar reads but does not hold the data to -- the extensions' total, the SNI
list's and the ALPN list's -- are read and not checked, as there; an odd cipher-suite length
leaves its last byte to the compression methods, as there). Any message the grammar would
reject (a field running past the end: its ``EOFError``) is handed to mitmproxy's own
``ClientHello``, which then raises exactly what it raises, so the TLS layer logs the same
"Cannot parse ClientHello". ``FastClientHello`` is a ``ClientHello`` whose ``cipher_suites``,
``extensions``, ``sni`` and ``alpn_protocols`` are computed as mitmproxy's properties
compute them; its ``_client_hello`` (the grammar's object, private) is parsed by the grammar
on first use, for anything that reads it; DTLS stays mitmproxy's.

mitmproxy's ``parse_client_hello``, ``ClientHello``'s methods and the grammar's ``_read``
methods are fingerprinted (``need.unchanged``): if any differs, mitmproxy's
``parse_client_hello`` stays, with one WARNING. ``VAULTPROXY_FAST_CLIENTHELLO=0`` keeps it
too (A/B). tests/unit/test_speed_clienthello.py compares both on seeded messages, well
formed and broken."""

from __future__ import annotations

import hashlib
import logging
import struct
from collections.abc import Callable
from typing import Any

from mitmproxy import tls as mtls
from mitmproxy.net import check

from vaultproxy.seam import need
from vaultproxy.seam.need import missing

logger = logging.getLogger(__name__)

ENV = "VAULTPROXY_FAST_CLIENTHELLO"
#: ``need.fingerprint`` (source text) of each mitmproxy 12.3 function read here
FINGERPRINTS = {
    "parse_client_hello": "537b0089913d85d9",
    "ClientHello.__init__": "63c5609a95accaae",
}
#: ``need.code_fingerprint`` of each, on ``need.CODE_MAGIC``'s bytecode
CODE_FINGERPRINTS = {
    "parse_client_hello": "31bd5726192c925b",
    "ClientHello.__init__": "c8106a03128c13e0",
}
#: one fingerprint over the grammar's ``_read`` methods and ``ClientHello``'s properties
#: (``grammar_fingerprint``): by source text, and by compiled code
GRAMMAR = ("0c8731da6656adfe", "42e64b008ba590df")

#: the grammar's classes whose ``_read`` this module mirrors
_GRAMMAR_CLASSES = ("", "Version", "Random", "SessionId", "CipherSuites",
                    "CompressionMethods", "Extensions", "Extension", "Sni", "ServerName",
                    "Alpn", "Protocol")
_PROPERTIES = ("cipher_suites", "sni", "alpn_protocols", "extensions")

#: mitmproxy's ``parse_client_hello``, as its modules had it before ``install`` (the tests)
STOCK: dict[str, Callable[..., Any]] = {}
_installed = False
_unpack_hh = struct.Struct(">HH").unpack_from


class FastClientHello(mtls.ClientHello):
    """A ``ClientHello`` read by ``read``: the same public answers as mitmproxy's."""

    _cipher_suites: list[int]
    #: (type, raw body, parsed body): SNI ``[(name_type, host_name), ...]``, ALPN
    #: ``[name, ...]``, else None
    _exts: list[tuple[int, bytes, list[Any] | None]] | None

    def __init__(self, raw_client_hello: bytes, parsed: tuple[list[int], Any]) -> None:
        self._raw_bytes = raw_client_hello
        self._cipher_suites, self._exts = parsed

    @property  # mitmproxy assigns it in __init__; here the grammar's object is made on use
    def _client_hello(self) -> Any:  # type: ignore[override]
        found = self.__dict__.get("_kaitai")
        if found is None:
            found = self.__dict__["_kaitai"] = mtls.ClientHello(self._raw_bytes)._client_hello
        return found

    @property
    def cipher_suites(self) -> list[int]:
        return self._cipher_suites

    @property
    def sni(self) -> str | None:
        for typ, _, names in self._exts or ():
            if typ == 0x00 and names is not None and len(names) == 1 and names[0][0] == 0 \
                    and check.is_valid_host(names[0][1]):
                return names[0][1].decode("ascii")  # type: ignore[no-any-return]
        return None

    @property
    def alpn_protocols(self) -> list[bytes]:
        for typ, _, names in self._exts or ():
            if typ == 0x10:
                return list(names or ())
        return []

    @property
    def extensions(self) -> list[tuple[int, bytes]]:
        return [(typ, body) for typ, body, _ in self._exts or ()]


def read(raw: bytes) -> tuple[list[int], Any] | None:
    """``(cipher suites, extensions)`` as the grammar reads ``raw`` (a ClientHello's body);
    None where the grammar would raise (a field past the end)."""
    n = len(raw)
    if n < 35:  # version (2), random (4 + 28), session id length (1)
        return None
    pos = 35 + raw[34]
    if pos + 2 > n:
        return None
    count = (raw[pos] << 8 | raw[pos + 1]) // 2
    pos += 2
    if pos + 2 * count > n:
        return None
    suites = list(struct.unpack_from(f">{count}H", raw, pos))
    pos += 2 * count
    if pos + 1 > n:
        return None
    pos += 1 + raw[pos]
    if pos > n:
        return None
    if pos == n:
        return suites, None  # no extensions block
    if pos + 2 > n:
        return None
    pos += 2  # the extensions' total length: read, not checked
    exts: list[tuple[int, bytes, list[Any] | None]] = []
    while pos < n:
        if pos + 4 > n:
            return None
        typ, length = _unpack_hh(raw, pos)
        pos += 4
        if pos + length > n:
            return None
        body = raw[pos:pos + length]
        pos += length
        parsed: list[Any] | None = None
        if typ == 0:
            parsed = _server_names(body)
            if parsed is None:
                return None
        elif typ == 16:
            parsed = _protocols(body)
            if parsed is None:
                return None
        exts.append((typ, body, parsed))
    return suites, exts


def _server_names(body: bytes) -> list[Any] | None:
    n = len(body)
    if n < 2:
        return None
    pos, names = 2, []  # the list's length: read, not checked
    while pos < n:
        if pos + 3 > n:
            return None
        length = body[pos + 1] << 8 | body[pos + 2]
        if pos + 3 + length > n:
            return None
        names.append((body[pos], body[pos + 3:pos + 3 + length]))
        pos += 3 + length
    return names


def _protocols(body: bytes) -> list[Any] | None:
    n = len(body)
    if n < 2:
        return None
    pos, names = 2, []  # the list's length: read, not checked
    while pos < n:
        end = pos + 1 + body[pos]
        if end > n:
            return None
        names.append(body[pos + 1:end])
        pos = end
    return names


def client_hello(raw: bytes) -> mtls.ClientHello:
    """``ClientHello(raw)``: a ``FastClientHello``, or mitmproxy's own (which raises) where
    the grammar would not read ``raw``."""
    parsed = read(raw)
    if parsed is None:
        return mtls.ClientHello(raw)
    return FastClientHello(raw, parsed)


def _make(get_client_hello: Callable[[bytes], bytes | None]) -> Callable[..., Any]:
    def parse_client_hello(data: bytes) -> mtls.ClientHello | None:
        """mitmproxy's ``parse_client_hello`` with ``client_hello`` for ``ClientHello``."""
        # Check if ClientHello is complete
        found = get_client_hello(data)
        if found:
            try:
                return client_hello(found[4:])
            except EOFError as e:
                raise ValueError("Invalid ClientHello") from e
        return None

    return parse_client_hello


def _grammar() -> Any:
    from mitmproxy.contrib.kaitaistruct import tls_client_hello

    return tls_client_hello.TlsClientHello


def _reads() -> list[Any]:
    root = _grammar()
    fns = [getattr(root, name) if name else root for name in _GRAMMAR_CLASSES]
    return [c._read for c in fns] + [getattr(mtls.ClientHello, p).fget for p in _PROPERTIES]


def grammar_fingerprint(code: bool) -> str | None:
    """One sha256 (16 hex digits) over the grammar's ``_read`` methods and ``ClientHello``'s
    properties: of their compiled code (``code``) or of their source text."""
    digest = hashlib.sha256()
    for fn in _reads():
        one = need.code_fingerprint(fn) if code else need.fingerprint(fn)
        if one is None:
            return None
        digest.update(one.encode())
    return digest.hexdigest()[:16]


def _grammar_unchanged() -> bool:
    if need.code_magic_matches() and grammar_fingerprint(True) == GRAMMAR[1]:
        return True
    return grammar_fingerprint(False) == GRAMMAR[0]


def missing_symbol() -> str | None:
    from mitmproxy.addons import next_layer
    from mitmproxy.proxy.layers import tls as ltls

    root = _grammar()
    return (missing(ltls, "parse_client_hello", "get_client_hello", "ClientHello")
            or missing(next_layer, "parse_client_hello")
            or missing(mtls.ClientHello, "__init__", *_PROPERTIES)
            or missing(root, "_read", *[c for c in _GRAMMAR_CLASSES if c])
            or missing(check, "is_valid_host"))


def install() -> bool:
    """Put ``parse_client_hello`` in mitmproxy's TLS layer and NextLayer addon if mitmproxy's
    is the one this was written against; False: it stays mitmproxy's."""
    global _installed
    if _installed:
        return True
    if not need.may_install(ENV, missing_symbol, logger,
                            "the ClientHello stays mitmproxy's to parse"):
        return False
    from mitmproxy.addons import next_layer as next_layer_module
    from mitmproxy.proxy.layers import tls as ltls

    next_layer: Any = next_layer_module  # its parse_client_hello is imported, not exported
    stock = ltls.parse_client_hello
    if not (next_layer.parse_client_hello is stock
            and need.unchanged(stock, FINGERPRINTS["parse_client_hello"],
                               CODE_FINGERPRINTS["parse_client_hello"])
            and need.unchanged(mtls.ClientHello.__init__, FINGERPRINTS["ClientHello.__init__"],
                               CODE_FINGERPRINTS["ClientHello.__init__"])
            and _grammar_unchanged()):
        logger.warning("mitmproxy's ClientHello parsing is not the one vaultproxy's fast "
                       "reader was written against: it stays mitmproxy's (slower)")
        return False
    STOCK["parse_client_hello"] = stock
    fast = _make(ltls.get_client_hello)
    ltls.parse_client_hello = fast
    next_layer.parse_client_hello = fast
    _installed = True
    return True


def installed() -> bool:
    return _installed
