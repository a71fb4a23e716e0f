"""What another process writes to keystore.enc reaches a running proxy on SIGHUP (and on
`POST /v1/reload`), on every worker, without the master password: `secret set`, `agent add`
and `agent rm` from the CLI. A file that is not the keystore the proxy unlocked is refused
and the unlocked copy keeps serving. An admin secret write after a CLI write lands on top of
it (no 409, nothing lost)."""

from __future__ import annotations

import signal
import ssl
import time

import httpx
import pytest

from tests import canary
from tests.canary import make_canary
from tests.harness.proxy import ProxyHome, ProxyProcess, cli
from tests.harness.upstream import Upstream
from tests.integration.conftest import service_block
from tests.integration.test_admin import Quiet, unix
from tests.integration.test_workers import assert_spread, auths_seen, fan_out

pytestmark = pytest.mark.integration


@pytest.fixture()
def running(start_proxy, upstream: Upstream):  # type: ignore[no-untyped-def]
    secrets = Quiet({"k-one": make_canary(), "k-two": make_canary()})
    toml = service_block("k-one", "host_inject", "bearer", upstream.port)
    proxy = start_proxy(toml, {"k-one": secrets["k-one"]}, args=("--workers", "2"))
    return proxy, secrets


def _pw(proxy: ProxyProcess) -> tuple[str, str]:
    return ("--password-file", str(proxy.home.password_file))


def _set(proxy: ProxyProcess, name: str, value: str) -> None:
    cli(proxy.home.path, "secret", "set", name, *_pw(proxy), input=value)


def _wait_for(proxy: ProxyProcess, text: str) -> None:
    deadline = time.monotonic() + 10
    while text not in proxy.output():
        assert time.monotonic() < deadline, f"{text!r} not in the proxy's output"
        time.sleep(0.05)


def test_cli_secret_set_reaches_every_worker_at_once(running, upstream) -> None:  # type: ignore[no-untyped-def]
    proxy, secrets = running
    proxy.home.set_secret("k-one", secrets["k-one"])
    r = cli(proxy.home.path, "secret", "set", "k-one", *_pw(proxy), input=secrets["k-two"])
    assert r.stdout == "stored k-one\nthe running proxy uses it now\n"
    replies, owners = fan_out(proxy, "k-one.api.test", "/at-once")
    assert_spread(owners, proxy)
    assert auths_seen(upstream, "/at-once") == [f"Bearer {secrets['k-two']}"] * len(replies)
    proxy.home.set_secret("k-one", secrets["k-one"])  # as the other tests expect it
    with unix(proxy) as admin:
        assert admin.post("/v1/reload").status_code == 200


def test_a_silent_keystore_write_reaches_every_worker_on_sighup(running, upstream) -> None:  # type: ignore[no-untyped-def]
    proxy, secrets = running
    proxy.home.set_secret("k-one", secrets["k-two"])  # as another tool would: nobody is told
    replies, owners = fan_out(proxy, "k-one.api.test", "/before-hup")
    assert auths_seen(upstream, "/before-hup") == [f"Bearer {secrets['k-one']}"] * len(replies)
    proxy.signal(signal.SIGHUP)
    _wait_for(proxy, "re-read keystore.enc")
    with unix(proxy) as admin:  # a barrier: every worker has the re-read keystore
        assert admin.get("/v1/audit", params={"limit": 1}).status_code == 200
    replies, owners = fan_out(proxy, "k-one.api.test", "/after-hup")
    assert_spread(owners, proxy)
    assert auths_seen(upstream, "/after-hup") == [f"Bearer {secrets['k-two']}"] * len(replies)


def test_admin_reload_rereads_the_keystore_too(running, upstream) -> None:  # type: ignore[no-untyped-def]
    proxy, secrets = running
    proxy.home.set_secret("k-one", secrets["k-two"])
    with unix(proxy) as admin:
        assert admin.post("/v1/reload").status_code == 200
    replies, owners = fan_out(proxy, "k-one.api.test", "/after-api-reload")
    assert_spread(owners, proxy)
    seen = auths_seen(upstream, "/after-api-reload")
    assert seen == [f"Bearer {secrets['k-two']}"] * len(replies)


def test_admin_write_after_a_cli_write_keeps_both(running) -> None:  # type: ignore[no-untyped-def]
    proxy, secrets = running
    _set(proxy, "cli-made", make_canary())
    with unix(proxy) as admin:
        r = admin.put("/v1/secrets/api-made", json={"value": make_canary()})
        assert r.status_code == 200, r.text
        names = {s["name"] for s in admin.get("/v1/secrets").json()["secrets"]}
    assert {"k-one", "cli-made", "api-made"} <= names
    listed = cli(proxy.home.path, "secret", "list", *_pw(proxy)).stdout
    assert "cli-made" in listed and "api-made" in listed  # both on disk


def test_agent_add_and_rm_reach_the_running_proxy(start_proxy, upstream) -> None:  # type: ignore[no-untyped-def]
    value = make_canary()
    toml = "[proxy]\nrequire_agent_auth = true\n\n" + service_block(
        "k-agent", "host_inject", "bearer", upstream.port)
    proxy = start_proxy(toml, {"k-agent": value}, args=("--workers", "2"))
    pw = _pw(proxy)
    added = cli(proxy.home.path, "agent", "add", "late", "--services", "k-agent", *pw)
    agent_url = proxy.url.replace("http://", f"http://late:{added.stdout.strip()}@")

    def status() -> int:
        ctx = ssl.create_default_context(cafile=str(proxy.home.ca_cert))
        with httpx.Client(proxy=agent_url, verify=ctx, timeout=20) as c:
            try:
                return c.get("https://k-agent.api.test/agent").status_code
            except httpx.ProxyError as e:
                return int(str(e).split()[0])

    # `agent add` had the running proxy re-read the keystore (every worker) before it
    # returned: the new agent is known at once; `agent rm` forgets it at once.
    assert "the running proxy uses it now" in added.stderr
    assert {status() for _ in range(8)} == {200}
    cli(proxy.home.path, "agent", "rm", "late", *pw)
    assert {status() for _ in range(8)} == {407}


def test_a_foreign_keystore_is_refused_and_the_old_one_keeps_serving(  # type: ignore[no-untyped-def]
    running, upstream, tmp_path
) -> None:
    proxy, secrets = running
    other = ProxyHome.create(tmp_path, "", {"k-one": secrets["k-two"]})  # another data key
    canary.watch(tmp_path)
    (proxy.home.path / "keystore.enc").write_bytes((other.path / "keystore.enc").read_bytes())
    proxy.signal(signal.SIGHUP)
    _wait_for(proxy, "is not the keystore this proxy unlocked")
    replies, owners = fan_out(proxy, "k-one.api.test", "/foreign")
    assert_spread(owners, proxy)
    assert auths_seen(upstream, "/foreign") == [f"Bearer {secrets['k-one']}"] * len(replies)
