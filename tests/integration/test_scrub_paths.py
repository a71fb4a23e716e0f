"""Scrub's two body paths through a real proxy, HTTP/1.1, HTTP/2 and HTTP/1.0 agents.

* small (known length <= scrub.SMALL_BODY): buffered, decoded, redacted whole; the agent gets
  a Content-Length that matches what it received (the original one when nothing changed);
* everything else (bigger, or no length): streamed through the redactor, re-framed.

The reflecting upstream puts the injected secret (raw, percent-encoded, base64) between
fillers, across 64 KiB boundaries and in the very last bytes; every expected body is built
here by hand, not by the redactor. Negative twin: the same upstream fetched directly carries
the secret.
"""

from __future__ import annotations

import base64
import gzip
import os
import socket
import ssl
import zlib
from collections.abc import Callable, Iterator
from urllib.parse import quote

import brotli  # type: ignore[import-untyped]
import httpx
import pytest
import zstandard

from tests import canary
from tests.canary import make_canary
from tests.harness.proxy import ProxyProcess
from tests.harness.upstream import Received, Reply, Upstream
from tests.integration import conftest as integration
from tests.integration.conftest import agent_client, service_block
from tests.unit.test_redact import find_leak
from vaultproxy.stages.response_gate import SMALL_BODY

pytestmark = pytest.mark.integration
start_proxy = integration.start_proxy  # the module-scoped fixture, shared

PH = b"__vault.sc__"
_RANDOM = os.urandom(400_000)


def _forms(secret: bytes) -> list[bytes]:
    return [secret, quote(secret.decode(), safe="").encode(), base64.b64encode(secret)]


def _parts(secret: bytes, kind: str) -> list[bytes]:
    """The body as pieces; the odd pieces are forms of the secret (even ones are filler)."""
    forms = _forms(secret)
    if kind.startswith("big"):
        # Forms straddling 64 KiB boundaries of the body, and the secret in the last bytes.
        out: list[bytes] = []
        pos = 0
        for i, mark in enumerate((65536 - 5, 2 * 65536 - 20, 5 * 65536 - 1)):
            filler = _RANDOM[pos:mark].replace(b"%", b".").replace(b"\\", b".")
            out += [filler + b" | ", forms[i % len(forms)]]
            pos = mark
        return [*out, b" | ", secret]
    text = b"lorem ipsum dolor sit amet, " * 40
    return [text, forms[0], b" | " + text, forms[1], b" | ", forms[2], b" | " + text, secret]


def body(secret: bytes, kind: str) -> bytes:
    return b"".join(_parts(secret, kind))


def expected(secret: bytes, kind: str) -> bytes:
    return b"".join(PH if i % 2 else p for i, p in enumerate(_parts(secret, kind)))


COMPRESS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.compress,
    "deflate": zlib.compress,
    "br": brotli.compress,
    "zstd": lambda b: zstandard.ZstdCompressor().compress(b),
}
SMALL_KINDS = ["small", "small-gzip", "small-deflate", "small-br", "small-zstd"]
STREAMED_KINDS = ["big", "big-gzip", "small-chunked", "small-zstd-chunked"]


def _split(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)] or [b""]


def reflect(rec: Received) -> Reply:
    secret = (rec.header("authorization") or "").removeprefix("Bearer ").encode()
    kind = rec.path.rsplit("/", 1)[-1]
    ctype = (b"content-type", b"application/octet-stream")
    if kind in ("204", "304"):
        return int(kind), [], []
    if kind == "bomb":  # ~3 KB of gzip, 3 MB decoded: over max_body_mb = 2
        packed = gzip.compress(bytes(3_000_000) + secret)
        length = (b"content-length", str(len(packed)).encode())
        return 200, [ctype, (b"content-encoding", b"gzip"), length], [packed]
    if kind == "clean":
        data = b"nothing secret here\n" * 100
        return 200, [ctype, (b"content-length", str(len(data)).encode())], [data]
    data = body(secret, kind)
    headers = [ctype]
    coding = next((c for c in COMPRESS if c in kind), None)
    if coding is not None:
        data = COMPRESS[coding](data)
        headers.append((b"content-encoding", coding.encode()))
    if not kind.endswith("chunked"):
        headers.append((b"content-length", str(len(data)).encode()))
    if rec.method == "HEAD":
        return 200, headers, []
    return 200, headers, _split(data, 5 if kind.endswith("chunked") else 65536 + 7)


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    u = Upstream(tmp_path_factory.mktemp("scrub-upstream"), handler=reflect).start()
    yield u
    u.stop()


@pytest.fixture(scope="module")
def secret() -> bytes:
    return (make_canary() + "/+x").encode()


@pytest.fixture(scope="module")
def proxy(start_proxy, upstream: Upstream, secret: bytes) -> ProxyProcess:  # type: ignore[no-untyped-def]
    toml = "[proxy]\nmax_body_mb = 2\n\n" + service_block(
        "sc", "host_inject", "bearer", upstream.port
    )
    return start_proxy(toml, {"sc": secret.decode()})  # type: ignore[no-any-return]


def _get(
    proxy: ProxyProcess, kind: str, http2: bool = False, method: str = "GET"
) -> httpx.Response:
    headers = {"Accept-Encoding": "gzip, deflate, br, zstd"}
    with agent_client(proxy, http2=http2) as c:
        r = c.request(method, f"https://sc.api.test/p/{kind}", headers=headers)
    assert r.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
    return r


def test_small_limit_is_what_the_bodies_assume(secret: bytes) -> None:
    assert len(body(secret, "small")) <= SMALL_BODY < len(body(secret, "big"))
    assert len(gzip.compress(body(secret, "big"))) > SMALL_BODY  # random: stays big


@pytest.mark.parametrize("http2", [False, True], ids=["h1", "h2"])
@pytest.mark.parametrize("kind", SMALL_KINDS)
def test_small_body_redacted_whole_with_its_length(
    proxy: ProxyProcess, secret: bytes, kind: str, http2: bool
) -> None:
    r = _get(proxy, kind, http2)
    assert r.status_code == 200
    assert r.content == expected(secret, kind)
    assert find_leak(secret, r.content) is None
    assert r.headers["content-length"] == str(len(r.content))
    assert "transfer-encoding" not in r.headers and "content-encoding" not in r.headers


@pytest.mark.parametrize("http2", [False, True], ids=["h1", "h2"])
def test_small_clean_body_keeps_the_upstream_length(proxy: ProxyProcess, http2: bool) -> None:
    r = _get(proxy, "clean", http2)
    assert r.content == b"nothing secret here\n" * 100
    assert r.headers["content-length"] == str(len(r.content))
    assert "transfer-encoding" not in r.headers


@pytest.mark.parametrize("http2", [False, True], ids=["h1", "h2"])
@pytest.mark.parametrize("kind", STREAMED_KINDS)
def test_other_bodies_stream_redacted(
    proxy: ProxyProcess, secret: bytes, kind: str, http2: bool
) -> None:
    r = _get(proxy, kind, http2)
    assert r.status_code == 200
    assert r.content == expected(secret, kind)
    assert find_leak(secret, r.content) is None
    assert "content-length" not in r.headers and "content-encoding" not in r.headers
    if not http2:
        assert r.headers["transfer-encoding"] == "chunked"


def test_twin_upstream_sends_every_form(upstream: Upstream, secret: bytes) -> None:
    """Negative twin: fetched directly (no proxy), each body carries the secret."""
    ctx = ssl.create_default_context(cafile=str(upstream.ca_file))
    auth = {"Authorization": f"Bearer {secret.decode()}", "Host": "sc.api.test"}
    with httpx.Client(verify=ctx, timeout=20) as c:
        for kind in [*SMALL_KINDS, *STREAMED_KINDS]:
            r = c.get(f"https://127.0.0.1:{upstream.port}/p/{kind}", headers=auth)
            assert r.content == body(secret, kind), kind
            assert find_leak(secret, r.content) is not None, kind


@pytest.mark.parametrize("http2", [False, True], ids=["h1", "h2"])
def test_head_204_304_have_no_body(proxy: ProxyProcess, http2: bool) -> None:
    r = _get(proxy, "small", http2, method="HEAD")
    assert r.status_code == 200 and r.content == b""
    for code in (204, 304):
        r = _get(proxy, str(code), http2)
        assert r.status_code == code and r.content == b""


def test_small_compressed_body_over_max_body_mb_is_refused(
    proxy: ProxyProcess, secret: bytes
) -> None:
    r = _get(proxy, "bomb")
    assert r.status_code == 413
    assert r.headers["x-vaultproxy-error"] == "body_too_large"
    assert secret not in r.content


def _http10_get(proxy: ProxyProcess, path: str) -> tuple[bytes, dict[str, str], bytes]:
    """An HTTP/1.0 request through a CONNECT tunnel; the reply is read until the close."""
    ctx = ssl.create_default_context(cafile=str(proxy.home.ca_cert))
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=20) as raw:
        raw.sendall(b"CONNECT sc.api.test:443 HTTP/1.1\r\nHost: sc.api.test:443\r\n\r\n")
        reply = b""
        while b"\r\n\r\n" not in reply:
            reply += raw.recv(1)
        assert b" 200 " in reply.split(b"\r\n", 1)[0]
        with ctx.wrap_socket(raw, server_hostname="sc.api.test") as tls:
            tls.sendall(f"GET {path} HTTP/1.0\r\nHost: sc.api.test\r\n\r\n".encode())
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
    canary.scan_text("HTTP/1.0 reply", data)
    head, _, content = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return lines[0].encode(), headers, content


@pytest.mark.parametrize("kind", ["small", "small-br", "big", "small-chunked"])
def test_http10_agent(proxy: ProxyProcess, secret: bytes, kind: str) -> None:
    status, headers, content = _http10_get(proxy, f"/p/{kind}")
    assert b" 200 " in status
    assert "transfer-encoding" not in headers  # an HTTP/1.0 agent cannot read chunks
    assert content == expected(secret, kind)
    if kind.startswith("small") and not kind.endswith("chunked"):
        assert headers["content-length"] == str(len(content))
