"""The skips of the unrolled steps (seam/dispatch.py ``IDLE``), checked inside the real proxy:
it starts with a ``sitecustomize`` that installs tests/skipcheck.py as ``CHECK_SKIPS``, so
every hook body a step skips is run anyway, on the flow the proxy has, and must return None
and change nothing. The requests: host_inject, placeholder (header and body substitution,
and without a placeholder), a rules service (a denied path, an allowed one), honeytokens on
(bodies held for the scan), deadlines set, chunked uploads, HEAD, 204/401/500, a large
streamed response, plain http to the reserved name and to a service, and an upstream that
is not there. The twin: the bodies skipped are the six declared ones, each many times."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import canary
from tests.harness.proxy import ProxyProcess
from tests.harness.upstream import Received, Reply, Upstream, free_port
from tests.integration.conftest import agent_client, service_block

REPO = Path(__file__).resolve().parents[2]
SITE = f"""import os, sys
sys.path.insert(0, {str(REPO)!r})
from tests import skipcheck
skipcheck.install(os.environ["VP_SKIPCHECK_OUT"])
"""


def _handler(rec: Received) -> Reply:
    path = rec.path.split("?")[0]
    if path.startswith("/status/"):
        status = int(path.rsplit("/", 1)[1])
        return status, [(b"content-type", b"application/json")], [b"" if status == 204
                                                                   else b"{}"]
    if path == "/big":
        return 200, [(b"content-type", b"application/octet-stream")], [b"z" * 65536] * 6
    body = json.dumps({"path": path, "len": len(rec.body)}).encode()
    return 200, [(b"content-type", b"application/json")], [body]


@pytest.fixture(scope="module")
def proxy(start_proxy: Any, upstream: Upstream, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[tuple[ProxyProcess, Path]]:
    upstream.handler = _handler
    site = tmp_path_factory.mktemp("skipsite")
    (site / "sitecustomize.py").write_text(SITE)
    out = site / "skips.jsonl"
    env = dict(os.environ, VP_SKIPCHECK_OUT=str(out),
               PYTHONPATH=str(site))
    rules = '[{ method = "POST", path = "/forbidden*", action = "deny" }]'
    toml = ("[proxy]\nresponse_timeout = 30\nidle_timeout = 30\n\n"
            + service_block("hi", "host_inject", "bearer", upstream.port)
            + service_block("ph", "placeholder", "bearer", upstream.port,
                            substitute_in='["auth", "body"]')
            + service_block("ru", "host_inject", "bearer", upstream.port, rules=rules)
            + service_block("gone", "host_inject", "bearer", free_port())
            + '[[honeytoken]]\nname = "decoy"\n\n')
    secrets = {"hi": canary.make_canary(), "ph": canary.make_canary(),
               "ru": canary.make_canary(), "gone": canary.make_canary()}
    yield start_proxy(toml, secrets, env=env), out


def test_the_real_proxys_skipped_bodies_had_nothing_to_do(
        proxy: tuple[ProxyProcess, Path]) -> None:
    p, out = proxy
    statuses: list[int] = []
    with agent_client(p) as c:
        for _ in range(4):
            for url in ("https://hi.api.test/a", "https://ph.api.test/b",
                        "https://ru.api.test/ok", "https://hi.api.test/status/204",
                        "https://hi.api.test/status/401", "https://hi.api.test/status/500",
                        "https://hi.api.test/big", "https://gone.api.test/x"):
                statuses.append(c.get(url).status_code)
            statuses.append(c.head("https://hi.api.test/h").status_code)
            statuses.append(c.get("https://ph.api.test/p",
                                  headers={"authorization": "Bearer __vault.ph__"}).status_code)
            statuses.append(c.post("https://ph.api.test/s",
                                   content=b'{"key": "__vault.ph__"}').status_code)
            statuses.append(c.post("https://hi.api.test/held", content=b"x" * 500).status_code)
            statuses.append(c.post("https://ru.api.test/forbidden", content=b"{}").status_code)
            statuses.append(c.post("https://hi.api.test/chunked",
                                   content=iter([b"a" * 100, b"b" * 100])).status_code)
            with c.stream("GET", "https://hi.api.test/big") as r:
                statuses.append(r.status_code)
                assert sum(len(x) for x in r.iter_bytes()) == 6 * 65536
    with httpx.Client(proxy=p.url, timeout=20) as plain:
        statuses.append(plain.get("http://vaultproxy.internal/mcp").status_code)
        statuses.append(plain.get("http://hi.api.test/plain").status_code)
    assert {200, 204, 401, 500} <= set(statuses), statuses
    assert any(s >= 400 and s not in (401, 500) for s in statuses), statuses  # refusals
    wrong = [json.loads(x) for x in out.read_text().splitlines()] if out.exists() else []
    assert not wrong, wrong[:10]
    counts = json.loads(Path(str(out) + ".counts").read_text())
    assert set(counts) == {"Reserved.request", "RequestGate.request", "Mint.request",
                           "Inject.request", "Mint.requestheaders",
                           "Mint.responseheaders"}, counts
    assert min(counts.values()) >= 20, counts
