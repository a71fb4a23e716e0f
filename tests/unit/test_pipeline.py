"""The shared request pipeline's pure steps (core/pipeline.py) on mitmproxy requests: what
``check_request`` refuses and drops for a given plan, the one hop-by-hop set, and when a
minted token is needed. The same functions run for a proxied request and ``POST /proxy``
(tests/security/test_entry_matrix.py proves that end to end)."""

from __future__ import annotations

from pathlib import Path

import pytest
import tomlkit
from mitmproxy.test import tutils

from vaultproxy.config.load import parse_config
from vaultproxy.core.decide import Facts, Plan, decide
from vaultproxy.core.pipeline import HOP_BY_HOP, check_request, hop_free, needs_token
from vaultproxy.errors import HostMismatch, InvalidRequest
from vaultproxy.loaded.registry import Registry
from vaultproxy.values.placeholders import PlaceholderIndex

SERVICES = [
    {"name": "api", "hosts": ["api.example.com"], "mode": "host_inject", "auth": "bearer"},
    {"name": "rng", "hosts": ["rng.example.com"], "mode": "host_inject", "auth": "bearer",
     "allow_range": True},
    {"name": "oa", "hosts": ["oa.example.com"], "mode": "placeholder",
     "auth": "oauth2_client_credentials", "token_url": "https://auth.example.com/token"},
    {"name": "oh", "hosts": ["oh.example.com"], "mode": "host_inject",
     "auth": "oauth2_client_credentials", "token_url": "https://auth.example.com/token"},
]
REG = Registry.from_config(
    parse_config(tomlkit.dumps({"service": SERVICES}), Path("/nonexistent")))
INDEX = PlaceholderIndex({s.placeholder_text: s.name for s in REG.services})


def plan(host: str) -> Plan:
    d = decide(Facts("connect", host, 443, host_header=host), REG, {})
    assert d.plan is not None
    return d.plan


def request(host: str, headers: list[tuple[bytes, bytes]], path: bytes = b"/x"):  # type: ignore[no-untyped-def]
    req = tutils.treq(host=host, port=443, scheme=b"https", path=path, authority=b"")
    req.headers.fields = tuple(headers)
    return req


HOSTILE = [
    (b"Range", b"bytes=0-3"), (b"If-Range", b"x"), (b"X-Forwarded-Host", b"evil.example"),
    (b"forwarded", b"host=evil.example"), (b"X_Forwarded_Host", b"evil.example"),
    (b"X-Host", b"evil.example"), (b"X-Original-Host", b"evil.example"),
    (b"X-Forwarded-Server", b"evil.example"),
]


def test_the_plan_drop_set_is_removed_in_every_spelling() -> None:
    req = request("api.example.com", [(b"Accept", b"*/*"), *HOSTILE])
    check_request(req, plan("api.example.com"), ("api.example.com", 443))
    assert req.headers.fields == ((b"Accept", b"*/*"),)


def test_allow_range_keeps_range_only() -> None:
    """Twin: the same request to a service with ``allow_range`` keeps Range/If-Range."""
    req = request("rng.example.com", list(HOSTILE))
    check_request(req, plan("rng.example.com"), ("rng.example.com", 443))
    assert [k for k, _ in req.headers.fields] == [b"Range", b"If-Range"]


@pytest.mark.parametrize(("headers", "path", "error"), [
    ([(b"X-A", b"a\r\n b")], b"/x", InvalidRequest),
    ([(b"X A", b"a")], b"/x", InvalidRequest),
    ([(b"X-A", b"a\x00")], b"/x", InvalidRequest),
    ([(b"X-%d" % i, b"v") for i in range(257)], b"/x", InvalidRequest),
    ([], b"//evil.example/x", InvalidRequest),
    ([], b"x", InvalidRequest),
])
def test_shapes_an_upstream_may_read_differently_are_refused(
    headers: list[tuple[bytes, bytes]], path: bytes, error: type[Exception]
) -> None:
    with pytest.raises(error):
        check_request(request("api.example.com", headers, path), plan("api.example.com"),
                      ("api.example.com", 443))


def test_another_target_is_refused() -> None:
    with pytest.raises(HostMismatch):
        check_request(request("evil.example", []), plan("api.example.com"),
                      ("api.example.com", 443))


def test_hop_by_hop_is_one_set_for_both_directions() -> None:
    fields = [(b"Connection", b"close"), (b"TE", b"trailers"), (b"Content-Length", b"1"),
              (b"Transfer-Encoding", b"chunked"), (b"Keep-Alive", b"1"), (b"Upgrade", b"x"),
              (b"Trailer", b"x"), (b"Proxy-Connection", b"x"), (b"X-Kept", b"1")]
    assert hop_free(fields) == [(b"X-Kept", b"1")]
    assert len(HOP_BY_HOP) == 8


@pytest.mark.parametrize(("host", "headers", "needed"), [
    ("api.example.com", [], False),  # not minted
    ("oh.example.com", [], True),  # minted, host_inject: always
    ("oa.example.com", [], False),  # minted, placeholder mode, unmarked
    ("oa.example.com", [(b"Authorization", b"Bearer __vault.oa__")], True),
])
def test_needs_token(host: str, headers: list[tuple[bytes, bytes]], needed: bool) -> None:
    assert needs_token(plan(host), request(host, headers), INDEX) is needed
