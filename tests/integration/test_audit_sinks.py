"""Audit sinks and telemetry with real receivers (SPEC §13): a ``vaultproxy run --workers 2``
feeds rsyslog (Debian's rsyslogd, over UDP and over its Unix socket), an OTLP/HTTP receiver
that decodes the protobuf with ``opentelemetry-proto``, and a webhook receiver that checks
the HMAC; every record arrives once, parseable, in order per process; a canary secret (in the
credential, the query and a header) never reaches any sink. Faults: each receiver down, slow
and refusing under load: requests are answered, ``audit.jsonl`` keeps every record, drops
are counted in ``/metrics`` and ``/v1/health`` turns ``degraded``."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from tests import canary
from tests.harness.proxy import ProxyHome, ProxyProcess
from tests.harness.sink_receivers import (
    HttpReceiver,
    Rsyslog,
    otlp_logs,
    otlp_spans,
    signature_ok,
)
from tests.harness.upstream import Upstream, free_port
from tests.integration.conftest import agent_client, service_block
from tests.integration.test_admin import Quiet, tcp

pytestmark = pytest.mark.integration

N = 24  # requests per proxy in the delivery test (each on its own connection)


@pytest.fixture(scope="module")
def secrets() -> Quiet:
    return Quiet({"snk": canary.make_canary(), "hook_key": canary.make_canary(),
                  "query": canary.make_canary(), "header": canary.make_canary()})


@pytest.fixture(scope="module")
def rsyslog(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rsyslog]:
    # A short base path: a Unix socket path must fit in 108 bytes.
    r = Rsyslog(Path(tmp_path_factory.mktemp("rs"))).start()
    canary.watch(r.dir)
    yield r
    r.stop()


@pytest.fixture(scope="module")
def receiver() -> Iterator[HttpReceiver]:
    """One HTTP server for OTLP (/v1/logs, /v1/traces) and the webhook (/hook)."""
    rx = HttpReceiver().start()
    yield rx
    rx.stop()


def start_with_sinks(
    base: Path, upstream: Upstream, audit: str, secrets: Quiet, *, env: dict[str, str],
    args: tuple[str, ...] = (),
) -> ProxyProcess:
    toml = audit + service_block("snk", "host_inject", "bearer", upstream.port)
    base.mkdir(parents=True, exist_ok=True)
    home = ProxyHome.create(
        base, toml, {"snk": str(secrets["snk"]), "audit": {"webhook": str(secrets["hook_key"])}},
        files={"upstream-ca.pem": upstream.ca_file.read_bytes()},
    )
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        return ProxyProcess.start(home, args=args)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def audit_table(syslog: str, rx: HttpReceiver, sinks: str, traces: bool = True) -> str:
    return (f"[audit]\nsinks = [{sinks}]\nsyslog = \"{syslog}\"\n"
            f"webhook_url = \"{rx.url}/hook\"\nallow_loopback = true\n\n"
            f"[telemetry]\ntraces = {'true' if traces else 'false'}\n\n")


def otel_env(rx: HttpReceiver | str, timeout: str = "3") -> dict[str, str]:
    url = rx.url if isinstance(rx, HttpReceiver) else rx
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": url, "OTEL_EXPORTER_OTLP_TIMEOUT": timeout}


def wait_until(cond: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError("the sinks did not deliver in time")


def send_requests(proxy: ProxyProcess, secrets: Quiet, n: int, tag: str) -> list[int]:
    """``n`` requests, each on a fresh connection (so both processes serve some), with a
    canary in the query and in a header: neither may reach a sink."""
    statuses = []
    with ExitStack() as stack:
        for i in range(n):
            c = stack.enter_context(agent_client(proxy))
            r = c.get(f"https://snk.api.test/{tag}/{i}?key={secrets['query']}",
                      headers={"X-Probe": str(secrets["header"])})
            statuses.append(r.status_code)
    return statuses


def audit_lines(proxy: ProxyProcess) -> list[str]:
    return (proxy.home.path / "audit.jsonl").read_text().splitlines()


def webhook_records(rx: HttpReceiver) -> list[dict[str, Any]]:
    return [rec for body in rx.bodies("/hook") for rec in json.loads(body)]


@pytest.fixture(scope="module")
def delivered(tmp_path_factory: pytest.TempPathFactory, upstream: Upstream, secrets: Quiet,
              rsyslog: Rsyslog, receiver: HttpReceiver) -> dict[str, Any]:
    """Two proxies: one with ``--workers 2`` and syslog over UDP, one with syslog over the
    Unix socket; both with every sink and traces. Returns what each receiver got."""
    base = tmp_path_factory.mktemp("sinks")
    canary.watch(base)
    sinks = '"syslog", "webhook", "otlp", "stdout"'
    udp = start_with_sinks(base / "udp", upstream,
                           audit_table(f"udp://127.0.0.1:{rsyslog.udp_port}", receiver, sinks),
                           secrets, env=otel_env(receiver), args=("--workers", "2"))
    uds = None
    try:
        uds = start_with_sinks(base / "uds", upstream,
                               audit_table(f"unix:{rsyslog.socket}", receiver, sinks),
                               secrets, env=otel_env(receiver))
        statuses = send_requests(udp, secrets, N, "u") + send_requests(uds, secrets, N, "x")
        expected = len(audit_lines(udp)) + len(audit_lines(uds))
        wait_until(lambda: len(webhook_records(receiver)) >= expected
                   and len(otlp_logs(receiver)) >= expected
                   and len(rsyslog.lines()) >= expected
                   and len(otlp_spans(receiver)) >= 2 * N)
        time.sleep(1.5)  # anything extra (a duplicate) would arrive within a batch window
        workers = [int(p) for p in udp.extra["worker_pids"]]  # type: ignore[attr-defined]
        pids = {"udp": [int(udp.extra["pid"]), *workers],  # type: ignore[call-overload]
                "uds": [int(uds.extra["pid"])]}  # type: ignore[call-overload]
        with tcp(udp) as admin:
            metrics = admin.get("/metrics").text
            health = admin.get("/v1/health").json()
        return {"statuses": statuses, "udp": audit_lines(udp), "uds": audit_lines(uds),
                "pids": pids, "metrics": metrics, "health": health,
                "stdout": udp.output(), "syslog": rsyslog.lines(),
                "webhook": [p for p in receiver.posts if p.path == "/hook"],
                "logs": otlp_logs(receiver), "spans": otlp_spans(receiver)}
    finally:
        udp.stop()
        if uds is not None:
            uds.stop()


def test_requests_are_answered_and_audited(delivered: dict[str, Any]) -> None:
    assert delivered["statuses"] == [200] * (2 * N)
    for name in ("udp", "uds"):
        events = [json.loads(x)["event"] for x in delivered[name]]
        assert events.count("request") == N and events.count("forward") == N


def test_every_record_reaches_syslog_once_parseable_and_in_order_per_process(
        delivered: dict[str, Any]) -> None:
    lines = delivered["syslog"]
    for name, rsyslog_input in (("udp", "imudp"), ("uds", "imuxsock")):
        audit = delivered[name]
        got = [x for x in lines if x.input == rsyslog_input]
        assert sorted(x.msg for x in got) == sorted(audit)  # each record once, verbatim
        for x in got:  # rsyslog parsed an RFC 5424 header
            assert (x.version, x.app) == ("1", "vaultproxy") and x.pri == 13 * 8 + 6
            assert x.msgid == json.loads(x.msg)["event"]
        procs = {int(x.procid) for x in got}
        assert procs <= set(delivered["pids"][name])
        for pid in procs:  # each process's records in the order it wrote them
            order = [audit.index(x.msg) for x in got if int(x.procid) == pid]
            assert order == sorted(order)
    udp_procs = {int(x.procid) for x in lines if x.input == "imudp"}
    assert len(udp_procs) == 2, "both processes of --workers 2 fed the sink"


def test_every_record_reaches_the_webhook_once_signed(delivered: dict[str, Any],
                                                      secrets: Quiet) -> None:
    posts = delivered["webhook"]
    assert posts and all(len(json.loads(p.body)) <= 50 for p in posts)
    records = [r for p in posts for r in json.loads(p.body)]
    everything = delivered["udp"] + delivered["uds"]
    assert sorted(json.dumps(r, separators=(",", ":")) for r in records) == sorted(everything)
    key = str(secrets["hook_key"]).encode()
    assert all(signature_ok(p, key) for p in posts)
    # The receiver's check is real: a wrong key, or a changed body, is detected.
    assert not any(signature_ok(p, b"not-the-key") for p in posts)
    tampered = posts[0].__class__(posts[0].path, posts[0].headers, posts[0].body + b" ")
    assert not signature_ok(tampered, key)


def test_otlp_log_records_carry_the_record_and_the_resource(delivered: dict[str, Any]) -> None:
    logs = delivered["logs"]
    everything = delivered["udp"] + delivered["uds"]
    assert sorted(x["body"] for x in logs) == sorted(everything)
    for x in logs:
        assert x["resource"]["service.name"] == "vaultproxy"
        record = json.loads(x["body"])
        assert x["attributes"]["vaultproxy.event"] == record["event"]
        assert x["event_name"] == f"vaultproxy.audit.{record['event']}"
        if record["event"] == "request":
            assert x["attributes"]["vaultproxy.service"] == "snk"
            assert x["attributes"]["vaultproxy.status"] == 200
            assert "?" not in x["attributes"]["vaultproxy.path"]


def test_one_span_per_proxied_request(delivered: dict[str, Any]) -> None:
    spans = delivered["spans"]
    assert len(spans) == 2 * N
    assert len({s["trace_id"] for s in spans}) == 2 * N
    for s in spans:
        a = s["attributes"]
        assert s["resource"]["service.name"] == "vaultproxy"
        assert s["name"] == "GET snk"
        assert a["vaultproxy.service"] == "snk" and a["http.request.method"] == "GET"
        assert a["http.response.status_code"] == 200 and a["vaultproxy.outcome"] == "injected"
        assert a["vaultproxy.duration_ms"] >= 0 and s["end"] >= s["start"]
        assert not any("/u/" in str(v) or "/x/" in str(v) or "api.test" in str(v)
                       for v in a.values())


def test_stdout_gets_every_record_of_every_process(delivered: dict[str, Any]) -> None:
    out = set(delivered["stdout"].splitlines())
    assert set(delivered["udp"]) <= out


def test_metrics_count_what_each_sink_sent(delivered: dict[str, Any]) -> None:
    text = delivered["metrics"]
    n = len(delivered["udp"])
    for sink in ("syslog", "webhook", "otlp", "stdout"):
        assert f'vaultproxy_audit_sink_records_sent_total{{sink="{sink}"}} {float(n)}' in text
        assert f'vaultproxy_audit_sink_records_dropped_total{{sink="{sink}"}} 0.0' in text
    assert f'vaultproxy_audit_sink_records_sent_total{{sink="traces"}} {float(N)}' in text
    assert delivered["health"]["status"] == "ok"


def test_no_secret_reaches_any_sink(delivered: dict[str, Any], secrets: Quiet,
                                   upstream: Upstream) -> None:
    payloads = [p.body for p in delivered["webhook"]]
    payloads += [json.dumps(delivered[k]).encode() for k in ("logs", "spans")]
    payloads += [json.dumps([vars(x) for x in delivered["syslog"]]).encode()]
    blob = b"\n".join(payloads)
    for value in secrets.values():
        assert str(value).encode() not in blob
    canary.scan_text("audit sink payloads", blob)
    # The twin: the probe did carry each canary through the proxy (credential injected,
    # query and header forwarded), so a sink that copied the request would have shown them.
    seen = [r for r in upstream.received if r.path.startswith(("/u/", "/x/"))]
    assert seen and all(r.header("authorization") == f"Bearer {secrets['snk']}" for r in seen)
    assert all(str(secrets["query"]) in r.query for r in seen)
    assert all(r.header("x-probe") == str(secrets["header"]) for r in seen)


# -- faults ---------------------------------------------------------------------------------
RESET = b"\x01\x00\x00\x00\x00\x00\x00\x00"  # SO_LINGER on, 0 s: close() sends a RST


class TcpSink:
    """A TCP syslog receiver that misbehaves: "slow" accepts and never reads, "refuse"
    accepts and resets at once."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.held: list[socket.socket] = []
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            if self.mode == "slow":
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
                self.held.append(conn)
            else:
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET)
                conn.close()

    def close(self) -> None:
        self._stop = True
        self.server.close()
        for c in self.held:
            c.close()


FAULTS = [  # (webhook, otlp, syslog over tcp): each receiver down, slow and refusing once
    ("refuse", "slow", "down"),
    ("slow", "down", "slow"),
    ("down", "refuse", "refuse"),
]


@pytest.mark.slow
@pytest.mark.parametrize("faults", FAULTS, ids=["-".join(f) for f in FAULTS])
def test_failing_receivers_never_fail_a_request_and_drops_are_counted(
        tmp_path: Path, upstream: Upstream, secrets: Quiet, faults: tuple[str, str, str]) -> None:
    canary.watch(tmp_path)
    hook_mode, otlp_mode, syslog_mode = faults
    with ExitStack() as stack:
        hook = HttpReceiver(mode=hook_mode).start()
        otlp = HttpReceiver(mode=otlp_mode).start()
        stack.callback(hook.stop)
        stack.callback(otlp.stop)
        if syslog_mode == "down":
            syslog_port = free_port()
        else:
            tcp_sink = TcpSink(syslog_mode)
            stack.callback(tcp_sink.close)
            syslog_port = tcp_sink.port
        hook_url = f"http://127.0.0.1:{free_port() if hook_mode == 'down' else hook.port}"
        otlp_url = f"http://127.0.0.1:{free_port() if otlp_mode == 'down' else otlp.port}"
        table = (f'[audit]\nsinks = ["syslog", "webhook", "otlp"]\n'
                 f'syslog = "tcp://127.0.0.1:{syslog_port}"\nwebhook_url = "{hook_url}/hook"\n'
                 "allow_loopback = true\n\n[telemetry]\ntraces = true\n\n")
        env = {**otel_env(otlp_url, timeout="2"), "VAULTPROXY_SINK_CAPACITY": "20",
               "VAULTPROXY_SINK_DEGRADED_AFTER": "1"}
        proxy = start_with_sinks(tmp_path, upstream, table, secrets, env=env)
        stack.callback(proxy.stop)
        started = time.monotonic()
        with agent_client(proxy) as c:
            statuses = [c.get(f"https://snk.api.test/load/{i}").status_code for i in range(80)]
        elapsed = time.monotonic() - started
        assert statuses == [200] * 80
        assert elapsed < 30, f"80 requests took {elapsed:.1f} s"  # a hang, not a benchmark
        records = [json.loads(x) for x in audit_lines(proxy)]
        assert [r["event"] for r in records].count("request") == 80
        assert [r["event"] for r in records].count("forward") == 80

        def dropped() -> dict[str, float]:
            with tcp(proxy) as admin:
                text = admin.get("/metrics").text
            out = {}
            for row in text.splitlines():
                if row.startswith("vaultproxy_audit_sink_records_dropped_total{"):
                    name = row.split('"')[1]
                    out[name] = float(row.rsplit(" ", 1)[1])
            return out

        wait_until(lambda: all(dropped().get(s, 0) > 0 for s in ("syslog", "webhook", "otlp")),
                   timeout=15)
        # Named in /v1/health: every receiver that is down or refuses, but for TCP syslog
        # that "refuses" (accepts, then resets): plain TCP syslog has no acknowledgement, so
        # a write into the fresh connection succeeds and only the next one fails; the sink
        # alternates and is not failing *continuously* (its drops are counted above).
        fast = [name for name, mode in zip(("webhook", "otlp", "syslog"), faults, strict=True)
                if mode == "down" or (mode == "refuse" and name != "syslog")]

        def degraded() -> bool:
            with tcp(proxy) as admin:
                health = admin.get("/v1/health").json()
            text = " ".join(health.get("problems") or [])
            return health["status"] == "degraded" and all(f"sink {n} " in text for n in fast)

        wait_until(degraded, timeout=15)
        if hook_mode != "down":
            for p in hook.posts:  # anything that did arrive is still verifiable
                assert signature_ok(p, str(secrets["hook_key"]).encode())


def test_the_mitmdump_path_feeds_the_sinks_too(tmp_path: Path, upstream: Upstream,
                                               secrets: Quiet) -> None:
    """``mitmdump -s addons/vaultproxy.py`` starts the same sinks as ``vaultproxy run``."""
    import shutil

    from tests.harness.proxy import REPO
    from tests.integration.test_mitmdump import Mitmdump, _client

    canary.watch(tmp_path)
    rx = HttpReceiver().start()
    try:
        table = (f'[audit]\nsinks = ["webhook"]\nwebhook_url = "{rx.url}/hook"\n'
                 "allow_loopback = true\n\n")
        toml = table + service_block("snk", "host_inject", "bearer", upstream.port)
        home = ProxyHome.create(
            tmp_path, toml, {"snk": str(secrets["snk"]),
                             "audit": {"webhook": str(secrets["hook_key"])}},
            files={"upstream-ca.pem": upstream.ca_file.read_bytes()})
        script = tmp_path / "vaultproxy.py"
        shutil.copy(REPO / "addons" / "vaultproxy.py", script)
        md = Mitmdump(home, script, tmp_path / "mitmdump.log")
        try:
            with _client(md, home) as c:
                assert c.get("https://snk.api.test/md/1").status_code == 200
            wait_until(lambda: any(r["path"] == "/md/1" for r in webhook_records(rx)))
        finally:
            md.stop()
        assert all(signature_ok(p, str(secrets["hook_key"]).encode()) for p in rx.posts)
    finally:
        rx.stop()


def test_syslog_over_tcp_reaches_rsyslog_octet_counted_and_in_order(rsyslog: Rsyslog) -> None:
    """The TCP transport against rsyslog's imtcp (RFC 6587 octet counting): every message
    parsed as RFC 5424, none split or merged, in order."""
    import asyncio

    from vaultproxy.audit import AuditEvent
    from vaultproxy.net.egress import AddressContext
    from vaultproxy.sinks.record import Record
    from vaultproxy.sinks.syslog import SyslogSink

    sink = SyslogSink("tcp", "127.0.0.1", rsyslog.tcp_port, AddressContext(allow_loopback=True))
    lines = [AuditEvent(event="request", service="tcp", path=f"/t/{i}", outcome="injected",
                        reason="x" * (i % 7) + "\u00e9").to_json_line() for i in range(120)]

    async def send() -> None:
        for start in range(0, len(lines), 50):
            await sink.send([Record.of(x, 4321) for x in lines[start:start + 50]])
        await sink.close()

    asyncio.run(send())
    wait_until(lambda: sum(1 for x in rsyslog.lines() if x.input == "imtcp") >= len(lines))
    got = [x for x in rsyslog.lines() if x.input == "imtcp"]
    assert [x.msg for x in got] == [x.rstrip("\n") for x in lines]
    assert all((x.version, x.app, x.procid, x.msgid) == ("1", "vaultproxy", "4321", "request")
               for x in got)
