"""The TLS output loop (seam/tlsio.py) reads what mitmproxy's reads: a real handshake and
application data between two pyOpenSSL connections over memory BIOs; at every step the
BIO's count says exactly whether ``bio_read`` returns bytes or raises ``WantReadError``,
and the patched ``tls_interact`` yields the same chunks the stock loop would."""

from __future__ import annotations

import random
from typing import Any

import pytest
import trustme
from mitmproxy.proxy import commands
from mitmproxy.proxy.layers import tls
from OpenSSL import SSL

from vaultproxy.seam import tlsio


def _pair() -> tuple[SSL.Connection, SSL.Connection]:
    ca = trustme.CA()
    cert = ca.issue_cert("a.test")
    sctx = SSL.Context(SSL.TLS_METHOD)
    sctx.use_certificate(_x509(cert.cert_chain_pems[0].bytes()))
    sctx.use_privatekey(_key(cert.private_key_pem.bytes()))
    server = SSL.Connection(sctx)
    server.set_accept_state()
    client = SSL.Connection(SSL.Context(SSL.TLS_METHOD))
    client.set_connect_state()
    return client, server


def _x509(pem: bytes) -> Any:
    from OpenSSL import crypto
    return crypto.load_certificate(crypto.FILETYPE_PEM, pem)


def _key(pem: bytes) -> Any:
    from OpenSSL import crypto
    return crypto.load_privatekey(crypto.FILETYPE_PEM, pem)


def _drain_checked(conn: SSL.Connection) -> bytes:
    """Read ``conn``'s output as the stock loop does, checking the count before each read."""
    out = b""
    while True:
        n = tlsio.pending_out(conn)
        assert n is not None
        try:
            got = conn.bio_read(65535)
        except SSL.WantReadError:
            assert n == 0
            return out
        assert n > 0 and len(got) == min(n, 65535)
        out += got


def _step(conn: SSL.Connection) -> None:
    try:
        conn.do_handshake()
    except SSL.WantReadError:
        pass


def _handshake(client: SSL.Connection, server: SSL.Connection) -> None:
    for _ in range(4):  # both ways, each read counted
        _step(client)
        data = _drain_checked(client)
        if data:
            server.bio_write(data)
        _step(server)
        data = _drain_checked(server)
        if data:
            client.bio_write(data)


def test_the_count_says_what_bio_read_does() -> None:
    client, server = _pair()
    _handshake(client, server)
    rng = random.Random(29)
    for size in [1, 100, 16_384, 70_000, 200_000] + [rng.randint(1, 50_000) for _ in range(20)]:
        server.sendall(b"x" * size)
        wire = _drain_checked(server)
        client.bio_write(wire)
        got = b""
        while True:
            try:
                got += client.recv(65535)
            except SSL.WantReadError:
                break
        assert got == b"x" * size
    assert _drain_checked(server) == b""


class _Layer:
    """What ``tls_interact`` reads of a TLS layer: ``tls`` and ``conn``."""

    def __init__(self, conn: SSL.Connection) -> None:
        self.tls = conn
        self.conn = object()


@pytest.mark.parametrize("size", [0, 1, 65_535, 65_536, 150_000])
def test_patched_loop_yields_what_the_stock_loop_yields(size: int) -> None:
    assert tlsio.install()
    client, server = _pair()
    _handshake(client, server)
    if size:
        server.sendall(b"y" * size)
    expect = tlsio.pending_out(server)
    assert expect is not None
    layer = _Layer(server)
    out = list(tls.TLSLayer.tls_interact(layer))  # type: ignore[arg-type]
    assert all(type(c) is commands.SendData and c.connection is layer.conn for c in out)
    sizes = [len(c.data) for c in out]  # type: ignore[attr-defined]
    assert sum(sizes) == expect
    assert all(s == 65_535 for s in sizes[:-1])
    assert tlsio.pending_out(server) == 0
