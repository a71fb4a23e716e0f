"""Request rules cannot be bypassed (SPEC §10): one table of spellings that a naive prefix
match would let through, run against every entry that reaches a service -- the proxy over
HTTP/1.1 and HTTP/2 (curl --path-as-is: the bytes go out as written) and ``POST /proxy``.
MCP's ``http_request`` joins the ``ENTRIES`` when it exists.

Negative twins: the same spellings to a service without rules reach the upstream (so each
probe really arrives there), and allowed paths pass with their normalised form upstream."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator

import httpx
import pytest

from tests import canary
from tests.harness.proxy import ProxyProcess
from tests.harness.upstream import Upstream
from tests.integration.conftest import service_block

pytestmark = pytest.mark.security

RULES = ('[{ method = "GET", path = "/public/*", action = "allow" }, '
         '{ method = "*", path = "/repos/*/actions/secrets*", action = "deny" }, '
         '{ method = "DELETE", path = "*", action = "deny" }]')

# (method, path as sent): each must be refused by the rules above
BYPASSES = [
    ("GET", "/repos/o/actions/secrets"),  # the plain spelling
    ("GET", "/repos/o/x/../actions/secrets"),  # dot-segments
    ("GET", "/repos/o/./actions/./secrets"),
    ("GET", "/repos/o/%2e%2e/o/actions/secrets"),  # encoded dot-segments
    ("GET", "/repos/o/%2E%2E/o/actions/secrets"),
    ("GET", "/public/../repos/o/actions/secrets"),  # an allowed prefix, then ..
    ("GET", "/public/%2e%2e/repos/o/actions/secrets"),
    ("GET", "/repos/o/actions//secrets"),  # doubled slash
    ("GET", "/repos/o/actions/%73ecrets"),  # an unreserved character escaped
    ("GET", "/repos/o/actions%2Fsecrets"),  # an encoded slash (read as "/" by some servers)
    ("GET", "/repos/o/actions%5csecrets"),  # a backslash (ditto)
    ("delete", "/anything"),  # method case
    ("DeLeTe", "/anything"),
]
ENTRIES = ["proxy-http1", "proxy-http2", "post-proxy"]


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    u = Upstream(tmp_path_factory.mktemp("up")).start()
    yield u
    u.stop()


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, upstream: Upstream) -> Iterator[ProxyProcess]:
    from tests.harness.proxy import ProxyHome

    base = tmp_path_factory.mktemp("rules")
    canary.watch(base)
    toml = (service_block("gh", "host_inject", "bearer", upstream.port, rules=RULES)
            + service_block("open", "host_inject", "bearer", upstream.port))
    home = ProxyHome.create(base, toml, {"gh": canary.make_canary(),
                                         "open": canary.make_canary()},
                            files={"upstream-ca.pem": upstream.ca_file.read_bytes()})
    p = ProxyProcess.start(home)
    yield p
    p.stop()


def send(proxy: ProxyProcess, entry: str, service: str, method: str, path: str
         ) -> tuple[int, str]:
    """(status, error code or "") of one request through ``entry``."""
    if entry == "post-proxy":
        token = (proxy.home.path / "admin-token").read_text().strip()
        with httpx.Client(base_url=str(proxy.extra["admin_url"]), timeout=30,
                          headers={"Authorization": f"Bearer {token}"}) as c:
            r = c.post("/proxy", json={"service": service, "method": method, "path": path})
        canary.scan_text("POST /proxy", r.content)
        code = r.json()["error"]["code"] if r.status_code >= 400 else ""
        return r.status_code, code
    cmd = ["curl", "-sS", "--max-time", "20", "--path-as-is", "-x", proxy.url,
           "--cacert", str(proxy.home.ca_cert), "-X", method, "-o", "-", "-w", "\n%{http_code}",
           "--http2" if entry == "proxy-http2" else "--http1.1",
           f"https://{service}.api.test{path}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    canary.scan_text("curl", out.stdout.encode())
    body, _, status = out.stdout.rpartition("\n")
    code = ""
    if int(status) >= 400:
        code = json.loads(body)["error"]["code"]
    return int(status), code


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize(("method", "path"), BYPASSES)
def test_rule_holds_through_every_entry(
    proxy: ProxyProcess, upstream: Upstream, entry: str, method: str, path: str
) -> None:
    before = len(upstream.received)
    status, code = send(proxy, entry, "gh", method, path)
    if entry == "post-proxy" and method != method.upper():
        assert (status, code) == (422, "invalid_request")  # /proxy takes upper-case only
    else:
        assert (status, code) == (403, "request_denied")
    assert len(upstream.received) == before  # nothing reached the upstream


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize(("method", "path"), [b for b in BYPASSES if b[0].isupper()])
def test_twin_without_rules_each_probe_reaches_the_upstream(
    proxy: ProxyProcess, upstream: Upstream, entry: str, method: str, path: str
) -> None:
    before = len(upstream.received)
    status, _ = send(proxy, entry, "open", method, path)
    assert status == 200
    assert len(upstream.received) == before + 1


@pytest.mark.parametrize("entry", ENTRIES)
def test_allowed_paths_pass_normalised(proxy: ProxyProcess, upstream: Upstream,
                                       entry: str) -> None:
    status, _ = send(proxy, entry, "gh", "GET", "/public/./a/%7euser/../b//c")
    assert status == 200
    assert upstream.received[-1].path == "/public/a/b/c"  # what the rule saw went upstream
    status, _ = send(proxy, entry, "gh", "GET", "/elsewhere/x")  # default_action allow
    assert status == 200
