"""`vaultproxy status|unlock|lock|reload` against a real running proxy (over admin.sock),
the banner in a redirected log while running, and the missing-secret warnings at start and
on reload."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pexpect
import pytest

from tests.canary import make_canary
from tests.harness.proxy import PASSWORD, REPO, ProxyProcess
from tests.integration.conftest import agent_client, service_block

pytestmark = pytest.mark.integration


def vp(proxy: ProxyProcess, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAULTPROXY_")}
    return subprocess.run([sys.executable, "-m", "vaultproxy", *args, "--home",
                           str(proxy.home.path)], capture_output=True, text=True, timeout=90,
                          env=env, cwd=REPO, start_new_session=True)


def _wait_for(pred, timeout: float = 15.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.1)
    return False


def test_status_unlock_lock_reload(start_proxy, upstream, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    secret = make_canary()
    one = service_block("ctl-a", "host_inject", "bearer", upstream.port)
    proxy = start_proxy(one, {"ctl-a": secret}, locked=True)

    r = vp(proxy, "status")
    assert r.returncode == 0, r.stderr
    assert "running for" in r.stdout and "LOCKED" in r.stdout and "ctl-a" in r.stdout
    assert json.loads(vp(proxy, "status", "--json").stdout)["locked"] is True

    # unlock prompts on the terminal (never argv); the proxy then injects.
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAULTPROXY_")}
    child = pexpect.spawn(sys.executable, ["-m", "vaultproxy", "unlock", "--home",
                                           str(proxy.home.path)], env=env, encoding="utf-8",
                          timeout=90, cwd=str(REPO))
    child.expect("Master password")
    child.sendline(PASSWORD)
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, child.before
    assert "unlocked" in (child.before or "")
    with agent_client(proxy) as c:
        assert c.get("https://ctl-a.api.test/after-unlock").status_code == 200
    assert upstream.received[-1].header("authorization") == f"Bearer {secret}"
    assert json.loads(vp(proxy, "status", "--json").stdout)["locked"] is False

    r = vp(proxy, "lock")
    assert r.returncode == 0 and "locked" in r.stdout
    with agent_client(proxy) as c:
        assert c.get("https://ctl-a.api.test/locked").status_code == 503
    r = vp(proxy, "unlock", "--password-file", str(proxy.home.password_file))
    assert r.returncode == 0, r.stderr

    # A wrong password is refused over the API with a hint for the caller, not a file flag.
    vp(proxy, "lock")
    bad = tmp_path / "bad"
    bad.write_text("not the password")
    bad.chmod(0o600)
    r = vp(proxy, "unlock", "--password-file", str(bad))
    assert r.returncode == 1 and "wrong master password" in r.stderr
    assert "Traceback" not in r.stderr
    # After a failure the API backs off (429: the CLI says "wait and try again").
    assert _wait_for(lambda: vp(proxy, "unlock", "--password-file",
                                str(proxy.home.password_file)).returncode == 0)

    # reload: a new service; one without a secret is warned about (CLI and proxy log).
    services = proxy.home.path / "services.toml"
    services.write_text(one + service_block("ctl-nosecret", "host_inject", "bearer",
                                            upstream.port))
    r = vp(proxy, "reload")
    assert r.returncode == 0, r.stderr
    assert "1 -> 2 services" in r.stdout
    assert "ctl-nosecret" in r.stderr and "secret_missing" in r.stderr
    assert _wait_for(lambda: 'service ctl-nosecret: keystore has no entry named "ctl-nosecret"'
                     in proxy.output()), proxy.output()

    # An invalid file: exit 1 with every problem; the previous registry keeps serving.
    services.write_text('[[service]]\nname = "Bad Name"\nhosts = []\n')
    r = vp(proxy, "reload")
    assert r.returncode == 1
    assert "service[0].name" in r.stdout and "previous registry" in r.stderr
    # ... and the proxy's own log says so, as for a SIGHUP (whoever asked).
    assert _wait_for(lambda: "reload refused (asked by unix:" in proxy.output()), proxy.output()
    with agent_client(proxy) as c:
        assert c.get("https://ctl-a.api.test/still").status_code == 200

    assert proxy.stop() == 0
    r = vp(proxy, "status")
    assert r.returncode == 3 and "not running" in r.stdout
    for cmd in ("lock", "reload", "unlock"):
        r = vp(proxy, cmd)
        assert r.returncode == 1 and "not running" in r.stderr, (cmd, r.stderr)
        assert "Traceback" not in r.stderr


def test_banner_and_missing_secret_warning_reach_a_redirected_log_while_running(
    start_proxy, upstream  # type: ignore[no-untyped-def]
) -> None:
    """stdout is a file here (block-buffered by default): the banner must be flushed."""
    toml = (service_block("ban-ok", "host_inject", "bearer", upstream.port)
            + service_block("ban-missing", "host_inject", "bearer", upstream.port))
    proxy = start_proxy(toml, {"ban-ok": make_canary()})
    assert proxy.proc.poll() is None
    assert _wait_for(lambda: "CA SHA-256 fingerprint" in proxy.output()), proxy.output()
    out = proxy.output()
    assert "vaultproxy 0.1.0 ready" in out
    assert ('service ban-missing: keystore has no entry named "ban-missing"; its requests '
            "will fail with 502 secret_missing") in out
    assert "service ban-ok:" not in out
    assert proxy.extra["workers"] == 1  # the default is one process
