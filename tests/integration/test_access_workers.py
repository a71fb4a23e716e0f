"""Approvals and rate limits with ``run --workers 2`` (SPEC §10): the supervisor owns them.
Requests held in either process are decided through the supervisor's admin API, each gets its
own decision; a rate limit counts an agent's requests across both processes; a worker killed
while it holds a request loses no decision (the approval becomes a grant for the retry)."""

from __future__ import annotations

import concurrent.futures
import os
import random
import signal
import ssl
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass

import httpx
import pytest

from tests import canary
from tests.harness.proxy import ProxyHome, ProxyProcess, cli
from tests.harness.upstream import Upstream
from tests.integration.conftest import scan_response, service_block
from tests.integration.test_workers import all_pids, established_owners

pytestmark = pytest.mark.integration

HELD = 20
LIMIT = 5


@dataclass
class Env:
    proxy: ProxyProcess
    upstream: Upstream
    tokens: dict[str, str]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    up = Upstream(tmp_path_factory.mktemp("up")).start()
    base = tmp_path_factory.mktemp("workers-access")
    canary.watch(base)
    rules = '[{ method = "POST", path = "/hold/*", action = "approve" }]'
    toml = ("[approvals]\nhold_seconds = 30\ngrant_seconds = 30\n\n"
            + service_block("ai", "host_inject", "bearer", up.port, rules=rules)
            + service_block("lim", "host_inject", "bearer", up.port,
                            rate_limit=f'"{LIMIT}/min"'))
    home = ProxyHome.create(base, toml, {"ai": canary.make_canary(),
                                         "lim": canary.make_canary()},
                            files={"upstream-ca.pem": up.ca_file.read_bytes()})
    tokens = {}
    for name in ("alice", "bob"):
        out = cli(home.path, "agent", "add", name, "--services", "ai,lim",
                  "--password-file", str(home.password_file)).stdout
        tokens[name] = out.strip()
    proxy = ProxyProcess.start(home, args=("--workers", "2"))
    yield Env(proxy, up, tokens)
    proxy.stop()
    up.stop()


def client(env: Env, agent: str) -> httpx.Client:
    ctx = ssl.create_default_context(cafile=str(env.proxy.home.ca_cert))
    url = env.proxy.url.replace("http://", f"http://{agent}:{env.tokens[agent]}@")
    return httpx.Client(proxy=url, verify=ctx, timeout=60,
                        event_hooks={"response": [scan_response]})


def admin(env: Env) -> httpx.Client:
    token = (env.proxy.home.path / "admin-token").read_text().strip()
    return httpx.Client(base_url=str(env.proxy.extra["admin_url"]), timeout=30,
                        headers={"Authorization": f"Bearer {token}"})


def pending(env: Env, n: int, prefix: str) -> list[dict[str, object]]:
    deadline = time.monotonic() + 30
    with admin(env) as a:
        while time.monotonic() < deadline:
            got = [x for x in a.get("/v1/approvals").json()["approvals"]
                   if x["state"] == "pending" and str(x["path"]).startswith(prefix)]
            if len(got) >= n:
                return got
            time.sleep(0.1)
    raise AssertionError(f"{n} pending approvals expected under {prefix}")


def test_twenty_held_requests_across_workers_each_get_their_own_decision(env: Env) -> None:
    with ExitStack() as stack, concurrent.futures.ThreadPoolExecutor(HELD) as pool:
        clients = [stack.enter_context(client(env, "alice")) for _ in range(HELD)]
        futures = [pool.submit(c.post, f"https://ai.api.test/hold/{i}", json={"i": i})
                   for i, c in enumerate(clients)]
        held = pending(env, HELD, "/hold/")
        owners = established_owners(env.proxy.port, all_pids(env.proxy))
        assert len(all_pids(env.proxy)) == 2
        assert all(owners[p] >= 1 for p in all_pids(env.proxy)), owners  # both hold some
        assert not [r for r in env.upstream.received if r.path.startswith("/hold/")]
        order = list(held)
        random.shuffle(order)
        with admin(env) as a:
            for x in order:
                i = int(str(x["path"]).rsplit("/", 1)[1])
                decision = "approve" if i % 3 else "deny"
                r = a.post(f"/v1/approvals/{x['id']}", json={"decision": decision})
                assert r.status_code == 200, r.text
        replies = [f.result(timeout=60) for f in futures]
    for i, r in enumerate(replies):
        if i % 3:
            assert r.status_code == 200, (i, r.text)
        else:
            assert (r.status_code, r.json()["error"]["code"]) == (403, "approval_denied")
    seen = sorted(int(r.path.rsplit("/", 1)[1]) for r in env.upstream.received
                  if r.path.startswith("/hold/"))
    assert seen == [i for i in range(HELD) if i % 3]  # each approved one exactly once
    decided = [r for r in env.proxy.audit() if r["event"] == "approval"
               and r["decision"] in ("approve", "deny")]
    assert len(decided) >= HELD and all(r["decided_by"] == "api" for r in decided)


def test_rate_limit_per_agent_across_workers(env: Env) -> None:
    for _ in range(6):  # rounds: one shared accept queue promises no spread, only a chance
        with ExitStack() as stack:
            clients = [stack.enter_context(client(env, "alice")) for _ in range(LIMIT + 1)]
            # open every connection first, all at once, so both processes hold some
            with concurrent.futures.ThreadPoolExecutor(LIMIT + 1) as pool:
                list(pool.map(lambda c: c.get("https://ai.api.test/warm"), clients))
            owners = established_owners(env.proxy.port, all_pids(env.proxy))
            if not all(owners[p] >= 1 for p in all_pids(env.proxy)):
                continue  # (the warm-ups count against no limit)
            replies = [c.get(f"https://lim.api.test/r/{i}") for i, c in enumerate(clients)]
            break
    else:
        pytest.fail(f"one process took every connection in 6 rounds: {owners}")
    assert [r.status_code for r in replies] == [200] * LIMIT + [429]
    last = replies[-1]
    assert last.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(last.headers["retry-after"]) <= 60 // LIMIT
    with client(env, "bob") as c:  # another agent has its own bucket
        assert c.get("https://lim.api.test/r/bob").status_code == 200


def _worker_owned_hold(env: Env, pool: concurrent.futures.Executor
                       ) -> tuple[httpx.Client, concurrent.futures.Future[httpx.Response],
                                  str, int]:
    """A held request whose connection a worker (not the supervisor) holds."""
    for attempt in range(20):
        c = client(env, "bob")
        path = f"/hold/crash-{attempt}"
        fut = pool.submit(c.post, f"https://ai.api.test{path}")
        (x,) = pending(env, 1, path)
        owners = established_owners(env.proxy.port, all_pids(env.proxy))
        worker = [p for p in all_pids(env.proxy)[1:] if owners[p]]
        if worker:
            return c, fut, str(x["id"]), worker[0]
        with admin(env) as a:
            a.post(f"/v1/approvals/{x['id']}", json={"decision": "deny"})
        fut.result(timeout=30)
        c.close()
    raise AssertionError("no held request landed on the worker")


def test_worker_crash_while_holding_loses_no_decision(env: Env) -> None:
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        c, fut, aid, pid = _worker_owned_hold(env, pool)
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(httpx.HTTPError):
            fut.result(timeout=30)  # its connection died with the worker
        c.close()
    with admin(env) as a:
        r = a.post(f"/v1/approvals/{aid}", json={"decision": "approve"})
    assert r.status_code == 200 and r.json()["grant_until"] is not None
    path = next(x["path"] for x in [r.json()])
    with client(env, "bob") as c2:  # the retry passes on the decision made meanwhile
        assert c2.post(f"https://ai.api.test{path}").status_code == 200
    assert sum(1 for r in env.upstream.received if r.path == path) == 1
