"""Minting against a failing token endpoint is bounded (mint/backoff.py):

- a *dead* endpoint (accepts TCP, closes at once): agents hammering the service for ~5 s
  all get ``502 token_unavailable``, and the endpoint sees a handful of attempts -- backoff
  with jitter -- not one per request (twin: the agents did send many more requests than
  that, and more than one attempt reached the endpoint: it is retried, not given up);
- a *hanging* endpoint (accepts TCP, never answers): the agent's wait is bounded by the
  mint bound (``response_timeout`` here, below the 30 s default), then ``502
  token_unavailable``; with ``--workers 2`` the same bound holds whichever process serves.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tests.canary import make_canary
from tests.harness.proxy import ProxyProcess
from tests.harness.upstream import Upstream
from tests.integration.conftest import agent_client
from tests.integration.test_admin import Quiet

pytestmark = pytest.mark.integration


class Endpoint:
    """A TCP listener that counts connections: ``dead`` closes each at once, ``hang``
    holds each open and silent."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.attempts = 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.sock.settimeout(0.2)
        self.held: list[socket.socket] = []
        self._stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.attempts += 1
            if self.mode == "dead":
                conn.close()
            else:
                self.held.append(conn)

    def stop(self) -> None:
        self._stop.set()
        for c in self.held:
            c.close()
        self.sock.close()


@pytest.fixture(scope="module")
def endpoints() -> Iterator[dict[str, Endpoint]]:
    eps = {m: Endpoint(m) for m in ("dead", "hang")}
    yield eps
    for e in eps.values():
        e.stop()


def block(name: str, upstream: Upstream, token_port: int) -> str:
    return (
        f'[[service]]\nname = "{name}"\nhosts = ["{name}.api.test"]\nmode = "host_inject"\n'
        f'auth = "oauth2_client_credentials"\nconnect_to = "127.0.0.1:{upstream.port}"\n'
        f'allow_loopback = true\nca_cert = "upstream-ca.pem"\n'
        f'token_url = "https://127.0.0.1:{token_port}/token"\n\n'
    )


@pytest.fixture(scope="module", params=[1, 2], ids=["one-process", "two-workers"])
def proxy(request, start_proxy, upstream: Upstream, endpoints) -> ProxyProcess:  # type: ignore[no-untyped-def]
    toml = "[proxy]\nresponse_timeout = 2\n\n" + block("dead", upstream, endpoints["dead"].port)
    toml += block("hang", upstream, endpoints["hang"].port)
    creds = {"client_id": "vp-test", "client_secret": make_canary()}
    return start_proxy(toml, Quiet({"dead": creds, "hang": dict(creds)}),  # type: ignore[no-any-return]
                       args=("--workers", str(request.param)))


def test_a_dead_token_endpoint_is_retried_with_backoff(proxy, endpoints, upstream) -> None:
    # (``upstream`` holds only what this module sent it: nothing, no token ever minted)  # type: ignore[no-untyped-def]
    dead = endpoints["dead"]
    before, seen = dead.attempts, len(upstream.received)
    codes: list[str] = []
    started = time.monotonic()
    with agent_client(proxy) as c:
        while time.monotonic() - started < 5.0:
            r = c.get("https://dead.api.test/x")
            codes.append(r.json()["error"]["code"])
            time.sleep(0.02)
    attempts = dead.attempts - before
    print(f"{len(codes)} requests in 5 s, {attempts} token attempts")
    assert set(codes) == {"token_unavailable"}
    assert len(upstream.received) == seen  # nothing forwarded without a token
    assert len(codes) >= 40  # twin: far more requests than attempts were made ...
    assert 2 <= attempts < 20  # ... and the endpoint is retried, with backoff


def test_a_hanging_token_endpoint_bounds_the_agents_wait(proxy, endpoints) -> None:  # type: ignore[no-untyped-def]
    hang = endpoints["hang"]
    before = hang.attempts
    started = time.monotonic()
    with agent_client(proxy) as c:
        r = c.get("https://hang.api.test/x")
    waited = time.monotonic() - started
    print(f"hanging endpoint: answered after {waited:.1f} s")
    assert r.status_code == 502 and r.json()["error"]["code"] == "token_unavailable"
    assert hang.attempts == before + 1  # the probe reached the endpoint and it hung
    assert 1.5 <= waited < 15  # bounded by response_timeout (2 s), not 60-120 s
    assert "did not answer within 2 s" in proxy.output()
