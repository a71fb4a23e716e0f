"""Placeholder substitution in request bodies (opt-in surface), and the max_body_mb cap."""

from __future__ import annotations

import json

import pytest

from tests.canary import make_canary
from tests.integration.conftest import agent_client, service_block


@pytest.fixture(scope="module")
def proxy(start_proxy, upstream):  # type: ignore[no-untyped-def]
    secret = make_canary() + '/"q'  # a slash and a quote: JSON escaping must be right
    toml = (
        "[proxy]\nmax_body_mb = 1\n\n"
        + service_block(
            "bodysvc",
            "placeholder",
            "bearer",
            upstream.port,
            substitute_in='["header", "body"]',
        )
        + service_block("nobody", "placeholder", "bearer", upstream.port)
    )
    p = start_proxy(toml, {"bodysvc": secret, "nobody": make_canary()})
    return p, secret


def test_json_body_placeholder_is_substituted_with_json_escaping(proxy, upstream):  # type: ignore[no-untyped-def]
    p, secret = proxy
    with agent_client(p) as c:
        r = c.post("https://bodysvc.api.test/json", json={"api_key": "__vault.bodysvc__", "n": 1})
    assert r.status_code == 200
    rec = upstream.received[-1]
    assert json.loads(rec.body) == {"api_key": secret, "n": 1}
    assert int(rec.header("content-length") or 0) == len(rec.body)


def test_form_body_placeholder_is_form_encoded(proxy, upstream):  # type: ignore[no-untyped-def]
    from urllib.parse import parse_qs

    p, secret = proxy
    with agent_client(p) as c:
        r = c.post("https://bodysvc.api.test/form", data={"token": "__vault.bodysvc__"})
    assert r.status_code == 200
    assert parse_qs(upstream.received[-1].body.decode()) == {"token": [secret]}


def test_body_is_not_a_surface_unless_opted_in(proxy, upstream):  # type: ignore[no-untyped-def]
    p, _ = proxy
    with agent_client(p) as c:
        r = c.post("https://nobody.api.test/json", json={"api_key": "__vault.nobody__"})
    assert r.status_code == 200
    assert json.loads(upstream.received[-1].body) == {"api_key": "__vault.nobody__"}


def test_body_over_max_body_mb_is_refused_413_and_not_forwarded(proxy, upstream):  # type: ignore[no-untyped-def]
    p, _ = proxy
    before = len(upstream.received)
    with agent_client(p) as c:
        r = c.post("https://bodysvc.api.test/big", content=b"x" * (1024 * 1024 + 10))
    assert r.status_code == 413
    assert r.headers["x-vaultproxy-error"] == "body_too_large"
    assert len(upstream.received) == before


def test_misdirected_placeholder_in_a_body_surface_is_refused(proxy, upstream):  # type: ignore[no-untyped-def]
    p, _ = proxy
    before = len(upstream.received)
    with agent_client(p) as c:
        r = c.post("https://bodysvc.api.test/json", json={"k": "__vault.nobody__"})
    assert r.status_code == 403
    assert r.headers["x-vaultproxy-error"] == "placeholder_misdirected"
    assert len(upstream.received) == before
