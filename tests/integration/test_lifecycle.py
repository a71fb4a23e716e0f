"""`vaultproxy run` lifecycle: SIGHUP reload (good and bad files), locked start, SIGTERM, CA."""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.canary import make_canary
from tests.harness.proxy import ProxyProcess
from tests.integration.conftest import agent_client, service_block


def _wait_for(pred, timeout: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.1)
    return False


def test_sighup_applies_valid_change_and_keeps_old_registry_on_bad_file(start_proxy, upstream):  # type: ignore[no-untyped-def]
    one = service_block("svc-a", "host_inject", "bearer", upstream.port)
    secret_a, secret_b = make_canary(), make_canary()
    proxy = start_proxy(one, {"svc-a": secret_a, "svc-b": secret_b})
    with agent_client(proxy) as c:
        assert c.get("https://svc-a.api.test/x").status_code == 200
    services = proxy.home.path / "services.toml"
    services.write_text(one + service_block("svc-b", "host_inject", "bearer", upstream.port))
    proxy.signal(signal.SIGHUP)
    assert _wait_for(lambda: "1 -> 2 services" in proxy.output()), proxy.output()
    with agent_client(proxy) as c:
        r = c.get("https://svc-b.api.test/after-reload")
    assert r.status_code == 200
    assert upstream.received[-1].header("authorization") == f"Bearer {secret_b}"

    # An invalid file: the old registry keeps serving and the log names every problem.
    services.write_text('[[service]]\nname = "Bad Name"\nhosts = []\nmode = "nope"\nbogus = 1\n')
    proxy.signal(signal.SIGHUP)
    assert _wait_for(lambda: "reload refused" in proxy.output()), proxy.output()
    out = proxy.output()
    for path in ("service[0].name", "service[0].hosts", "service[0].mode", "service[0].bogus"):
        assert path in out, path
    assert proxy.proc.poll() is None, "the proxy died on a bad file"
    with agent_client(proxy) as c:
        r = c.get("https://svc-b.api.test/still-served")
    assert r.status_code == 200
    assert upstream.received[-1].header("authorization") == f"Bearer {secret_b}"


def test_locked_keystore_answers_503_locked_and_forwards_nothing(start_proxy, upstream):  # type: ignore[no-untyped-def]
    proxy = start_proxy(
        service_block("svc-l", "host_inject", "bearer", upstream.port),
        {"svc-l": make_canary()},
        locked=True,
    )
    before = len(upstream.received)
    with agent_client(proxy) as c:
        r = c.get("https://svc-l.api.test/x", headers={"Authorization": "Bearer agent-own"})
    assert r.status_code == 503
    assert r.headers["x-vaultproxy-error"] == "locked"
    assert r.json()["error"]["code"] == "locked"
    assert len(upstream.received) == before


def test_sigterm_exits_zero_flushes_audit_and_removes_run_json(start_proxy, upstream):  # type: ignore[no-untyped-def]
    proxy = start_proxy(
        service_block("svc-t", "host_inject", "bearer", upstream.port), {"svc-t": make_canary()}
    )
    with agent_client(proxy) as c:
        assert c.get("https://svc-t.api.test/term").status_code == 200
    assert proxy.stop() == 0
    assert not (proxy.home.path / "run.json").exists()
    assert any(r.get("path") == "/term" for r in proxy.audit())
    assert "ready" in proxy.output() and "fingerprint" in proxy.output()


def test_run_refuses_group_readable_ca_key(start_proxy, upstream):  # type: ignore[no-untyped-def]
    proxy = start_proxy(service_block("svc-k", "host_inject", "bearer", upstream.port), {})
    proxy.stop()
    key = proxy.home.path / "ca.key"
    os.chmod(key, 0o640)
    with pytest.raises(AssertionError) as e:
        ProxyProcess.start(proxy.home)
    assert "ca.key" in str(e.value) and "chmod 0600" in str(e.value)
    os.chmod(key, 0o600)
