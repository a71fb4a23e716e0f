"""Threat: the credential-health audit leaking what it audits.

Verdicts weak / reused / breached against a local HTTPS range server (trustme CA trusted via
[health] ca_cert) that records every byte it is sent: it must only ever see
``/range/<5 hex>``, never a value, a full SHA-1 or a suffix; the CLI output and the admin API
answer carry names and verdicts only. Negative twins: a strong, distinct, unlisted secret is
not flagged; an untrusted server or a loopback server without allow_loopback is an error, not
"not breached"; the recorder itself catches a planted full hash."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import tests.canary as canaries
from tests.harness.proxy import ProxyHome, ProxyProcess, cli
from tests.harness.range_server import RangeServer, sha1_parts

pytestmark = [pytest.mark.security, pytest.mark.integration]


def weak_canary() -> str:
    """A canary that is weak: 15 characters, two classes (lower case and '_')."""
    value = "vpcanary_" + "".join(secrets.choice("abcdef") for _ in range(6))
    canaries._made.add(value)
    return value


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RangeServer]:
    s = RangeServer(tmp_path / "range").start()
    yield s
    s.stop()


class Stored:
    def __init__(self) -> None:
        self.weak = weak_canary()
        self.strong = canaries.make_canary()
        self.shared = canaries.make_canary()
        self.pwned = canaries.make_canary()
        self.login = canaries.make_canary()

    @property
    def values(self) -> list[str]:
        return [self.weak, self.strong, self.shared, self.pwned, self.login]

    def secrets(self) -> dict[str, str | dict[str, str]]:
        return {"weakone": self.weak, "strong": self.strong, "dup1": self.shared,
                "dup2": self.shared, "pwned": self.pwned,
                "github": {"username": "octo-user", "password": self.login}}


def _home(tmp_path: Path, server: RangeServer | None, stored: Stored, *,
          trust: bool = True, loopback: bool = True) -> ProxyHome:
    health = ""
    files: dict[str, bytes] = {}
    if server is not None:
        health = f'[health]\nhibp_url = "{server.url}"\nallow_loopback = {str(loopback).lower()}\n'
        if trust:
            health += 'ca_cert = "range-ca.pem"\n'
            files["range-ca.pem"] = server.ca_pem
    home = ProxyHome.create(tmp_path, health, stored.secrets(), files)
    canaries.watch(home.path)
    return home


def _audit_json(home: ProxyHome) -> tuple[dict[str, object], str]:
    r = cli(home.path, "secret", "audit", "--json", "--password-file", str(home.password_file))
    return json.loads(r.stdout), r.stdout + r.stderr


def _by_label(report: dict[str, object]) -> dict[str, dict[str, object]]:
    items = report["secrets"]
    assert isinstance(items, list)
    return {i["name"] + (f".{i['field']}" if i["field"] else ""): i for i in items}


def _no_value_or_hash(text: str, stored: Stored) -> None:
    for v in stored.values:
        prefix, suffix = sha1_parts(v)
        for needle in (v, prefix + suffix, suffix):
            assert needle not in text and needle.lower() not in text


def test_verdicts_and_only_prefixes_leave(tmp_path: Path, server: RangeServer) -> None:
    stored = Stored()
    server.mark_breached(stored.pwned)
    home = _home(tmp_path, server, stored)
    report, output = _audit_json(home)
    items = _by_label(report)
    assert set(items) == {"weakone", "strong", "dup1", "dup2", "pwned", "github.password"}
    assert items["weakone"]["weak"] is True and "few_classes" in items["weakone"]["weak_reasons"]
    assert items["strong"]["weak"] is False  # twin: a long 3-class value is not weak
    assert items["dup1"]["reused_with"] == ["dup2"] and items["dup2"]["reused_with"] == ["dup1"]
    assert items["strong"]["reused"] is False  # twin: a distinct value is not reused
    assert items["pwned"]["breached"] is True
    assert items["strong"]["breached"] is False  # twin: same server, not listed
    assert report["breach_check"] == {"enabled": True, "status": "ok", "error": None}
    assert report["summary"] == {"checked": 6, "weak": 1, "reused": 2, "breached": 1}
    # The range server saw 5-hex prefixes only: one request per distinct value's prefix.
    assert server.leaks(stored.values) == []
    assert sorted(server.paths) == sorted(
        {f"/range/{sha1_parts(v)[0]}" for v in stored.values})
    _no_value_or_hash(output, stored)


def test_text_output_names_and_verdicts_only(tmp_path: Path, server: RangeServer) -> None:
    stored = Stored()
    server.mark_breached(stored.pwned)
    home = _home(tmp_path, server, stored)
    r = cli(home.path, "secret", "audit", "--password-file", str(home.password_file))
    lines = {line.split()[0]: line for line in r.stdout.splitlines() if line.strip()}
    assert "weak (few_classes)" in lines["weakone"]
    assert "reused with dup2" in lines["dup1"]
    assert "breached" in lines["pwned"] and lines["strong"].endswith("ok")
    assert "breach check: ok" in r.stdout
    _no_value_or_hash(r.stdout + r.stderr, stored)


def test_recorder_catches_a_full_hash(tmp_path: Path, server: RangeServer) -> None:
    """Negative twin of the 5-hex property: a client sending the full hash is caught."""
    value = canaries.make_canary()
    prefix, suffix = sha1_parts(value)
    ctx = httpx.create_ssl_context(verify=str(server.dir / "range-ca.pem"))
    with httpx.Client(verify=ctx, trust_env=False) as c:  # noqa: TID251 - a test client
        c.get(f"{server.url}/range/{prefix}{suffix}")
    assert server.leaks([value])


def test_breach_check_off_without_hibp_url(tmp_path: Path, server: RangeServer) -> None:
    stored = Stored()
    home = _home(tmp_path, None, stored)
    report, output = _audit_json(home)
    assert report["breach_check"] == {"enabled": False, "status": "off", "error": None}
    assert all(i["breached"] is None for i in _by_label(report).values())
    assert server.paths == []  # nothing asked
    assert _by_label(report)["dup1"]["reused"] is True  # the local verdicts still work
    _no_value_or_hash(output, stored)


def test_untrusted_range_server_is_an_error_not_a_clean_bill(tmp_path: Path,
                                                             server: RangeServer) -> None:
    stored = Stored()
    server.mark_breached(stored.pwned)
    home = _home(tmp_path, server, stored, trust=False)
    report, output = _audit_json(home)
    check = report["breach_check"]
    assert isinstance(check, dict)
    assert check["status"] == "error" and "TLS" in str(check["error"])
    assert all(i["breached"] is None for i in _by_label(report).values())
    assert server.paths == []  # the TLS handshake failed before any request
    _no_value_or_hash(output, stored)


def test_loopback_range_server_needs_allow_loopback(tmp_path: Path, server: RangeServer) -> None:
    stored = Stored()
    home = _home(tmp_path, server, stored, loopback=False)
    report, _ = _audit_json(home)
    check = report["breach_check"]
    assert isinstance(check, dict)
    assert check["status"] == "error" and "destination denied" in str(check["error"])
    assert server.paths == []


def test_invalid_health_settings_are_named(tmp_path: Path) -> None:
    stored = Stored()
    home = ProxyHome.create(tmp_path, '[health]\nhibp_url = "http://x.test"\nbogus = 1\n',
                            stored.secrets())
    r = cli(home.path, "check", check=False)
    assert r.returncode == 1
    assert "health.hibp_url: must be an https:// URL" in r.stdout + r.stderr
    assert "health.bogus: unknown key" in r.stdout + r.stderr


# -- the admin API ---------------------------------------------------------------------------

def _get(proxy: ProxyProcess, token: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.get(f"{proxy.extra['admin_url']}/v1/secrets/audit", headers=headers,
                     trust_env=False, timeout=30)


def test_admin_api_audit(tmp_path: Path, server: RangeServer) -> None:
    stored = Stored()
    server.mark_breached(stored.pwned)
    home = _home(tmp_path, server, stored)
    proxy = ProxyProcess.start(home)
    try:
        token = (home.path / "admin-token").read_text().strip()
        assert _get(proxy, None).status_code == 401  # twin: same auth as every admin route
        r = _get(proxy, token)
        assert r.status_code == 200, r.text
        items = _by_label(r.json())
        assert items["pwned"]["breached"] is True and items["strong"]["breached"] is False
        assert items["dup1"]["reused_with"] == ["dup2"]
        assert items["weakone"]["weak_reasons"] == ["few_classes"]
        _no_value_or_hash(r.text, stored)
        assert server.leaks(stored.values) == []
        lock = httpx.post(f"{proxy.extra['admin_url']}/v1/lock", trust_env=False,
                          headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert lock.status_code == 200
        locked = _get(proxy, token)
        assert locked.status_code == 503 and locked.json()["error"]["code"] == "locked"
    finally:
        proxy.stop()
    events = [e for e in proxy.audit() if e.get("path") == "/v1/secrets/audit"]
    assert [e["status"] for e in events] == [200, 503]
    _no_value_or_hash(proxy.output() + (home.path / "audit.jsonl").read_text(), stored)
