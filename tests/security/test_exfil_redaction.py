"""Threat: a malicious or careless upstream reflects the injected credential back to the agent.

A reflecting upstream echoes the credential it received in response headers, query-ish text,
JSON (plain and ``\\/``-escaped, ``\\uXXXX``), base64 / base64url (whole and embedded at each
alignment), percent-encoded forms, in identity, chunked, split-across-chunks and compressed
(gzip, deflate, br, zstd) bodies, and in ``Set-Cookie``. Through the proxy the agent gets no
form of the secret; the negative twin runs the same independent detector on the upstream's
own reply (fetched directly, bypassing the proxy) and finds the secret in every form.
"""

from __future__ import annotations

import base64
import gzip
import json
import re
import ssl
import zlib
from collections.abc import Iterator
from urllib.parse import quote, quote_plus, unquote_to_bytes

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

pytestmark = [pytest.mark.security, pytest.mark.integration]
start_proxy = integration.start_proxy  # the module-scoped fixture, shared


# --- the forms an upstream might use -------------------------------------------------------


def reflected_forms(secret: bytes) -> dict[str, bytes]:
    """Every encoding of ``secret`` the reflecting upstream sends back (ASCII, header-safe)."""
    text = secret.decode()
    return {
        "raw": secret,
        "json": json.dumps({"token": text}).encode(),
        "json_escaped_slash": json.dumps({"token": text}).encode().replace(b"/", b"\\/"),
        "json_unicode": ('"' + "".join(f"\\u{ord(c):04x}" for c in text) + '"').encode(),
        "json_unicode_upper": ('"' + "".join(f"\\u{ord(c):04X}" for c in text) + '"').encode(),
        "base64": base64.b64encode(secret),
        "base64_nopad": base64.b64encode(secret).rstrip(b"="),
        "base64url": base64.urlsafe_b64encode(secret),
        "base64_embedded_0": base64.b64encode(b"user:" + secret + b"!"),
        "base64_embedded_1": base64.b64encode(b"ab:" + secret + b"!"),
        "base64url_embedded_2": base64.urlsafe_b64encode(b"a:" + secret + b"!!"),
        "percent": quote(text, safe="").encode(),
        "percent_lower": re.sub(
            r"%[0-9A-F]{2}", lambda m: m.group().lower(), quote(text, safe="")
        ).encode(),
        "percent_all": "".join(f"%{b:02X}" for b in secret).encode(),
        "form_plus": quote_plus(text, safe="").encode(),
        "query": b"?token=" + quote(text, safe="").encode() + b"&raw=" + secret + b"&x=1",
    }


# --- an independent detector: decodes the forms itself, shares no code with values/redact.py ------

_B64_TOKEN = re.compile(rb"[A-Za-z0-9+/_-]{8,}={0,2}")
_JSON_U = re.compile(rb"\\u([0-9A-Fa-f]{4})")


def _json_unescape(data: bytes) -> bytes:
    data = _JSON_U.sub(lambda m: chr(int(m.group(1), 16)).encode("utf-8", "replace"), data)
    return data.replace(b"\\/", b"/").replace(b'\\"', b'"').replace(b"\\\\", b"\\")


def _b64_decodings(data: bytes) -> Iterator[bytes]:
    for m in _B64_TOKEN.finditer(data):
        token = m.group().rstrip(b"=").replace(b"-", b"+").replace(b"_", b"/")
        for start in range(4):  # the secret may sit at any alignment of a longer text
            part = token[start:]
            part = part[: len(part) - len(part) % 4] if len(part) % 4 == 1 else part
            try:
                yield base64.b64decode(part + b"=" * (-len(part) % 4))
            except ValueError:
                continue


def _views(data: bytes) -> Iterator[bytes]:
    seen: list[bytes] = []
    for view in (data, _json_unescape(data)):
        for v in (view, unquote_to_bytes(view), unquote_to_bytes(view.replace(b"+", b" "))):
            if v not in seen:
                seen.append(v)
    for v in list(seen):
        seen.extend(_b64_decodings(v))
    yield from seen


def leaks(data: bytes, secret: bytes) -> bool:
    """Does ``data`` carry ``secret`` in any form a reader could decode?"""
    return any(secret in view for view in _views(data))


def header_bytes(headers: httpx.Headers) -> bytes:
    return b"\n".join(k + b": " + v for k, v in headers.raw)


# --- the reflecting upstream ----------------------------------------------------------------


def _line(name: str, form: bytes) -> bytes:
    if name.startswith("json"):  # already a JSON value
        return b'{"form": "' + name.encode() + b'", "value": ' + form + b"}"
    return b'{"form": "' + name.encode() + b'", "value": "' + form + b'"}'


def _body(secret: bytes) -> bytes:
    forms = reflected_forms(secret)
    return b"".join(_line(name, form) + b"\n" for name, form in forms.items())


def _chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


_COMPRESS = {
    "gzip": gzip.compress,
    "deflate": zlib.compress,
    "br": brotli.compress,
    "zstd": lambda b: zstandard.ZstdCompressor().compress(b),
}

ENDPOINTS = ["identity", "chunked", "split", "gzip", "deflate", "br", "zstd", "headers"]


def reflect(rec: Received) -> Reply:
    """Echo the credential of ``Authorization: Bearer ...`` in the form the path names."""
    auth = rec.header("authorization") or ""
    secret = auth.removeprefix("Bearer ").encode()
    kind = rec.path.rsplit("/", 1)[-1]
    ctype = (b"content-type", b"application/json")
    if not secret:
        return 200, [ctype], [b'{"reflected": null}']
    body = _body(secret)
    if kind == "identity":
        return 200, [ctype, (b"content-length", str(len(body)).encode())], [body]
    if kind == "chunked":  # one chunk per form
        return 200, [ctype], [line + b"\n" for line in body.splitlines()]
    if kind == "split":  # 5-byte chunks: every form is cut across several boundaries
        return 200, [ctype], _chunks(body, 5)
    if kind in _COMPRESS:
        packed = _COMPRESS[kind](body)
        return 200, [ctype, (b"content-encoding", kind.encode())], _chunks(packed, 16)
    if kind == "headers":
        headers = [ctype, (b"set-cookie", b"sid=" + secret + b"; Path=/; Secure")]
        headers.append((b"set-cookie", b"theme=dark"))
        for name, form in reflected_forms(secret).items():
            headers.append((b"x-echo-" + name.replace("_", "-").encode(), form))
        query = reflected_forms(secret)["query"]
        headers.append((b"location", b"https://elsewhere.test/cb" + query))
        return 200, headers, [b'{"headers": true}']
    return 404, [ctype], [b"{}"]


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    u = Upstream(tmp_path_factory.mktemp("reflect-upstream"), handler=reflect).start()
    yield u
    u.stop()


@pytest.fixture(scope="module")
def secrets_() -> dict[str, str]:
    # '/' and '+' make the JSON-escaped, percent and base64 forms differ from the raw one.
    return {"hi": make_canary() + "/Zq+w/9", "ph": make_canary() + "/Yp+v/8"}


@pytest.fixture(scope="module")
def proxy(start_proxy, upstream: Upstream, secrets_: dict[str, str]) -> ProxyProcess:  # type: ignore[no-untyped-def]
    toml = service_block("hi", "host_inject", "bearer", upstream.port)
    toml += service_block("ph", "placeholder", "bearer", upstream.port)
    return start_proxy(toml, dict(secrets_))  # type: ignore[no-any-return]


def _agent_get(proxy: ProxyProcess, service: str, kind: str) -> httpx.Response:
    headers = {"Accept-Encoding": "gzip, deflate, br, zstd"}
    if service == "ph":
        headers["Authorization"] = "Bearer __vault.ph__"
    with agent_client(proxy) as c:
        r = c.get(f"https://{service}.api.test/reflect/{kind}", headers=headers)
    canary.scan_text(f"agent response {service}/{kind}", header_bytes(r.headers) + r.content)
    return r


# --- the property ---------------------------------------------------------------------------


@pytest.mark.parametrize("service", ["hi", "ph"])
@pytest.mark.parametrize("kind", ENDPOINTS)
def test_agent_receives_no_form_of_the_secret(
    proxy: ProxyProcess, upstream: Upstream, secrets_: dict[str, str], service: str, kind: str
) -> None:
    secret = secrets_[service].encode()
    r = _agent_get(proxy, service, kind)
    assert r.status_code == 200
    # The upstream really got (and so reflected) the credential.
    injected = upstream.received[-1].header("authorization") == f"Bearer {secrets_[service]}"
    assert injected, "the upstream did not receive the credential"
    in_headers = leaks(header_bytes(r.headers), secret)
    assert not in_headers, "secret in response headers"
    in_body = leaks(r.content, secret)
    assert not in_body, f"secret in {kind} body"
    placeholder = f"__vault.{service}__".encode()
    if kind == "headers":
        assert "set-cookie" not in r.headers
        assert r.headers["x-echo-raw"] == placeholder.decode()
    else:
        # Redacted, not dropped: every form line is still there, with the placeholder.
        expected = len(reflected_forms(secret))
        assert r.content.count(placeholder) >= expected
        assert "content-encoding" not in r.headers


def test_set_cookie_from_injected_service_never_forwarded(proxy: ProxyProcess) -> None:
    r = _agent_get(proxy, "hi", "headers")
    assert r.status_code == 200
    assert r.headers.get_list("set-cookie") == []
    assert not r.cookies


# --- negative twins: the same detector on the upstream's own reply -------------------------


@pytest.mark.parametrize("form", sorted(reflected_forms(b"x/y+z").keys()))
def test_twin_detector_finds_each_form_alone(secrets_: dict[str, str], form: str) -> None:
    secret = secrets_["hi"].encode()
    data = reflected_forms(secret)[form]
    found, other = leaks(data, secret), leaks(data, secrets_["ph"].encode())
    assert found and not other, form


def _direct(upstream: Upstream, secret: str, kind: str) -> httpx.Response:
    ctx = ssl.create_default_context(cafile=str(upstream.ca_file))
    with httpx.Client(verify=ctx, timeout=20) as c:
        return c.get(
            f"https://127.0.0.1:{upstream.port}/reflect/{kind}",
            headers={
                "Host": "hi.api.test",
                "Authorization": f"Bearer {secret}",
                "Accept-Encoding": "gzip, deflate, br, zstd",
            },
        )


@pytest.mark.parametrize("kind", ENDPOINTS)
def test_twin_upstream_reply_leaks_every_form(
    upstream: Upstream, secrets_: dict[str, str], kind: str
) -> None:
    """Bypassing the proxy (no redaction), the detector catches the secret in every form."""
    secret = secrets_["hi"].encode()
    r = _direct(upstream, secrets_["hi"], kind)
    assert r.status_code == 200
    forms = reflected_forms(secret)
    if kind == "headers":
        raw_headers = header_bytes(r.headers)
        cookie = b"sid=" + secret in raw_headers
        assert leaks(raw_headers, secret) and cookie, "twin: headers carry the secret"
        for name, form in forms.items():
            value = r.headers[f"x-echo-{name.replace('_', '-')}"].encode()
            found = value == form and leaks(value, secret)
            assert found, name
        return
    if kind in _COMPRESS:
        assert r.headers["content-encoding"] == kind
    found = leaks(r.content, secret)
    assert found, "twin: body carries the secret"
    for name, form in forms.items():
        present = _line(name, form) in r.content
        assert present, name
