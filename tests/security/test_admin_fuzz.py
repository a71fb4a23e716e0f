"""Property-based fuzzing of the admin API from its own /openapi.json (schemathesis, bounded):
no server errors, and no response (status line, headers, body) containing a canary secret."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests import canary
from tests.canary import CANARY_RE
from tests.harness.proxy import PASSWORD, ProxyHome, ProxyProcess
from tests.harness.upstream import Received, Reply, Upstream
from tests.integration.conftest import service_block

DELIBERATE_5XX = {"locked", "not_ready", "upstream_unreachable", "upstream_tls", "secret_missing"}

pytestmark = [pytest.mark.security, pytest.mark.integration, pytest.mark.slow]


def echo(rec: Received) -> Reply:
    body = repr(rec.headers).encode() + rec.query.encode()
    return 200, [(b"content-type", b"text/plain")], [body]


@pytest.fixture(scope="module")
def fuzz_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ProxyProcess, str]]:
    base = tmp_path_factory.mktemp("fuzz")
    canary.watch(base)
    up = Upstream(base, handler=echo).start()
    toml = service_block("svc", "host_inject", "bearer", up.port) + service_block(
        "ph", "placeholder", "bearer", up.port
    )
    home = ProxyHome.create(base, toml, {"svc": canary.make_canary(), "ph": canary.make_canary()},
                            files={"upstream-ca.pem": up.ca_file.read_bytes()})
    proc = ProxyProcess.start(home)
    token = (home.path / "admin-token").read_text().strip()
    yield proc, token
    proc.stop()
    up.stop()


def test_admin_api_fuzz(fuzz_target: tuple[ProxyProcess, str]) -> None:
    proc, token = fuzz_target
    base = str(proc.extra["admin_url"])
    auth = {"Authorization": f"Bearer {token}"}
    spec = httpx.get(f"{base}/openapi.json", trust_env=False, headers=auth).json()
    schema = schemathesis.openapi.from_dict(spec)
    # Long-lived by design, so not for a fuzzer that waits for each answer: the audit stream
    # (SSE, never ends) and the approvals long poll (up to 15 s a call). Their own tests:
    # test_cli_watch.py, test_approvals.py.
    long_lived = {("GET", "/v1/audit/stream"), ("GET", "/v1/approvals")}
    operations = [op for op in (result.ok() for result in schema.get_all_operations())
                  if (op.method.upper(), op.path) not in long_lived]
    assert len(operations) >= 11
    for operation in operations:
        # The fuzzer may have locked the keystore: unlock so every operation is also
        # exercised unlocked. Over admin.sock: the fuzzer's wrong passwords put the TCP peer
        # into unlock backoff, and a new X-Caller-Id rightly does not get around that.
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(proc.extra["admin_socket"])),
                          base_url="http://localhost", trust_env=False, timeout=30) as sock:
            r = sock.post("/v1/unlock", json={"password": PASSWORD})
        assert r.status_code == 200, r.text

        @given(case=operation.as_strategy())
        @settings(max_examples=12, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def one(case) -> None:  # type: ignore[no-untyped-def]
            response = case.call(base_url=base, timeout=20, headers=auth)
            assert response.status_code != 500, (case.method, case.path, response.text[:300])
            if response.status_code > 500:  # only the documented, deliberate ones
                assert response.json()["error"]["code"] in DELIBERATE_5XX, response.text[:300]
            seen = response.content + repr(dict(response.headers)).encode()
            assert not CANARY_RE.search(seen), (case.method, case.path)

        one()
    assert proc.proc.poll() is None
