"""The ClientHello reader (seam/clienthello.py) answers what mitmproxy's kaitaistruct grammar
answers: seeded messages, well formed (session ids, cipher suites of odd length, no
extensions block, SNI lists of 0-2 names of each kind and validity, ALPN lists, unknown and
repeated extensions) and broken (cut at every kind of place, lengths changed, bytes flipped),
through ``ClientHello`` and through ``parse_client_hello`` (records, a bytearray, incomplete
input): the same SNI, ALPN offers, extensions, cipher suites, raw bytes and repr, or the same
exception; and real ClientHellos of Python's ssl module and pyOpenSSL."""

from __future__ import annotations

import random
import ssl
import struct
from typing import Any

import pytest
from mitmproxy import tls as mtls
from mitmproxy.proxy.layers import tls as ltls
from OpenSSL import SSL

from vaultproxy.seam import clienthello, need

HOSTS = (b"api.example.com", b"hi.bench.test", b"127.0.0.1", b"a..b", b"-x.test", b"x_y.test",
         b"", b"\xff\xfe", b"A" * 70 + b".test", b"xn--bcher-kva.example", b"::1", b"x.test.")


def _stock_parse() -> Any:
    assert clienthello.install()
    return clienthello.STOCK["parse_client_hello"]


def _u16(n: int) -> bytes:
    return struct.pack(">H", n & 0xFFFF)


def _sni(rng: random.Random) -> bytes:
    names = b""
    for _ in range(rng.choice((0, 1, 1, 1, 2))):
        host = rng.choice(HOSTS)
        names += bytes([rng.choice((0, 0, 0, 1))]) + _u16(len(host)) + host
    return _u16(len(names) if rng.random() < 0.9 else rng.randrange(65536)) + names


def _alpn(rng: random.Random) -> bytes:
    protos = b""
    for _ in range(rng.randrange(5)):
        name = rng.choice((b"h2", b"http/1.1", b"", b"spdy/3", bytes(rng.randrange(256)
                                                                      for _ in range(5))))
        protos += bytes([len(name)]) + name
    return _u16(len(protos) if rng.random() < 0.9 else rng.randrange(65536)) + protos


def _hello(rng: random.Random) -> bytes:
    sid = bytes(rng.randrange(256) for _ in range(rng.choice((0, 32, rng.randrange(33)))))
    suites = b"".join(_u16(rng.randrange(65536)) for _ in range(rng.randrange(40)))
    if rng.random() < 0.1:
        suites += b"\x13"  # an odd length: its last byte is read as the compression methods'
    comp = bytes(rng.randrange(3) for _ in range(rng.choice((1, 1, 2, 0))))
    body = (b"\x03\x03" + bytes(rng.randrange(256) for _ in range(32))
            + bytes([len(sid)]) + sid + _u16(len(suites)) + suites + bytes([len(comp)]) + comp)
    if rng.random() < 0.1:
        return body  # no extensions block
    exts = b""
    for _ in range(rng.randrange(8)):
        kind = rng.random()
        if kind < 0.3:
            typ, ext = 0, _sni(rng)
        elif kind < 0.55:
            typ, ext = 16, _alpn(rng)
        else:
            typ = rng.choice((10, 11, 13, 23, 35, 43, 45, 51, 0xFF01, rng.randrange(65536)))
            ext = bytes(rng.randrange(256) for _ in range(rng.randrange(20)))
        exts += _u16(typ) + _u16(len(ext)) + ext
    total = len(exts) if rng.random() < 0.9 else rng.randrange(65536)
    return body + _u16(total) + exts


def _broken(rng: random.Random, raw: bytes) -> bytes:
    kind = rng.random()
    if kind < 0.4 and raw:
        return raw[:rng.randrange(len(raw))]
    if kind < 0.7 and raw:
        i = rng.randrange(len(raw))
        return raw[:i] + bytes([rng.randrange(256)]) + raw[i + 1:]
    if kind < 0.85:
        return raw + bytes(rng.randrange(256) for _ in range(rng.randrange(1, 6)))
    return bytes(rng.randrange(256) for _ in range(rng.randrange(80)))


def _answers(make: Any, raw: bytes) -> tuple[Any, ...]:
    try:
        ch = make(raw)
    except Exception as e:  # noqa: BLE001 - the same failure is part of the answer
        return ("raised", type(e), e.args)
    if ch is None:
        return ("incomplete",)
    return (ch.sni, ch.alpn_protocols, ch.extensions, ch.cipher_suites, ch.raw_bytes(),
            ch.raw_bytes(False), repr(ch))


@pytest.mark.parametrize("seed", range(30))
def test_same_answers_as_the_grammar(seed: int) -> None:
    rng = random.Random(seed)
    fast = 0
    for _ in range(200):
        raw = _hello(rng)
        if rng.random() < 0.4:
            raw = _broken(rng, raw)
        stock = _answers(mtls.ClientHello, raw)
        assert _answers(clienthello.client_hello, raw) == stock, raw.hex()
        fast += clienthello.read(raw) is not None
    assert fast > 100  # most cases took the fast reader


def _record(body: bytes, rng: random.Random) -> bytes:
    msg = b"\x01" + len(body).to_bytes(3, "big") + body
    out = b""
    while msg:  # one record or several
        cut = rng.choice((len(msg), rng.randrange(1, len(msg) + 1)))
        out += b"\x16\x03\x01" + _u16(cut) + msg[:cut]
        msg = msg[cut:]
    return out


@pytest.mark.parametrize("seed", range(10))
def test_parse_client_hello_as_mitmproxys(seed: int) -> None:
    rng = random.Random(1000 + seed)
    stock = _stock_parse()
    for _ in range(100):
        data = _record(_hello(rng), rng)
        if rng.random() < 0.3:
            data = data[:rng.randrange(len(data))]  # incomplete: None
        if rng.random() < 0.3:
            data = _broken(rng, data)
        for given in (data, bytearray(data)):
            assert _answers(ltls.parse_client_hello, given) == _answers(stock, given), \
                data.hex()


def _python_hello(alpn: list[str] | None, sni: str | None) -> bytes:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=sni)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def _pyopenssl_hello(alpn: list[bytes] | None, sni: bytes | None) -> bytes:
    conn = SSL.Connection(SSL.Context(SSL.TLS_CLIENT_METHOD))
    if sni:
        conn.set_tlsext_host_name(sni)
    if alpn:
        conn.set_alpn_protos(alpn)
    conn.set_connect_state()
    with pytest.raises(SSL.WantReadError):
        conn.do_handshake()
    return conn.bio_read(65535)


@pytest.mark.parametrize("data", [
    _python_hello(["h2", "http/1.1"], "hi.bench.test"),
    _python_hello(None, "api.example.com"),
    _python_hello(["http/1.1"], None),
    _pyopenssl_hello([b"h2", b"http/1.1"], b"x.test"),
    _pyopenssl_hello(None, None),
])
def test_real_client_hellos(data: bytes) -> None:
    stock = _stock_parse()
    got = ltls.parse_client_hello(data)
    assert isinstance(got, clienthello.FastClientHello)
    assert _answers(ltls.parse_client_hello, data) == _answers(stock, data)
    # the grammar's own object, for code that reads the private attribute
    assert got._client_hello.version.major == 3
    assert got._client_hello.cipher_suites.cipher_suites == got.cipher_suites


def test_fingerprints_of_what_it_mirrors() -> None:
    stock = _stock_parse()
    assert need.fingerprint(stock) == clienthello.FINGERPRINTS["parse_client_hello"]
    assert need.fingerprint(mtls.ClientHello.__init__) == \
        clienthello.FINGERPRINTS["ClientHello.__init__"]
    assert clienthello.grammar_fingerprint(False) == clienthello.GRAMMAR[0]
    if need.code_magic_matches():
        assert clienthello.grammar_fingerprint(True) == clienthello.GRAMMAR[1]


def test_a_changed_grammar_stays_mitmproxys(monkeypatch: pytest.MonkeyPatch) -> None:
    from mitmproxy.addons import next_layer
    from mitmproxy.contrib.kaitaistruct import tls_client_hello

    def _read(self: Any) -> None:  # a release whose grammar reads one field more
        self.extra = self._io.read_u1()

    stock = _stock_parse()
    monkeypatch.setattr(clienthello, "_installed", False)
    monkeypatch.setattr(tls_client_hello.TlsClientHello.Alpn, "_read", _read)
    monkeypatch.setattr(ltls, "parse_client_hello", stock)
    monkeypatch.setattr(next_layer, "parse_client_hello", stock)
    assert not clienthello.install()
    assert ltls.parse_client_hello is stock and next_layer.parse_client_hello is stock


def test_switched_off_stays_mitmproxys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(clienthello, "_installed", False)
    monkeypatch.setenv(clienthello.ENV, "0")
    before = ltls.parse_client_hello
    assert not clienthello.install()
    assert ltls.parse_client_hello is before
