"""Threat: the agent (or a prompt injection) sends service A's placeholder to service B's host,
hoping B's injection or a substitution delivers A's secret to B; or probes with made-up
``__vault.*__`` names.

Every such request is refused with 403 (``placeholder_misdirected`` / ``placeholder_unknown``)
before anything is forwarded: the upstream's own record shows no new request and no request
carrying a secret, and an audit record names the refusal. Twins: the same requests with the
right placeholder on the right host go through with the secret substituted.
"""

from __future__ import annotations

import time
from urllib.parse import quote

import pytest

from tests import canary
from tests.canary import make_canary
from tests.harness.proxy import ProxyProcess
from tests.harness.upstream import Upstream
from tests.integration import conftest as integration
from tests.integration.conftest import agent_client, service_block

pytestmark = [pytest.mark.security, pytest.mark.integration]
start_proxy = integration.start_proxy  # the module-scoped fixture, shared
upstream = integration.upstream  # the module-scoped fixture, shared

SURFACES = '["header", "query", "path"]'


@pytest.fixture(scope="module")
def secrets_() -> dict[str, str]:
    return {"a": make_canary(), "b": make_canary(), "c": make_canary()}


@pytest.fixture(scope="module")
def proxy(start_proxy, upstream: Upstream, secrets_: dict[str, str]) -> ProxyProcess:  # type: ignore[no-untyped-def]
    toml = service_block("a", "placeholder", "bearer", upstream.port, substitute_in=SURFACES)
    toml += service_block("b", "placeholder", "bearer", upstream.port, substitute_in=SURFACES)
    toml += service_block("c", "host_inject", "bearer", upstream.port)
    return start_proxy(toml, dict(secrets_))  # type: ignore[no-any-return]


def _carries_secret(upstream: Upstream, secrets_: dict[str, str], since: int) -> bool:
    """Does any request the upstream received after ``since`` carry any service's secret?"""
    for rec in upstream.received[since:]:
        text = repr(rec.headers) + rec.path + rec.query + rec.body.decode("latin-1")
        if any(s in text for s in secrets_.values()):
            return True
    return False


PH_A = "__vault.a__"
PH_A_PCT = quote(PH_A, safe="")  # the dots stay; the underscores do not need escaping...
PH_A_PCT_ALL = "".join(f"%{b:02X}" for b in PH_A.encode())  # ...so encode every byte


def _request(where: str, placeholder: str) -> tuple[str, dict[str, str], dict[str, str]]:
    """(path, headers, params) carrying ``placeholder`` in one surface."""
    if where == "header":
        return "/v1/h", {"Authorization": f"Bearer {placeholder}"}, {}
    if where == "other_header":
        return "/v1/h", {"X-Note": f"see {placeholder}"}, {}
    if where == "query":
        return "/v1/q", {}, {"key": placeholder}
    if where == "path":
        return f"/v1/items/{placeholder}", {}, {}
    if where == "query_percent":
        return f"/v1/q?key={PH_A_PCT_ALL}", {}, {}
    if where == "path_percent":
        return f"/v1/items/{PH_A_PCT_ALL}", {}, {}
    raise AssertionError(where)


WHERE = ["header", "other_header", "query", "path", "query_percent", "path_percent"]


def _send(
    proxy: ProxyProcess, host: str, path: str, headers: dict[str, str], params: dict[str, str]
) -> tuple[int, str | None, dict[str, object]]:
    with agent_client(proxy) as c:
        r = c.get(f"https://{host}{path}", headers=headers, params=params or None)
    canary.scan_text(f"agent response {host}{path}", r.content + repr(r.headers).encode())
    body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
    return r.status_code, r.headers.get("x-vaultproxy-error"), body


def _audited(proxy: ProxyProcess, code: str, service: str) -> bool:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for e in proxy.audit():
            if e["reason"] == code and e["outcome"] == "denied" and e["service"] == service:
                return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("target", ["b", "c"])
@pytest.mark.parametrize("where", WHERE)
def test_misdirected_placeholder_refused_and_never_forwarded(
    proxy: ProxyProcess, upstream: Upstream, secrets_: dict[str, str], target: str, where: str
) -> None:
    before = len(upstream.received)
    path, headers, params = _request(where, PH_A)
    status, code, body = _send(proxy, f"{target}.api.test", path, headers, params)
    assert (status, code) == (403, "placeholder_misdirected")
    assert body["error"]["code"] == "placeholder_misdirected"
    assert len(upstream.received) == before, "the upstream was contacted"
    leaked = _carries_secret(upstream, secrets_, before)
    assert not leaked, "a request carrying a secret reached the upstream"
    assert _audited(proxy, "placeholder_misdirected", target)


@pytest.mark.parametrize("target", ["a", "b", "c"])
@pytest.mark.parametrize("token", ["__vault.nosuch__", "__vault.a-old__", "__vault.0__"])
def test_unknown_placeholder_refused_and_never_forwarded(
    proxy: ProxyProcess, upstream: Upstream, secrets_: dict[str, str], target: str, token: str
) -> None:
    before = len(upstream.received)
    headers = {"Authorization": f"Bearer {token}"}
    status, code, _ = _send(proxy, f"{target}.api.test", "/v1/u", headers, {})
    assert (status, code) == (403, "placeholder_unknown")
    status, code, _ = _send(proxy, f"{target}.api.test", "/v1/u", {}, {"q": token})
    assert (status, code) == (403, "placeholder_unknown")
    assert len(upstream.received) == before
    leaked = _carries_secret(upstream, secrets_, before)
    assert not leaked, "a request carrying a secret reached the upstream"
    assert _audited(proxy, "placeholder_unknown", target)


def test_misdirect_beside_own_placeholder_still_refused(
    proxy: ProxyProcess, upstream: Upstream, secrets_: dict[str, str]
) -> None:
    """B's own placeholder in the header does not make A's placeholder in the query OK."""
    before = len(upstream.received)
    status, code, _ = _send(
        proxy, "b.api.test", "/v1/mix", {"Authorization": "Bearer __vault.b__"}, {"x": PH_A}
    )
    assert (status, code) == (403, "placeholder_misdirected")
    assert len(upstream.received) == before
    leaked = _carries_secret(upstream, secrets_, before)
    assert not leaked, "a request carrying a secret reached the upstream"


# --- twins: the right placeholder on the right host is substituted ---------------------------


@pytest.mark.parametrize("where", ["header", "query", "path", "query_percent", "path_percent"])
def test_twin_own_placeholder_is_substituted(
    proxy: ProxyProcess, upstream: Upstream, secrets_: dict[str, str], where: str
) -> None:
    path, headers, params = _request(where, PH_A)
    status, code, _ = _send(proxy, "a.api.test", path, headers, params)
    assert (status, code) == (200, None)
    rec = upstream.received[-1]
    got = repr(rec.headers) + rec.path + rec.query
    if where.endswith("percent"):
        # Percent-encoded placeholders are not substituted (only the literal token is);
        # what matters here is that it is not refused and carries no secret of another service.
        assert secrets_["b"] not in got and secrets_["c"] not in got
    else:
        found = secrets_["a"] in got
        assert found, "the own placeholder was not substituted"
