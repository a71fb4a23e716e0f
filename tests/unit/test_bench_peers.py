"""bench/peers.py's hostile-reply judge: a shape counts as a leak when any form of the
credential a client could decode reaches it -- chunk-split, compressed, obs-folded, hex, in a
1xx or a trailer -- and as held when none does (each leak case has a twin without the secret,
or with another secret, that must not count)."""

from __future__ import annotations

import binascii
import gzip

import pytest

from bench.peers import count_leaks, leaked, shapes

SECRET = b"vpbench_0123456789abcdef/Zq+w/9"
OTHER = b"vpbench_fedcba9876543210/Yp+v/8"


def _chunked(body: bytes, size: int) -> bytes:
    parts = [body[i : i + size] for i in range(0, len(body), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


def _replies(s: bytes) -> dict[str, bytes]:
    gz = gzip.compress(b'{"token": "' + s + b'"}')
    return {
        "split-chunks": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + _chunked(s, 3),
        "gzip-chunked-body": b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + _chunked(gz, 7),
        "gzip-transfer-coding": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
        + _chunked(gz, len(gz)),
        "obs-fold": b"HTTP/1.1 200 OK\r\nX-A: " + s[:10] + b"\r\n\t" + s[10:]
        + b"\r\nContent-Length: 2\r\n\r\nok",
        "hex": b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s"
        % (len(s) * 2, binascii.hexlify(s)),
        "early-hints": b"HTTP/1.1 103 Early " + s + b"\r\n\r\nHTTP/1.1 200 OK\r\n"
        b"Content-Length: 2\r\n\r\nok",
        "trailer": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n"
        b"X-T: " + s + b"\r\n\r\n",
    }


@pytest.mark.parametrize("kind", sorted(_replies(SECRET)))
def test_every_decodable_form_counts_as_a_leak(kind: str) -> None:
    assert leaked(_replies(SECRET)[kind], SECRET)


@pytest.mark.parametrize("kind", sorted(_replies(SECRET)))
def test_twin_the_same_shape_with_another_secret_is_held(kind: str) -> None:
    assert not leaked(_replies(OTHER)[kind], SECRET)


def test_every_shape_renders_the_credential_it_got() -> None:
    """Each trickster shape puts the credential somewhere: rendered with one secret, the
    bytes differ from the same shape rendered with another."""
    for path, make in shapes().items():
        assert make(SECRET) != make(OTHER), path


def test_count_leaks() -> None:
    outcomes = {"/a": "leak", "/b": "held", "/c": "not injected", "/d": "leak", "/e": "error: x"}
    assert count_leaks(outcomes) == (2, 1, 2)
