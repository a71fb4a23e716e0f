"""The agent's TLS start with the leaf converted once (seam/tlsstart.py) makes the connection
mitmproxy's ``TlsConfig.tls_start_client`` makes: seeded cases (names, ALPN, layers, options,
an EC or an RSA CA) run through both, and each connection then completes a real handshake
with a client over memory BIOs: same context, certificate, key, ALPN choice, app data and
cipher list, and the same peer certificate and protocol on the client's side. The cache
serves a leaf only while its entry holds the same certificate and key."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from mitmproxy import certs, connection, tls
from mitmproxy.addons import tlsconfig
from mitmproxy.proxy import context
from mitmproxy.proxy.layers import modes
from mitmproxy.test import taddons
from OpenSSL import SSL

from vaultproxy.ca.authority import _generate
from vaultproxy.seam import need, tlsstart

SEEDS = range(40)
NAMES = ("api.example.com", "hi.bench.test", "127.0.0.1", "x.test", None)
ALPNS: tuple[list[bytes], ...] = (
    [], [b"h2", b"http/1.1"], [b"http/1.1"], [b"h2"], [b"spdy/3", b"http/1.1"])


def _stock() -> Any:
    assert tlsstart.install()
    return tlsstart.STOCK["tls_start_client"]


@pytest.fixture(params=["ec", "rsa"])
def confdir(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    if request.param == "ec":  # our CA: EC P-256 (vaultproxy/ca/authority.py)
        key, cert = _generate()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        (tmp_path / "mitmproxy-ca.pem").write_bytes(
            pem + cert.public_bytes(serialization.Encoding.PEM))
    return tmp_path  # "rsa": mitmproxy generates its own CA there


def _context(rng: random.Random, options: Any) -> context.Context:
    client = connection.Client(peername=("10.0.0.1", 40000), sockname=("127.0.0.1", 8080),
                               timestamp_start=1.0)
    client.sni = rng.choice(NAMES)
    client.alpn_offers = rng.choice(ALPNS)
    if rng.random() < 0.2:
        client.cipher_list = ["ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256"]
    ctx = context.Context(client, options)
    if rng.random() < 0.7:
        ctx.server.address = (rng.choice(("api.example.com", "10.1.2.3")), 443)
    if rng.random() < 0.3:
        ctx.server.alpn = rng.choice((b"h2", b"http/1.1", b""))
    other: Any = object()  # a layer below the proxy's (only the stack's shape is read)
    kind = rng.random()
    if kind < 0.5:  # a CONNECT tunnel's inner TLS: HttpProxy, HttpLayer, ..., ClientTLSLayer
        ctx.layers = [modes.HttpProxy(ctx), other, other]
    elif kind < 0.8:  # a TLS-wrapped proxy's outer TLS: HttpProxy, ClientTLSLayer
        ctx.layers = [modes.HttpProxy(ctx), other]
    else:
        ctx.layers = [other, other]
    return ctx


def _options(rng: random.Random) -> dict[str, Any]:
    return {
        "ciphers_client": rng.choice((None, None, "ECDHE-ECDSA-AES256-GCM-SHA384:AES128-SHA")),
        "tls_version_client_min": rng.choice(("TLS1_2", "TLS1_2", "TLS1_3", "UNBOUNDED")),
        "tls_version_client_max": rng.choice(("UNBOUNDED", "TLS1_3")),
        "http2": rng.choice((True, False)),
        "request_client_cert": rng.random() < 0.2,
    }


def _copy(ctx: context.Context) -> context.Context:
    other = context.Context(connection.Client(peername=ctx.client.peername,
                                              sockname=ctx.client.sockname,
                                              timestamp_start=1.0), ctx.options)
    other.client.sni, other.client.alpn_offers = ctx.client.sni, ctx.client.alpn_offers
    other.client.cipher_list = list(ctx.client.cipher_list)
    other.server.address, other.server.alpn = ctx.server.address, ctx.server.alpn
    other.layers = list(ctx.layers)
    return other


def _handshake(server: SSL.Connection, sni: str | None,
               offers: list[bytes]) -> tuple[bytes, bytes | None, str | None]:
    """A client completes the handshake with ``server`` over memory BIOs: what it saw."""
    cctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    cctx.set_verify(SSL.VERIFY_NONE)
    client = SSL.Connection(cctx)
    if sni and not sni[0].isdigit():
        client.set_tlsext_host_name(sni.encode())
    if offers:
        client.set_alpn_protos(offers)
    client.set_connect_state()
    for _ in range(6):
        for a, b in ((client, server), (server, client)):
            try:
                a.do_handshake()
            except SSL.WantReadError:
                pass
            try:
                b.bio_write(a.bio_read(65535))
            except SSL.WantReadError:
                pass
    peer = client.get_peer_certificate(as_cryptography=True)
    assert peer is not None
    return (peer.public_bytes(serialization.Encoding.DER), client.get_alpn_proto_negotiated()
            or None, client.get_protocol_version_name())


def _outcome(conn: SSL.Connection, ctx: context.Context) -> tuple[Any, ...]:
    cert = conn.get_certificate(as_cryptography=True)
    assert cert is not None
    try:
        seen: Any = _handshake(conn, ctx.client.sni, list(ctx.client.alpn_offers))
    except SSL.Error as e:  # e.g. no overlapping ALPN: the same refusal from both
        seen = ("error", str(e))
    return (conn.get_context(), cert.public_bytes(serialization.Encoding.DER),
            conn.get_app_data(), tuple(ctx.client.cipher_list), seen)


def _run(fn: Any, ta: tlsconfig.TlsConfig, ctx: context.Context) -> tls.TlsData:
    data = tls.TlsData(ctx.client, context=ctx)
    fn(ta, data)
    assert isinstance(data.ssl_conn, SSL.Connection)
    return data


@pytest.mark.parametrize("seed", SEEDS)
def test_same_connection_as_mitmproxys(confdir: Path, seed: int) -> None:
    rng = random.Random(seed)
    stock = _stock()
    ta = tlsconfig.TlsConfig()
    with taddons.context(ta) as tctx:
        tctx.configure(ta, confdir=str(confdir), **_options(rng))
        for _ in range(3):  # the second and third of each name come from the cache
            ctx = _context(rng, tctx.options)
            twin = _copy(ctx)
            a = _run(stock, ta, ctx)
            b = _run(tlsstart.tls_start_client, ta, twin)
            assert a.ssl_conn is not None and b.ssl_conn is not None
            assert _outcome(a.ssl_conn, ctx) == _outcome(b.ssl_conn, twin)


def test_an_answered_connection_is_left_alone(confdir: Path) -> None:
    ta = tlsconfig.TlsConfig()
    with taddons.context(ta) as tctx:
        tctx.configure(ta, confdir=str(confdir))
        ctx = _context(random.Random(1), tctx.options)
        data = tls.TlsData(ctx.client, context=ctx)
        mine = SSL.Connection(SSL.Context(SSL.TLS_METHOD))
        data.ssl_conn = mine
        tlsstart.tls_start_client(ta, data)
        assert data.ssl_conn is mine


def _entry(name: str) -> certs.CertStoreEntry:
    key, ca = _generate()
    store = certs.CertStore(key, certs.Cert(ca), None, b"", None)  # type: ignore[arg-type]
    from cryptography import x509
    return store.get_cert(name, [x509.DNSName(name)])


def _served(entry: certs.CertStoreEntry) -> bytes:
    conn = SSL.Connection(SSL.Context(SSL.TLS_SERVER_METHOD))
    tlsstart._use_leaf(conn, entry)
    conn.set_accept_state()
    return _handshake(conn, None, [])[0]


def test_the_cache_follows_the_entry() -> None:
    """A leaf is served from the cache only while its entry holds the same certificate and
    key: an entry changed in place, or another store's entry (a reload, a rotated CA), is
    converted anew."""
    one, other = _entry("a.test"), _entry("a.test")
    der = one.cert.to_cryptography().public_bytes(serialization.Encoding.DER)
    assert _served(one) == der
    assert _served(one) == der  # from the cache
    assert _served(other) == other.cert.to_cryptography().public_bytes(
        serialization.Encoding.DER) != der
    # changed in place (a frozen dataclass in mitmproxy 12.3: as a later release might not)
    object.__setattr__(one, "cert", other.cert)
    object.__setattr__(one, "privatekey", other.privatekey)
    assert _served(one) == other.cert.to_cryptography().public_bytes(serialization.Encoding.DER)


def test_a_mismatched_key_fails_as_pyopenssl_does() -> None:
    entry = _entry("b.test")
    object.__setattr__(entry, "privatekey", ec.generate_private_key(ec.SECP256R1()))  # not its
    stock_conn = SSL.Connection(SSL.Context(SSL.TLS_SERVER_METHOD))
    stock_conn.use_certificate(entry.cert.to_cryptography())
    with pytest.raises(SSL.Error) as stock_err:
        stock_conn.use_privatekey(entry.privatekey)
    with pytest.raises(SSL.Error) as fast_err:
        tlsstart._use_leaf(SSL.Connection(SSL.Context(SSL.TLS_SERVER_METHOD)), entry)
    assert type(fast_err.value) is type(stock_err.value)
    assert fast_err.value.args == stock_err.value.args


def test_the_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tlsstart, "CAP", 3)
    monkeypatch.setattr(tlsstart, "_converted", {})
    for i in range(7):
        tlsstart.converted(_entry(f"n{i}.test"))
        assert len(tlsstart._converted) <= 3


def test_fingerprint_of_mitmproxys_method() -> None:
    stock = _stock()
    assert need.fingerprint(stock) == tlsstart.FINGERPRINT
    if need.code_magic_matches():
        assert need.code_fingerprint(stock) == tlsstart.CODE_FINGERPRINT


def test_a_changed_method_stays_mitmproxys(monkeypatch: pytest.MonkeyPatch) -> None:
    def tls_start_client(self: Any, tls_start: Any) -> None:  # a release that differs
        return None

    monkeypatch.setattr(tlsstart, "_installed", False)
    monkeypatch.setattr(tlsconfig.TlsConfig, "tls_start_client", tls_start_client)
    assert not tlsstart.install()
    assert tlsconfig.TlsConfig.tls_start_client is tls_start_client


def test_switched_off_stays_mitmproxys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tlsstart, "_installed", False)
    monkeypatch.setenv(tlsstart.ENV, "0")
    before = tlsconfig.TlsConfig.tls_start_client
    assert not tlsstart.install()
    assert tlsconfig.TlsConfig.tls_start_client is before


TEXTS = ("hi.bench.test", "API.Example.com", "api.example.com", "127.0.0.1", "::1",
         "10.0.0.1", "bücher.example", "xn--bcher-kva.example", "a..b", "", "x" * 70 + ".test",
         "1.2.3", "::ffff:1.2.3.4",
         "\udcff.test", "a\u3002b.test", "-x-.test")


@pytest.mark.parametrize("seed", range(10))
def test_names_as_mitmproxys(seed: int) -> None:
    """``_ip_or_dns_name`` with its memo answers (or raises) what mitmproxy's answers."""
    _stock()
    stock = tlsstart.STOCK["_ip_or_dns_name"]
    fast = tlsconfig._ip_or_dns_name
    assert fast is not stock
    rng = random.Random(seed)
    for _ in range(200):
        text = rng.choice(TEXTS)
        if rng.random() < 0.3:
            text = "".join(rng.choice("aAzZ.-1:ü") for _ in range(rng.randrange(8)))
        try:
            want: Any = stock(text)
        except Exception as e:  # noqa: BLE001 - the same failure is the answer
            want = (type(e), e.args)
        try:
            got: Any = fast(text)
        except Exception as e:  # noqa: BLE001
            got = (type(e), e.args)
        assert type(got) is type(want) and got == want, text


def test_the_name_memo_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    _stock()
    monkeypatch.setattr(tlsstart, "NAME_CAP", 4)
    monkeypatch.setattr(tlsstart, "_names", {})
    for i in range(11):
        assert tlsconfig._ip_or_dns_name(f"n{i}.test").value == f"n{i}.test"
        assert len(tlsstart._names) <= 4


def test_a_new_store_empties_the_cache(tmp_path: Path) -> None:
    """A reload (a new certificate store, e.g. a rotated CA) drops every kept leaf."""
    ta = tlsconfig.TlsConfig()
    with taddons.context(ta) as tctx:
        tctx.configure(ta, confdir=str(tmp_path / "one"))
        ctx = _context(random.Random(3), tctx.options)
        _run(tlsstart.tls_start_client, ta, ctx)
        first = ta.get_cert(ctx)
        assert any(kept[0] is first for kept in tlsstart._converted.values())
        tctx.configure(ta, confdir=str(tmp_path / "two"))  # another CA
        _run(tlsstart.tls_start_client, ta, _copy(ctx))
        assert not any(kept[0] is first for kept in tlsstart._converted.values())
        assert len(tlsstart._converted) == 1
