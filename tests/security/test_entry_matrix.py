"""Threat: a hostile agent picks the entry whose checks drifted. Every entry into the request
pipeline (a request through the proxy, ``POST /proxy``; next MCP's ``http_request``) runs
the SAME table of hostile requests against the same real TLS upstream, which records what it
receives. For every row and every entry: either the entry refuses (with one of the row's
codes, audited, and the upstream receives nothing), or the upstream receives the request
with the credential and without what the row must keep from it.

This is the test that caught ``POST /proxy`` forwarding ``Range: bytes=0-3`` and
``X-Forwarded-Host: evil.example`` to a service with ``allow_range = false`` while the
proxied path stripped both.

Negative twins: the upstream records each hostile header when a request reaches it
directly, and ``Range`` does reach a service that sets ``allow_range``, through each entry.

To add an entry: one function ``(Env, Row) -> Outcome`` in ``ENTRIES``.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import httpx
import pytest

from tests import canary
from tests.canary import make_canary
from tests.harness.proxy import ProxyHome, ProxyProcess
from tests.harness.upstream import Received, Upstream

pytestmark = [pytest.mark.security, pytest.mark.integration]

SERVICES = """
[[service]]
name = "mx"
hosts = ["mx.api.test"]
mode = "host_inject"
auth = "bearer"
connect_to = "127.0.0.1:{port}"
allow_loopback = true
ca_cert = "upstream-ca.pem"

[[service]]
name = "mp"
hosts = ["mp.api.test"]
mode = "placeholder"
auth = "bearer"
connect_to = "127.0.0.1:{port}"
allow_loopback = true
ca_cert = "upstream-ca.pem"

[[service]]
name = "mr"
hosts = ["mr.api.test"]
mode = "host_inject"
auth = "bearer"
allow_range = true
connect_to = "127.0.0.1:{port}"
allow_loopback = true
ca_cert = "upstream-ca.pem"
"""

AGENT_VALUE = "agent-chosen-value-5f1c"


@dataclass(frozen=True)
class Row:
    """One hostile request, and what the upstream must never get from it."""

    headers: dict[str, str]
    service: str = "mx"
    body: str | None = None
    absent: tuple[str, ...] = ()  # header names the upstream must not receive
    never: tuple[str, ...] = ()  # values that must not reach the upstream anywhere
    refuse: frozenset[str] = frozenset()  # codes an entry may refuse with instead
    must_refuse: bool = False  # forwarding at all is a failure
    host_is: str | None = None  # the Host the upstream must see when forwarded


CRED = frozenset({"auth_header_refused"})  # POST /proxy refuses what the proxy strips

MATRIX: dict[str, Row] = {
    "range": Row({"Range": "bytes=0-3"}, absent=("range",)),
    "if-range": Row({"If-Range": '"etag-1"', "Range": "bytes=0-3"},
                    absent=("range", "if-range")),
    "x-forwarded-host": Row({"X-Forwarded-Host": "evil.example"}, absent=("x-forwarded-host",),
                            never=("evil.example",)),
    "forwarded": Row({"Forwarded": "host=evil.example;proto=https"}, absent=("forwarded",),
                     never=("evil.example",)),
    "x-forwarded-server": Row({"X-Forwarded-Server": "evil.example"},
                              absent=("x-forwarded-server",)),
    "x-host": Row({"X-Host": "evil.example"}, absent=("x-host",)),
    "x-original-host": Row({"X-Original-Host": "evil.example"}, absent=("x-original-host",)),
    "agent-authorization": Row({"Authorization": f"Bearer {AGENT_VALUE}"},
                               never=(AGENT_VALUE,), refuse=CRED),
    "agent-x-api-key": Row({"X-Api-Key": AGENT_VALUE}, never=(AGENT_VALUE,), refuse=CRED),
    "agent-x-api-key-underscore": Row({"X_Api_Key": AGENT_VALUE}, absent=("x_api_key",),
                                      never=(AGENT_VALUE,), refuse=CRED),
    "agent-cookie": Row({"Cookie": f"sid={AGENT_VALUE}"}, absent=("cookie",),
                        never=(AGENT_VALUE,), refuse=CRED),
    "proxy-authorization": Row({"Proxy-Authorization": f"Basic {AGENT_VALUE}"},
                               absent=("proxy-authorization",), never=(AGENT_VALUE,),
                               refuse=CRED),
    "host-override": Row({"Host": "evil.example"}, never=("evil.example",),
                         refuse=frozenset({"host_mismatch"}), host_is="mx.api.test"),
    "foreign-placeholder-in-header": Row(
        {"X-Note": "__vault.mp__"}, refuse=frozenset({"placeholder_misdirected"}),
        must_refuse=True),
    "unknown-placeholder-in-header": Row(
        {"X-Note": "__vault.nosuch__"}, refuse=frozenset({"placeholder_unknown"}),
        must_refuse=True),
    "placeholder-misdirected-in-auth": Row(
        {"Authorization": "Bearer __vault.mp__"},
        refuse=frozenset({"placeholder_misdirected"}) | CRED, must_refuse=True),
    "placeholder-in-its-own-slot": Row(
        {"Authorization": "Bearer __vault.mp__", "X-Forwarded-Host": "evil.example"},
        service="mp", absent=("x-forwarded-host",), never=("__vault.mp__",),
        host_is="mp.api.test"),
}


@dataclass
class Env:
    proxy: ProxyProcess
    upstream: Upstream
    secrets: dict[str, str]
    agent: httpx.Client = field(init=False)
    admin: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        ctx = ssl.create_default_context(cafile=str(self.proxy.home.ca_cert))
        self.agent = httpx.Client(proxy=self.proxy.url, verify=ctx, timeout=20)
        token = (self.proxy.home.path / "admin-token").read_text().strip()
        self.admin = httpx.Client(base_url=str(self.proxy.extra["admin_url"]), timeout=20,
                                  headers={"Authorization": f"Bearer {token}"})


@dataclass(frozen=True)
class Outcome:
    status: int
    code: str | None  # the proxy's error code, when it answered itself


def _outcome(r: httpx.Response) -> Outcome:
    code = r.headers.get("x-vaultproxy-error")
    return Outcome(r.status_code, code)


def via_proxy(env: Env, row: Row) -> Outcome:
    """The agent's request through the proxy (CONNECT, TLS to vaultproxy's CA)."""
    r = env.agent.request("POST" if row.body else "GET", f"https://{row.service}.api.test/m",
                          headers=row.headers, content=row.body)
    return _outcome(r)


def via_admin(env: Env, row: Row) -> Outcome:
    """The same request as ``POST /proxy``."""
    r = env.admin.post("/proxy", json={
        "service": row.service, "method": "POST" if row.body else "GET", "path": "/m",
        "headers": row.headers, "body": row.body,
    })
    return _outcome(r)


ENTRIES: dict[str, Callable[[Env, Row], Outcome]] = {"proxy": via_proxy, "admin": via_admin}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    up = Upstream(tmp_path_factory.mktemp("matrix-upstream")).start()
    base = tmp_path_factory.mktemp("matrix")
    canary.watch(base)
    secrets = {"mx": make_canary(), "mp": make_canary(), "mr": make_canary()}
    home = ProxyHome.create(base, SERVICES.format(port=up.port), dict(secrets),
                            files={"upstream-ca.pem": up.ca_file.read_bytes()})
    proxy = ProxyProcess.start(home, args=("--workers", "1"))
    e = Env(proxy, up, secrets)
    yield e
    e.agent.close()
    e.admin.close()
    proxy.stop()
    up.stop()


def _seen(rec: Received) -> str:
    return repr(rec.headers).lower() + rec.path.lower() + rec.body.decode("latin-1").lower()


@pytest.mark.parametrize("entry", list(ENTRIES))
@pytest.mark.parametrize("name", list(MATRIX))
def test_hostile_matrix(env: Env, entry: str, name: str) -> None:
    row = MATRIX[name]
    before = len(env.upstream.received)
    out = ENTRIES[entry](env, row)
    got = env.upstream.received[before:]
    if out.code is not None:  # the entry refused
        assert out.code in row.refuse, (entry, name, out)
        assert got == [], f"{entry}/{name}: refused, yet the upstream got a request"
        audit = [a for a in env.proxy.audit() if a.get("reason") == out.code]
        assert audit, f"{entry}/{name}: refusal {out.code} not audited"
        return
    assert not row.must_refuse, f"{entry}/{name}: forwarded, must be refused ({out})"
    assert out.status == 200, (entry, name, out)
    assert len(got) == 1, (entry, name, len(got))
    rec = got[0]
    assert rec.header("authorization") == f"Bearer {env.secrets[row.service]}"  # injected
    for header in row.absent:
        assert rec.header(header) is None, f"{entry}/{name}: upstream received {header}"
    seen = _seen(rec)
    for value in row.never:
        assert value.lower() not in seen, f"{entry}/{name}: {value!r} reached the upstream"
    if row.host_is is not None:
        assert rec.header("host") == row.host_is or rec.header(":authority") == row.host_is


@pytest.mark.parametrize("entry", list(ENTRIES))
def test_twin_range_reaches_an_allow_range_service(env: Env, entry: str) -> None:
    """The probe reaches its target without the protection: ``allow_range`` keeps Range."""
    before = len(env.upstream.received)
    row = Row({"Range": "bytes=0-3", "X-Forwarded-Host": "evil.example"}, service="mr")
    out = ENTRIES[entry](env, row)
    assert out.code is None and out.status == 200
    rec = env.upstream.received[before]
    assert rec.header("range") == "bytes=0-3"
    assert rec.header("x-forwarded-host") is None  # routing headers go regardless


def test_twin_upstream_records_every_hostile_header(env: Env) -> None:
    """Sent straight to the upstream, each hostile header is received and recorded: an
    absent header above is the proxy's doing, not the upstream's."""
    before = len(env.upstream.received)
    names = sorted({h for row in MATRIX.values() for h in row.absent})
    headers = {n: "probe" for n in names}
    ctx = ssl.create_default_context(cafile=str(env.upstream.ca_file))
    with httpx.Client(verify=ctx, timeout=10) as c:
        c.get(f"https://localhost:{env.upstream.port}/m", headers=headers)
    rec = env.upstream.received[before]
    assert {n for n in names if rec.header(n) == "probe"} == set(names)
