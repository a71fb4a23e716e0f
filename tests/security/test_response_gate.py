"""Threat: a hostile upstream, registered as an ordinary service, shapes its replies so the
credential the proxy injected reaches the agent some way the redactor does not look.

A raw-socket upstream (tests/harness/hostile.py) answers each path with exactly the bytes it
chooses, the injected credential placed in one part of the protocol: the reason phrase, a
101 to another protocol, malformed heads that mitmproxy's own error page would quote, odd
transfer codings, trailers, 1xx responses, an unknown content coding, WebSocket control
frames. Through the proxy (``vaultproxy run`` with 1 and 2 workers, and ``mitmdump -s``) the
agent gets no form of the secret, and every refusal is our JSON. The negative twin fetches
each path straight from the upstream and finds the secret in what it sends.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
import socket
import ssl
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import brotli  # type: ignore[import-untyped]
import pytest
import wsproto
import wsproto.events

from tests import canary
from tests.canary import make_canary
from tests.harness import agent
from tests.harness.hostile import HostileUpstream, Request
from tests.harness.proxy import ProxyHome, ProxyProcess
from tests.security.test_exfil_redaction import leaks

pytestmark = [pytest.mark.security, pytest.mark.integration]

HOST = "h.api.test"
Reply = Callable[[bytes], bytes]


def _send(make: Reply) -> Callable[[ssl.SSLSocket, Request], None]:
    def script(conn: ssl.SSLSocket, req: Request) -> None:
        conn.sendall(make(req.credential))
        conn.close()

    return script


def _chunked(body: bytes, trailer: bytes = b"") -> bytes:
    return b"%x\r\n%s\r\n0\r\n%s\r\n" % (len(body), body, trailer)


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
GARBAGE = b"trailing bytes after the end of the stream"
ENCODED = {"/gzip-trailing-garbage": b"gzip", "/br-trailing-garbage": b"br",
           "/gzip-trailing-garbage-streamed": b"gzip",
           "/gzip-valid": b"gzip", "/br-valid": b"br"}


def _encoded(coding: bytes, body: bytes) -> bytes:
    return (b"HTTP/1.1 200 OK\r\nContent-Encoding: " + coding
            + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)

# path -> (reply, expected status through the proxy, expected X-Vaultproxy-Error or None)
CASES: dict[str, tuple[Reply, int, str | None]] = {
    "/reason": (lambda c: b"HTTP/1.1 200 OK " + c + b"\r\nContent-Length: 2\r\n\r\nok", 200, None),
    "/reason-b64": (
        lambda c: b"HTTP/1.1 404 " + base64.b64encode(c) + b"\r\nContent-Length: 0\r\n\r\n",
        404,
        None,
    ),
    "/upgrade-unasked": (
        lambda c: b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: foo\r\n"
        b"Connection: upgrade\r\n\r\n" + c,
        502,
        "upgrade_refused",
    ),
    "/upgrade-websocket-unasked": (
        lambda c: b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
        b"Connection: upgrade\r\n\r\n" + c,
        502,
        "upgrade_refused",
    ),
    "/bad-status-line": (lambda c: b"HTTP/1.1 2x0 " + c + b"\r\n\r\n", 502, "upstream_protocol"),
    "/bad-version": (lambda c: b"HTTX/1.1 200 " + c + b"\r\n\r\n", 502, "upstream_protocol"),
    "/header-no-colon": (
        lambda c: b"HTTP/1.1 200 OK\r\n" + c + b"\r\nContent-Length: 0\r\n\r\n",
        502,
        "upstream_protocol",
    ),
    "/bad-content-length": (
        lambda c: b"HTTP/1.1 200 OK\r\nContent-Length: " + c + b"\r\n\r\n",
        502,
        "upstream_protocol",
    ),
    "/two-content-lengths": (
        lambda c: b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\nX-A: "
        + c + b"\r\n\r\nok",
        502,
        "upstream_protocol",
    ),
    "/bad-transfer-encoding": (
        lambda c: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: " + c + b"\r\n\r\n",
        502,
        "upstream_protocol",
    ),
    "/cl-and-te": (
        lambda c: b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n"
        b"X-A: " + c + b"\r\n\r\n" + _chunked(c),
        502,
        "upstream_protocol",
    ),
    "/head-cut-short": (lambda c: b"HTTP/1.1 200 OK\r\nX-A: " + c, 502, "upstream_protocol"),
    "/bad-chunk": (
        lambda c: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz" + c + b"\r\n",
        200,  # the head was fine and went out; the body is cut, never quoted
        None,
    ),
    "/gzip-chunked": (
        lambda c: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
        + _chunked(gzip.compress(c)),
        502,
        "upstream_protocol",
    ),
    "/te-identity": (
        lambda c: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\n\r\n" + c,
        502,
        "upstream_protocol",
    ),
    "/unknown-content-coding": (
        lambda c: b"HTTP/1.1 200 OK\r\nContent-Encoding: x-rot\r\nContent-Length: %d\r\n\r\n%s"
        % (len(c), c),
        502,
        "upstream_protocol",
    ),
    "/unknown-content-coding-chunked": (
        lambda c: b"HTTP/1.1 200 OK\r\nContent-Encoding: x-rot\r\nTransfer-Encoding: chunked"
        b"\r\n\r\n" + _chunked(c),
        502,
        "upstream_protocol",
    ),
    "/trailers": (
        lambda c: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n"
        + _chunked(b"ok", b"X-T: " + c + b"\r\n"),
        200,
        None,
    ),
    "/early-hints": (
        lambda c: b"HTTP/1.1 103 Early Hints " + c + b"\r\nLink: <" + c + b">\r\n\r\n" + OK,
        200,
        None,
    ),
    "/continue-then-hints": (
        lambda c: b"HTTP/1.1 100 Continue\r\nX-A: " + c + b"\r\n\r\n"
        b"HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: " + c + b"\r\n\r\n"
        + OK,
        200,
        None,
    ),
    "/obs-fold-reply": (  # refused like a folded request header: 502 upstream_protocol
        lambda c: b"HTTP/1.1 200 OK\r\nX-A: x\r\n " + c + b"\r\nContent-Length: 2\r\n\r\nok",
        502,
        "upstream_protocol",
    ),
    "/obs-fold-splits-the-secret": (
        lambda c: b"HTTP/1.1 200 OK\r\nX-A: " + c[:12] + b"\r\n\t" + c[12:]
        + b"\r\nContent-Length: 2\r\n\r\nok",
        502,
        "upstream_protocol",
    ),
    # A body that does not decode as its Content-Encoding says: 502, never 500 internal.
    "/gzip-trailing-garbage": (
        lambda c: _encoded(b"gzip", gzip.compress(b'{"k": "' + c + b'"}') + GARBAGE),
        502,
        "upstream_protocol",
    ),
    "/br-trailing-garbage": (
        lambda c: _encoded(b"br", brotli.compress(b'{"k": "' + c + b'"}') + GARBAGE),
        502,
        "upstream_protocol",
    ),
    "/gzip-corrupt": (
        lambda c: _encoded(b"gzip", b"\x1f\x8b\x08\x00" + c),
        502,
        "upstream_protocol",
    ),
    "/gzip-trailing-garbage-streamed": (  # the head went out: the connection is cut
        lambda c: b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nTransfer-Encoding: chunked"
        b"\r\n\r\n" + _chunked(gzip.compress(b'{"k": "' + c + b'"}') + GARBAGE),
        200,
        None,
    ),
    # Its twin: the same stream without the garbage passes, decoded and redacted.
    "/gzip-valid": (
        lambda c: _encoded(b"gzip", gzip.compress(b'{"k": "' + c + b'"}')), 200, None,
    ),
    "/br-valid": (
        lambda c: _encoded(b"br", brotli.compress(b'{"k": "' + c + b'"}')), 200, None,
    ),
}


FINAL_OK = ("/trailers", "/early-hints", "/continue-then-hints", "/reason")


def _expected_body(path: str) -> bytes | None:
    if path in ("/gzip-valid", "/br-valid"):
        return b'{"k": "__vault.h__"}'  # decoded, redacted, sent without Content-Encoding
    return b"ok" if path in FINAL_OK else None


# --- WebSocket -----------------------------------------------------------------------------


def _frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([n])
    elif n < 65536:
        head += bytes([126]) + struct.pack("!H", n)
    else:
        head += bytes([127]) + struct.pack("!Q", n)
    return head + payload


def _ws_accept(req: Request) -> bytes:
    key = (req.header("sec-websocket-key") or b"").strip()
    digest = hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest()  # noqa: S324
    return (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + base64.b64encode(digest) + b"\r\n\r\n"
    )


def _ws_script(conn: ssl.SSLSocket, req: Request) -> None:
    c = req.credential
    conn.sendall(
        _ws_accept(req)
        + _frame(0x9, c)  # ping carrying the secret
        + _frame(0xA, base64.b64encode(c))  # unsolicited pong, base64 form
        + _frame(0x1, b'{"k": "' + c + b'"}')  # a text message
        + _frame(0x2, c[:9], fin=False)  # a binary message split over a continuation
        + _frame(0x0, c[9:])
        + _frame(0x8, struct.pack("!H", 1000) + c)  # close, reason = the secret
    )
    time.sleep(0.5)
    conn.close()


SCRIPTS = {path: _send(reply) for path, (reply, _, _) in CASES.items()}
SCRIPTS["/ws"] = _ws_script


# --- proxies ---------------------------------------------------------------------------------


SERVICES = """
[[service]]
name = "h"
hosts = ["h.api.test"]
mode = "host_inject"
auth = "bearer"
connect_to = "127.0.0.1:{port}"
allow_loopback = true
ca_cert = "hostile-ca.pem"
"""


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostileUpstream]:
    up = HostileUpstream(tmp_path_factory.mktemp("hostile"), dict(SCRIPTS)).start()
    yield up
    up.stop()


@pytest.fixture(scope="module")
def secret() -> bytes:
    return make_canary().encode()


class _Proxy:
    def __init__(self, port: int, home: ProxyHome, stop: Callable[[], object]) -> None:
        self.port, self.home, self.stop = port, home, stop


@pytest.fixture(scope="module", params=["run-1-worker", "run-2-workers", "mitmdump"])
def proxy(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    hostile: HostileUpstream,
    secret: bytes,
) -> Iterator[_Proxy]:
    base = tmp_path_factory.mktemp("gate")
    canary.watch(base)
    home = ProxyHome.create(
        base,
        SERVICES.format(port=hostile.port),
        {"h": secret.decode()},
        files={"hostile-ca.pem": hostile.ca_file.read_bytes()},
    )
    if request.param == "mitmdump":
        from tests.integration.test_mitmdump import Mitmdump

        script = Path(__file__).resolve().parents[2] / "addons" / "vaultproxy.py"
        m = Mitmdump(home, script, base / "mitmdump.log")
        yield _Proxy(m.port, home, m.stop)
        m.stop()
        return
    workers = "1" if request.param == "run-1-worker" else "2"
    p = ProxyProcess.start(home, args=("--workers", workers))
    yield _Proxy(p.port, home, p.stop)
    p.stop()


def _get(port: int, ca: Path, path: str, via_proxy: bool, extra: bytes = b"") -> bytes:
    conn = (
        agent.tunnel(port, ca, HOST) if via_proxy else agent.direct(port, ca, "localhost")
    )
    return agent.exchange(
        conn, b"GET " + path.encode() + b" HTTP/1.1\r\nHost: " + HOST.encode()
        + b"\r\nConnection: close\r\n" + extra + b"\r\n",
        f"agent GET {path}",
    )


@pytest.mark.parametrize("path", sorted(CASES))
def test_no_form_of_the_secret_reaches_the_agent(
    proxy: _Proxy, hostile: HostileUpstream, secret: bytes, path: str
) -> None:
    _, status, code = CASES[path]
    before = len(hostile.received)
    reply = _get(proxy.port, proxy.home.ca_cert, path, via_proxy=True)
    assert len(hostile.received) > before, "the request never reached the hostile upstream"
    assert hostile.received[-1].credential == secret  # it was injected, then reflected
    assert not leaks(reply, secret), f"{path}: the secret reached the agent"
    assert agent.status_of(reply) == status, reply[:300]
    assert agent.header_of(reply, "x-vaultproxy-error") == code
    if code is not None:
        body = json.loads(reply.split(b"\r\n\r\n", 1)[1])
        assert body["error"]["code"] == code
        assert "mitmproxy" not in reply.decode("latin-1").lower()
    expected = _expected_body(path)
    if expected is not None:  # 1xx and trailers: the final response arrives, whole
        assert reply.endswith(expected) or b"\r\n" + expected + b"\r\n" in reply


@pytest.mark.parametrize("path", sorted(CASES))
def test_twin_the_upstream_sends_the_secret(
    hostile: HostileUpstream, secret: bytes, path: str
) -> None:
    """Straight from the upstream (as if the proxy had forwarded its bytes): the secret is
    there in every case, so the test above would see a leak that got through."""
    reply = agent.exchange(
        agent.direct(hostile.port, hostile.ca_file, "localhost"),
        b"GET " + path.encode() + b" HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer " + secret
        + b"\r\nConnection: close\r\n\r\n",
        None,  # a twin reads the secret straight from the upstream on purpose: no scan
    )
    if path == "/gzip-chunked":
        reply += gzip.decompress(reply.split(b"\r\n\r\n", 1)[1].split(b"\r\n")[1])
    body = reply.partition(b"\r\n\r\n")[2]
    if path.endswith("-streamed"):
        body = body.split(b"\r\n")[1]  # the one chunk
    if path in ENCODED:  # the stream the upstream sent decodes to the secret (up to the garbage)
        body = body.removesuffix(GARBAGE)
        reply += gzip.decompress(body) if ENCODED[path] == b"gzip" else brotli.decompress(body)
    if path == "/obs-fold-splits-the-secret":  # what a client that unfolds reads
        reply += reply.replace(b"\r\n\t", b"")
    if path == "/gzip-corrupt":
        reply += body[4:]
    assert leaks(reply, secret)


def test_websocket_control_frames_and_messages_are_redacted(
    proxy: _Proxy, secret: bytes
) -> None:
    events = _ws_events(agent.tunnel(proxy.port, proxy.home.ca_cert, HOST))
    kinds = [type(e).__name__ for e in events]
    assert kinds[:2] == ["Ping", "Pong"], kinds
    assert "CloseConnection" in kinds
    everything = b"".join(_ws_bytes(e) for e in events)
    assert not leaks(everything, secret)
    canary.scan_text("websocket frames", everything)
    ping = events[0]
    assert isinstance(ping, wsproto.events.Ping)
    assert b"__vault.h__" in bytes(ping.payload)  # redacted, not dropped
    close = next(e for e in events if isinstance(e, wsproto.events.CloseConnection))
    assert "__vault.h__" in close.reason


def test_twin_websocket_frames_carry_the_secret_directly(
    hostile: HostileUpstream, secret: bytes
) -> None:
    events = _ws_events(agent.direct(hostile.port, hostile.ca_file, "localhost"), secret)
    everything = b"".join(_ws_bytes(e) for e in events)
    assert secret in bytes(events[0].payload)  # type: ignore[attr-defined]
    assert leaks(everything, secret)


def _ws_events(
    conn: ssl.SSLSocket, direct_secret: bytes | None = None, target: str = "/ws"
) -> list[object]:
    """Every WebSocket event the agent's client reads, up to the close (a real wsproto
    client; ``direct_secret``: the twin, talking to the upstream as the proxy would)."""
    ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    extra = [(b"authorization", b"Bearer " + direct_secret)] if direct_secret else []
    conn.sendall(ws.send(wsproto.events.Request(host=HOST, target=target, extra_headers=extra)))
    out: list[object] = []
    conn.settimeout(10)
    while True:
        try:
            data = conn.recv(65536)
        except (TimeoutError, ssl.SSLError, ConnectionError):
            break
        ws.receive_data(data or None)
        for event in ws.events():
            if isinstance(event, wsproto.events.AcceptConnection | wsproto.events.RejectConnection):
                continue
            out.append(event)
            if isinstance(event, wsproto.events.CloseConnection):
                conn.close()
                return out
        if not data:
            break
    conn.close()
    return out


def _ws_bytes(event: object) -> bytes:
    if isinstance(event, wsproto.events.Ping | wsproto.events.Pong):
        return bytes(event.payload)
    if isinstance(event, wsproto.events.CloseConnection):
        return (event.reason or "").encode()
    if isinstance(event, wsproto.events.TextMessage):
        return event.data.encode()
    if isinstance(event, wsproto.events.BytesMessage):
        return bytes(event.data)
    return b""


# --- key logging --------------------------------------------------------------------------


def test_no_tls_key_log_whatever_the_environment(
    tmp_path: Path, hostile: HostileUpstream, secret: bytes
) -> None:
    keys = {name: tmp_path / f"{name}.txt" for name in ("SSLKEYLOGFILE", "MITMPROXY_SSLKEYLOGFILE")}
    home = ProxyHome.create(
        tmp_path, SERVICES.format(port=hostile.port), {"h": secret.decode()},
        files={"hostile-ca.pem": hostile.ca_file.read_bytes()},
    )
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: str(v) for k, v in keys.items()})
    try:
        p = ProxyProcess.start(home, args=("--workers", "2"))
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    try:
        reply = _get(p.port, home.ca_cert, "/plain", via_proxy=True)
        assert agent.status_of(reply) == 200
    finally:
        p.stop()
    assert not any(path.exists() for path in keys.values())


def test_twin_mitmproxy_honours_the_key_log_variable(tmp_path: Path) -> None:
    """Without our guard, importing mitmproxy with the variable set opens a key log."""
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import mitmproxy.net.tls as t; print(t.log_master_secret is not None)",
        ],
        env={**os.environ, "MITMPROXY_SSLKEYLOGFILE": str(tmp_path / "k.txt")},
        capture_output=True, text=True, timeout=60, check=True,
    )
    assert out.stdout.strip() == "True"


def _connect_answer(port: int) -> str:
    """What a CONNECT to the proxy on ``port`` gets: its status line, or how it failed."""
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    except ConnectionRefusedError:
        return "refused"
    with sock:
        try:
            sock.sendall(f"CONNECT {HOST}:443 HTTP/1.1\r\nHost: {HOST}:443\r\n\r\n".encode())
            head = b""
            while b"\r\n" not in head:
                data = sock.recv(4096)
                if not data:
                    return "closed"
                head += data
        except (ConnectionResetError, BrokenPipeError):
            return "reset"
    return head.split(b"\r\n", 1)[0].decode(errors="replace")


def test_mitmdump_with_a_key_log_refuses_traffic(
    tmp_path: Path, hostile: HostileUpstream, secret: bytes
) -> None:
    """mitmproxy is imported before our script, so it may already hold a key log: then the
    mitmdump path refuses traffic. Our SECURITY line is an ERROR logged while mitmdump
    starts, so mitmproxy's own errorcheck makes mitmdump exit (status 1); an agent that
    connects in the moment before gets ``503`` (not_ready) or a refused connection, never a
    forwarded request, and no TLS session is keyed. (Until 2026-12 this test expected a 503
    from a tunnel opened after start-up, which held only when the tunnel won the race with
    the exit.)"""
    from tests.integration.test_mitmdump import MITMDUMP

    keyfile = tmp_path / "keys.txt"
    home = ProxyHome.create(
        tmp_path, SERVICES.format(port=hostile.port), {"h": secret.decode()},
        files={"hostile-ca.pem": hostile.ca_file.read_bytes()},
    )
    script = Path(__file__).resolve().parents[2] / "addons" / "vaultproxy.py"
    log = tmp_path / "mitmdump.log"
    before = len(hostile.received)
    env = dict(os.environ, MITMPROXY_SSLKEYLOGFILE=str(keyfile), PYTHONUNBUFFERED="1")
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(MITMDUMP), "-s", str(script), "--mode", "regular@127.0.0.1:0",
             "--set", f"vaultproxy_home={home.path}",
             "--set", f"vaultproxy_password_file={home.password_file}",
             "--set", "vaultproxy_admin_listen=127.0.0.1:0",
             "--set", "vaultproxy_dashboard_listen="],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path,
        )
        answers: list[str] = []
        try:
            deadline = time.monotonic() + 60
            while proc.poll() is None and time.monotonic() < deadline:
                text = log.read_text(errors="replace")
                if "proxy listening at 127.0.0.1:" in text:
                    port = int(text.split("proxy listening at 127.0.0.1:", 1)[1].split(".")[0])
                    answers.append(_connect_answer(port))
                time.sleep(0.02)
            code = proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    output = log.read_text(errors="replace")
    assert code == 1, output
    assert "SECURITY: SSLKEYLOGFILE is set" in output
    assert "Error logged during startup, exiting" in output
    # each CONNECT in the moment before the exit: refused, reset, closed, or our 503
    assert all(a in ("refused", "reset", "closed") or a.startswith("HTTP/1.1 503")
               for a in answers), answers
    assert len(hostile.received) == before  # nothing was forwarded
    assert not keyfile.exists() or keyfile.read_bytes() == b""


def test_upstream_tls_failure_is_our_json(tmp_path: Path, hostile: HostileUpstream) -> None:
    """The upstream's certificate is not from the CA the service trusts: 502 upstream_tls,
    our JSON, and nothing (no credential) reached the upstream."""
    import trustme

    other = trustme.CA()
    home = ProxyHome.create(
        tmp_path, SERVICES.format(port=hostile.port).replace("hostile-ca.pem", "other-ca.pem"),
        {"h": make_canary()}, files={"other-ca.pem": other.cert_pem.bytes()},
    )
    before = len(hostile.received)
    p = ProxyProcess.start(home, args=("--workers", "1"))
    try:
        reply = _get(p.port, home.ca_cert, "/plain", via_proxy=True)
    finally:
        p.stop()
    assert agent.status_of(reply) == 502
    assert agent.header_of(reply, "x-vaultproxy-error") == "upstream_tls"
    assert b"mitmproxy" not in reply.lower()
    assert len(hostile.received) == before


def test_upgrade_the_agent_asked_for_is_still_refused_unless_websocket(
    proxy: _Proxy, hostile: HostileUpstream, secret: bytes
) -> None:
    """The agent asks for ``Upgrade: foo`` itself: the upstream's 101 is still refused (only
    WebSocket has a gate that reads its frames), nothing after it reaches the agent."""
    reply = _get(
        proxy.port, proxy.home.ca_cert, "/upgrade-unasked", via_proxy=True,
        extra=b"Upgrade: foo\r\nConnection: Upgrade\r\n",
    )
    assert agent.status_of(reply) == 502
    assert agent.header_of(reply, "x-vaultproxy-error") == "upgrade_refused"
    assert not leaks(reply, secret)
