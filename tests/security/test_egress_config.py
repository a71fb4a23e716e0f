"""Threat: a services.toml (edited by a careless operator, or by an agent that can write it)
points a service at loopback, a private network or a cloud metadata endpoint.

The load-time address policy (SPEC §5) judges every ``connect_to`` and every IP-literal host
with that service's ``allow_private`` / ``allow_loopback``: `parse_config`, `vaultproxy check`
and a SIGHUP reload all refuse, naming the field and the rule and never echoing the value.
Twins: the same addresses with the matching allow flag (where one exists) load.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.canary import make_canary
from tests.harness.proxy import REPO, ProxyProcess
from tests.harness.upstream import Upstream
from tests.integration import conftest as integration
from tests.integration.conftest import agent_client, service_block
from vaultproxy.config.load import parse_config
from vaultproxy.errors import ConfigError

pytestmark = pytest.mark.security
start_proxy = integration.start_proxy  # the module-scoped fixture, shared
upstream = integration.upstream  # the module-scoped fixture, shared


def _toml(connect_to: str | None = None, hosts: str = '"a.example.com"', **flags: bool) -> str:
    """One host_inject service; ``flags`` are allow_loopback / allow_private."""
    lines = [
        "[[service]]",
        'name = "a"',
        f"hosts = [{hosts}]",
        'mode = "host_inject"',
        'auth = "bearer"',
    ]
    if connect_to is not None:
        lines.append(f'connect_to = "{connect_to}"')
    lines += [f"{k} = {'true' if v else 'false'}" for k, v in flags.items()]
    return "\n".join(lines) + "\n"


def _problems(text: str) -> list[str]:
    try:
        parse_config(text, Path("/nonexistent"))
    except ConfigError as e:
        return e.problems
    return []


# (connect_to, reason fragment, flag that lifts it or None)
CONNECT_TO = [
    ("169.254.169.254:80", "a cloud metadata address", None),
    ("169.254.170.2:80", "a cloud metadata address", None),
    ("100.100.100.200:80", "a cloud metadata address", None),
    ("192.0.0.192:80", "a cloud metadata address", None),
    ("[fd00:ec2::254]:80", "a cloud metadata address", None),
    ("[::ffff:169.254.169.254]:80", "IPv4-mapped IPv6 embedding a cloud metadata", None),
    ("[64:ff9b::a9fe:a9fe]:80", "NAT64 IPv6 embedding a cloud metadata", None),
    ("[2002:a9fe:a9fe::]:80", "6to4 IPv6 embedding a cloud metadata", None),
    ("169.254.10.10:443", "a link-local address", None),
    ("[fe80::1]:443", "a link-local address", None),
    ("0.0.0.0:443", "an unspecified address", None),
    ("224.0.0.1:443", "a multicast address", None),
    ("255.255.255.255:443", "a broadcast address", None),
    ("192.0.2.10:443", "a documentation address", None),
    ("localhost:8080", "a localhost name", None),
    ("metadata.google.internal:80", "a cloud metadata name", None),
    ("127.0.0.1:8443", "a loopback address; set allow_loopback = true", "allow_loopback"),
    ("127.5.5.5:8443", "a loopback address; set allow_loopback = true", "allow_loopback"),
    ("[::1]:8443", "a loopback address; set allow_loopback = true", "allow_loopback"),
    ("[::ffff:127.0.0.1]:8443", "embedding a loopback address", "allow_loopback"),
    ("10.0.0.5:443", "a private address; set allow_private = true", "allow_private"),
    ("192.168.1.1:443", "a private address; set allow_private = true", "allow_private"),
    ("172.16.0.1:443", "a private address; set allow_private = true", "allow_private"),
    ("100.64.0.1:443", "a carrier-grade NAT address; set allow_private", "allow_private"),
    ("[fd12::1]:443", "unique-local address; set allow_private = true", "allow_private"),
]


@pytest.mark.parametrize(
    ("connect_to", "reason", "flag"), CONNECT_TO, ids=[c[0] for c in CONNECT_TO]
)
def test_connect_to_refused_at_load(connect_to: str, reason: str, flag: str | None) -> None:
    problems = _problems(_toml(connect_to))
    assert len(problems) == 1, problems
    assert problems[0].startswith(
        'service "a" (service[0]).connect_to: denied by the address policy: ')
    assert reason in problems[0]
    host = connect_to.rsplit(":", 1)[0].strip("[]")
    if host != "localhost":  # "a localhost name" names the rule, not the value
        assert host not in problems[0], "the value was echoed"


@pytest.mark.parametrize(
    ("connect_to", "reason", "flag"), CONNECT_TO, ids=[c[0] for c in CONNECT_TO]
)
def test_twin_allow_flag_lifts_only_its_own_class(
    connect_to: str, reason: str, flag: str | None
) -> None:
    both = _problems(_toml(connect_to, allow_loopback=True, allow_private=True))
    if flag is None:  # metadata, link-local, localhost names...: nothing lifts them
        assert both and reason in both[0]
    else:
        assert both == []
        other = "allow_private" if flag == "allow_loopback" else "allow_loopback"
        flags = {other: True}
        assert _problems(_toml(connect_to, '"a.example.com"', **flags)), "the wrong flag lifted it"


@pytest.mark.parametrize(
    ("hosts", "reason"),
    [
        ('"169.254.169.254"', "cloud metadata address"),
        ('"a.example.com", "127.0.0.1:8443"', "loopback address"),
        ('"[::1]"', "loopback address"),
        ('"10.1.2.3"', "private address"),
        ('"[fe80::1]:443"', "link-local address"),
    ],
)
def test_ip_literal_hosts_refused_at_load(hosts: str, reason: str) -> None:
    problems = _problems(_toml(None, hosts))
    assert len(problems) == 1 and reason in problems[0], problems
    assert problems[0].startswith('service "a" (service[0]).hosts[')


def test_twin_public_addresses_and_names_load() -> None:
    assert _problems(_toml("93.184.215.14:443", '"8.8.8.8", "[2606:4700::1111]:8443"')) == []
    assert _problems(_toml("upstream.example.net:8443")) == []
    assert _problems(_toml("10.0.0.5:443", '"10.0.0.5"', allow_private=True)) == []


# --- `vaultproxy check` and reload ---------------------------------------------------------


def _check(home: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAULTPROXY_")}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [sys.executable, "-m", "vaultproxy", "check", "--home", str(home)],
        capture_output=True,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
        timeout=60,
        cwd=REPO,
    )


@pytest.mark.integration
def test_vaultproxy_check_refuses_metadata_connect_to(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    (home / "services.toml").write_text(_toml("169.254.169.254:80"))
    result = _check(home)
    assert result.returncode == 1, result.stderr + result.stdout
    out = result.stdout + result.stderr
    assert ('service "a" (service[0]).connect_to: denied by the address policy: a cloud '
            "metadata address") in out
    assert "169.254.169.254" not in out
    (home / "services.toml").write_text(_toml("127.0.0.1:8443", allow_loopback=True))
    assert _check(home).returncode == 0


@pytest.mark.integration
def test_reload_refuses_metadata_connect_to_and_keeps_serving(
    start_proxy: Callable[..., ProxyProcess],
    upstream: Upstream,
) -> None:
    good = service_block("rl", "host_inject", "bearer", upstream.port)
    proxy: ProxyProcess = start_proxy(good, {"rl": make_canary()})
    services = proxy.home.path / "services.toml"
    services.write_text(good.replace(f"127.0.0.1:{upstream.port}", "169.254.169.254:80"))
    proxy.signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "reload refused" not in proxy.output() and time.monotonic() < deadline:
        time.sleep(0.05)
    out = proxy.output()
    assert ('service "rl" (service[0]).connect_to: denied by the address policy: a cloud '
            "metadata address") in out
    assert "169.254.169.254" not in out
    with agent_client(proxy) as c:
        r = c.get("https://rl.api.test/after-bad-reload")
    assert r.status_code == 200
    assert upstream.received[-1].path == "/after-bad-reload"
