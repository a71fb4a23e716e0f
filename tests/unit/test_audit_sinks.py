"""Audit sinks without a proxy (SPEC §13): ``[audit] sinks`` / ``[telemetry]`` validation, the
RFC 5424 message and RFC 6587 framing, the sender's batching, bounded queue (oldest dropped),
retry order and degraded state, the webhook signature, the OTLP conversions, and the egress
check of an OTLP endpoint. The receivers these talk to are real sockets and servers."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import socket
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import certifi
import pytest

from tests.harness.sink_receivers import HttpReceiver
from tests.unit.test_config_load import ok, problems
from vaultproxy.audit import AuditEvent, AuditLog
from vaultproxy.net.egress import AddressContext
from vaultproxy.secret import Secret
from vaultproxy.sinks.egress import EgressDenied, check_url
from vaultproxy.sinks.hub import SinkHub
from vaultproxy.sinks.otlp import log_record, resource, span_of
from vaultproxy.sinks.record import Record
from vaultproxy.sinks.sender import Sender, SinkFailed
from vaultproxy.sinks.syslog import SyslogSink, format_message, octet_counted
from vaultproxy.sinks.webhook import SIGNATURE_HEADER, WebhookSink, body_of, signature

LOOPBACK = AddressContext(allow_loopback=True)


def line(i: int, event: str = "request", **kw: object) -> str:
    ev = AuditEvent(event=event, service="svc", agent="bot", method="GET", host="svc.test",
                    path=f"/items/{i}?q=x", status=200, duration_ms=12.5, outcome="injected",
                    **kw)  # type: ignore[arg-type]
    return ev.to_json_line()


# -- config ---------------------------------------------------------------------------------
def test_defaults_have_no_sinks_and_no_traces() -> None:
    cfg = ok("")
    assert cfg.audit.sinks == () and cfg.telemetry.traces is False
    assert cfg.audit.syslog == "unix:/dev/log"


def test_a_full_sinks_table_is_accepted() -> None:
    cfg = ok('[audit]\nsinks = ["syslog", "webhook", "otlp", "stdout"]\n'
             'syslog = "udp://127.0.0.1:514"\nwebhook_url = "http://127.0.0.1:8080/hook"\n'
             "allow_loopback = true\n[telemetry]\ntraces = true\n")
    assert cfg.audit.sinks == ("syslog", "webhook", "otlp", "stdout")
    assert cfg.telemetry.traces is True


@pytest.mark.parametrize(("text", "where", "says"), [
    ('sinks = ["kafka"]', "audit.sinks[0]", "must be one of"),
    ('sinks = ["stdout", "stdout"]', "audit.sinks[1]", "listed twice"),
    ('sinks = ["webhook"]', "audit.webhook_url", "is required"),
    ('syslog = "udp://h"', "audit.syslog", "udp://HOST:PORT"),
    ('syslog = "unix:dev/log"', "audit.syslog", "absolute"),
    ('syslog = "http://h:514"', "audit.syslog", "must be unix:"),
    ('webhook_url = "http://siem.example/x"', "audit.webhook_url", "loopback"),
    ('webhook_url = "ftp://siem.example/x"', "audit.webhook_url", "https://"),
    ('sinks = ["webhook"]\nwebhook_url = "http://127.0.0.1:9/x"', "audit.webhook_url",
     "allow_loopback"),
    ('sinks = ["syslog"]\nsyslog = "udp://10.0.0.5:514"', "audit.syslog", "allow_private"),
    ('sinks = ["syslog"]\nsyslog = "udp://169.254.169.254:514"\nallow_private = true\n'
     "allow_loopback = true", "audit.syslog", "metadata"),
    ('allow_loopback = "yes"', "audit.allow_loopback", "true or false"),
])
def test_bad_sink_settings_name_the_field_and_the_fix(text: str, where: str, says: str) -> None:
    found = problems(f"[audit]\n{text}\n")
    assert any(p.startswith(where + ":") and says in p for p in found), found


def test_private_syslog_is_allowed_with_allow_private() -> None:
    cfg = ok('[audit]\nsinks = ["syslog"]\nsyslog = "udp://10.0.0.5:514"\nallow_private = true\n')
    assert cfg.audit.allow_private


def test_telemetry_takes_a_bool_only() -> None:
    assert any(p.startswith("telemetry.traces") for p in problems('[telemetry]\ntraces = 1\n'))
    assert any(p.startswith("telemetry.spans") for p in problems('[telemetry]\nspans = true\n'))


# -- syslog format --------------------------------------------------------------------------
RFC5424 = re.compile(
    r"^<(\d{1,3})>1 (\S+) (\S+) vaultproxy (\d+) (\S+) - (\{.*\})$")


def test_one_record_is_one_rfc5424_message_with_the_json_line_as_msg() -> None:
    text = line(1)
    msg = format_message(Record.of(text, 4242), "host1").decode()
    m = RFC5424.match(msg)
    assert m is not None, msg
    pri, ts, host, pid, msgid, body = m.groups()
    assert int(pri) == 13 * 8 + 6  # facility "log audit", informational
    assert (ts, host, pid, msgid) == (json.loads(text)["ts"], "host1", "4242", "request")
    assert body == text.rstrip("\n")


def test_a_refusal_is_a_notice() -> None:
    ev = AuditEvent(event="request", outcome="denied", reason="request_denied")
    msg = format_message(Record.of(ev.to_json_line(), 1), "h").decode()
    assert msg.startswith(f"<{13 * 8 + 5}>1 ")


def test_octet_counting_frames_each_message_by_its_byte_length() -> None:
    assert octet_counted("é".encode()) == b"2 \xc3\xa9"


def test_syslog_sink_sends_over_tcp_with_octet_counting() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    got = bytearray()

    def accept() -> None:
        conn, _ = server.accept()
        with conn:
            while chunk := conn.recv(65536):
                got.extend(chunk)

    t = threading.Thread(target=accept)
    t.start()
    sink = SyslogSink("tcp", "127.0.0.1", port, LOOPBACK)
    batch = [Record.of(line(i), 7) for i in range(3)]
    asyncio.run(_send_and_close(sink, batch))
    t.join(5)
    server.close()
    frames = []
    rest = bytes(got)
    while rest:
        size, _, rest = rest.partition(b" ")
        frames.append(rest[: int(size)])
        rest = rest[int(size):]
    assert [RFC5424.match(f.decode()).group(6) for f in frames] == [  # type: ignore[union-attr]
        r.line for r in batch]


async def _send_and_close(sink: SyslogSink, batch: list[Record]) -> None:
    await sink.send(batch)
    await sink.close()


def test_syslog_sink_refuses_loopback_without_allow_loopback() -> None:
    sink = SyslogSink("udp", "127.0.0.1", 514, AddressContext())
    with pytest.raises(SinkFailed, match="loopback"):
        asyncio.run(sink.send([Record.of(line(1), 1)]))


# -- the sender -----------------------------------------------------------------------------
class Collect:
    """A sink that keeps what it is sent; ``fail`` makes sends raise."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.fail = False
        self.attempts = 0

    async def send(self, batch: Sequence[int]) -> None:
        self.attempts += 1
        if self.fail:
            raise SinkFailed("test receiver down")
        self.batches.append(list(batch))


def wait_for(cond: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return
        time.sleep(0.01)
    raise AssertionError("condition not met in time")


def test_batches_hold_at_most_50_records_and_keep_order() -> None:
    sink = Collect()
    s = Sender("t", sink.send, batch_seconds=0.05)
    for i in range(120):
        s.offer(i)
    s.start()
    wait_for(lambda: s.stats()["sent"] == 120)
    s.stop()
    assert all(len(b) <= 50 for b in sink.batches)
    assert [i for b in sink.batches for i in b] == list(range(120))


def test_a_lone_record_goes_out_after_the_batch_window() -> None:
    sink = Collect()
    s = Sender("t", sink.send, batch_seconds=0.2)
    s.start()
    started = time.monotonic()
    s.offer(1)
    wait_for(lambda: sink.batches)
    assert 0.15 <= time.monotonic() - started < 2.0
    s.stop()


def test_offer_never_blocks_on_a_stuck_sink() -> None:
    release = threading.Event()

    async def stuck(batch: Sequence[int]) -> None:
        await asyncio.to_thread(release.wait, 10)

    s = Sender("t", stuck, capacity=100, batch_seconds=0.01)
    s.start()
    started = time.monotonic()
    for i in range(10_000):
        s.offer(i)
    assert time.monotonic() - started < 1.0
    assert s.stats()["queued"] <= 100 and s.stats()["dropped"] >= 10_000 - 100 - 50
    release.set()
    s.stop()


def test_stopping_counts_what_could_not_be_sent_as_dropped() -> None:
    release = threading.Event()
    started = threading.Event()

    async def stuck(batch: Sequence[int]) -> None:
        started.set()
        await asyncio.to_thread(release.wait, 10)

    s = Sender("t", stuck, batch_seconds=0.01)
    s.start()
    for i in range(3):
        s.offer(i)
    assert started.wait(5)
    s.offer(3)
    s.offer(4)
    s.stop(timeout=0.2)
    release.set()
    st = s.stats()
    assert st["sent"] == 0 and st["dropped"] == 5 and st["queued"] == 0


def test_a_full_queue_drops_the_oldest_and_counts_them() -> None:
    sink = Collect()
    sink.fail = True
    s = Sender("t", sink.send, capacity=10, batch_seconds=0.01, backoff_max=0.05)
    s.start()
    for i in range(30):
        s.offer(i)
    wait_for(lambda: sink.attempts >= 2)
    sink.fail = False
    wait_for(lambda: s.stats()["queued"] == 0 and s.stats()["sent"] > 0)
    st = s.stats()
    s.stop()
    delivered = [i for b in sink.batches for i in b]
    assert delivered == sorted(delivered)  # retried before anything newer, in order
    assert delivered[-1] == 29  # the newest survive
    assert st["dropped"] == 30 - len(delivered) > 0
    assert st["retried"] > 0


def test_health_is_degraded_only_after_failing_longer_than_the_limit() -> None:
    sink = Collect()
    sink.fail = True
    s = Sender("webhook", sink.send, batch_seconds=0.01, backoff_max=0.05, degraded_after=0.3)
    s.start()
    s.offer(1)
    wait_for(lambda: sink.attempts >= 1)
    assert s.problem() is None  # failing, but not yet for long
    wait_for(lambda: s.problem() is not None, timeout=3)
    problem = s.problem()
    assert problem is not None and "webhook" in problem and "test receiver down" in problem
    sink.fail = False
    wait_for(lambda: s.problem() is None, timeout=3)
    s.stop()


def test_the_audit_log_taps_every_written_record_once(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    got: list[str] = []
    log.add_tap(got.append)
    log.record(AuditEvent(event="request", outcome="injected"))
    log.ahead(AuditEvent(event="forward", outcome="forwarding"))
    assert [json.loads(x)["event"] for x in got] == ["request", "forward"]
    assert got == (tmp_path / "audit.jsonl").read_text().splitlines(keepends=True)


def test_a_broken_sink_never_breaks_the_audit_log(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")

    def boom(_: str) -> None:
        raise RuntimeError("sink down")

    log.add_tap(boom)
    assert log.record(AuditEvent(event="request", outcome="injected")) is True
    hub = SinkHub([])
    hub.offer("not json")  # forwarded verbatim to no one; never raises


# -- webhook --------------------------------------------------------------------------------
def test_the_webhook_posts_a_signed_json_array_of_the_records() -> None:
    rx = HttpReceiver().start()
    key = b"k" * 32
    try:
        hook = WebhookSink(f"{rx.url}/hook?src=vp", LOOPBACK, Path(certifi.where()),
                           lambda: Secret(key))
        batch = [Record.of(line(i), 1) for i in range(3)]
        asyncio.run(_post(hook, batch))
        (post,) = rx.posts
        assert post.path == "/hook?src=vp"
        assert json.loads(post.body) == [json.loads(r.line) for r in batch]
        assert post.body == body_of(batch)
        expected = hmac.new(key, post.body, hashlib.sha256).hexdigest()
        assert post.headers[SIGNATURE_HEADER.lower()] == f"sha256={expected}"
        assert signature(b"wrong" * 8, post.body) != post.headers[SIGNATURE_HEADER.lower()]
        rx.mode = "refuse"
        with pytest.raises(SinkFailed, match="answered 500"):
            asyncio.run(_post(hook, batch))
    finally:
        rx.stop()


async def _post(hook: WebhookSink, batch: list[Record]) -> None:
    try:
        await hook.send(batch)
    finally:
        await hook.close()


def test_the_webhook_is_refused_by_the_egress_policy() -> None:
    hook = WebhookSink("http://127.0.0.1:9/x", AddressContext(), Path(certifi.where()),
                       lambda: Secret(b"k"))
    with pytest.raises(SinkFailed, match="loopback"):
        asyncio.run(_post(hook, [Record.of(line(1), 1)]))


# -- OTLP conversions and egress ------------------------------------------------------------
def test_a_log_record_carries_the_line_and_its_fields() -> None:
    text = line(3)
    rec = log_record(Record.of(text, 99), resource())
    assert rec.log_record.body == text.rstrip("\n")
    attrs = dict(rec.log_record.attributes or {})
    assert attrs["vaultproxy.service"] == "svc" and attrs["vaultproxy.status"] == 200
    assert attrs["process.pid"] == 99 and attrs["vaultproxy.path"] == "/items/3"
    assert rec.resource.attributes["service.name"] == "vaultproxy"


def test_a_span_has_the_request_facts_and_no_path_host_or_query() -> None:
    span = span_of(Record.of(line(4), 5), resource())
    assert span is not None
    attrs = dict(span.attributes or {})
    assert attrs["vaultproxy.service"] == "svc" and attrs["vaultproxy.agent"] == "bot"
    assert attrs["http.request.method"] == "GET" and attrs["http.response.status_code"] == 200
    assert attrs["vaultproxy.outcome"] == "injected"
    assert span.end_time - span.start_time == 12_500_000  # type: ignore[operator]
    assert not any("/items" in str(v) or "svc.test" in str(v) for v in attrs.values())
    assert span_of(Record.of(line(4, event="forward"), 5), resource()) is None


@pytest.mark.parametrize(("url", "ctx", "says"), [
    ("http://127.0.0.1:4318/v1/logs", AddressContext(), "loopback"),
    ("http://collector.example:4318/v1/logs", LOOPBACK, "plain http://"),
    ("http://localhost:4318/v1/logs", LOOPBACK, "plain http://"),
    ("https://localhost:4318/v1/logs", LOOPBACK, "localhost"),
    ("https://169.254.169.254/v1/logs", LOOPBACK, "metadata"),
    ("grpc://127.0.0.1:4317", LOOPBACK, "https://"),
])
def test_otlp_endpoints_obey_the_egress_policy(url: str, ctx: AddressContext, says: str) -> None:
    with pytest.raises(EgressDenied, match=says):
        check_url(url, ctx)


def test_a_loopback_otlp_endpoint_is_allowed_with_allow_loopback() -> None:
    check_url("http://127.0.0.1:4318/v1/logs", LOOPBACK)


# -- wiring: the running state's sinks ------------------------------------------------------
def test_sinks_follow_a_reload_and_the_webhook_key_follows_the_keystore(tmp_path: Path) -> None:
    from tests.canary import make_canary
    from tests.harness.proxy import PASSWORD, TEST_KDF, cheap_kdf_floor
    from vaultproxy.core.state import ProxyState
    from vaultproxy.engine.audit_sinks import AuditSinks
    from vaultproxy.files.home import Home
    from vaultproxy.keystore import Keystore

    home = Home(tmp_path / "home")
    home.create()
    ks = Keystore.create(home.keystore, Secret(PASSWORD), kdf=TEST_KDF)
    key = make_canary()
    ks.set_field("audit", "webhook", Secret(key))
    with cheap_kdf_floor():  # not a KDF test: no ~0.2 s Argon2id raise on save
        ks.save()
    st = ProxyState.from_text(home, '[audit]\nsinks = ["stdout"]\n')
    sinks = AuditSinks(st)
    sinks.start()
    try:
        assert sinks.hub is not None and [s.name for s in sinks.hub.all] == ["stdout"]
        assert st.audit.taps == [sinks.offer]
        with pytest.raises(SinkFailed, match="locked"):
            sinks._key()
        st.unlock_sync(Secret(PASSWORD))
        assert sinks._key().reveal() == key.encode()
        st.reload_text('[audit]\nsinks = ["stdout", "syslog"]\nsyslog = "unix:/nonexistent"\n'
                       "[telemetry]\ntraces = true\n")
        assert [s.name for s in sinks.hub.all] == ["stdout", "syslog", "traces"]
        st.reload_text("")
        assert sinks.hub is None
    finally:
        sinks.stop(timeout=0.5)
    assert st.audit.taps == []


def test_the_sinks_tap_is_there_exactly_while_a_hub_is(tmp_path: Path) -> None:
    """No ``[audit] sinks``: ``offer`` is not one of the audit log's taps (nothing is called
    per record); sinks configured at start or by a reload: every record written from then on
    reaches the hub once; sinks dropped by a reload: the tap goes with the hub."""
    from vaultproxy.core.state import ProxyState
    from vaultproxy.engine.audit_sinks import AuditSinks
    from vaultproxy.files.home import Home

    home = Home(tmp_path / "home")
    home.create()

    def spy(sinks: AuditSinks, got: list[str]) -> None:
        hub = sinks.hub
        assert hub is not None
        hub.offer = lambda line, pid=None: got.append(line)  # type: ignore[method-assign]

    def events(got: list[str]) -> list[str]:
        return [json.loads(x)["outcome"] for x in got]

    for first in ("", '[audit]\nsinks = ["stdout"]\n'):
        st = ProxyState.from_text(home, first)
        sinks = AuditSinks(st)
        sinks.start()
        got: list[str] = []
        try:
            if not first:
                assert st.audit.taps == []
                st.audit.record(AuditEvent(event="request", outcome="before"))
                st.reload_text('[audit]\nsinks = ["stdout"]\n')
            assert st.audit.taps == [sinks.offer]
            spy(sinks, got)
            st.audit.record(AuditEvent(event="request", outcome="one"))
            st.audit.ahead(AuditEvent(event="forward", outcome="two"))
            assert events(got) == ["one", "two"]
            st.reload_text('[audit]\nsinks = ["stdout"]\n[telemetry]\ntraces = true\n')
            assert st.audit.taps == [sinks.offer]
            spy(sinks, got)
            st.audit.record(AuditEvent(event="request", outcome="three"))
            assert events(got) == ["one", "two", "three"]
            st.reload_text("")
            assert sinks.hub is None and st.audit.taps == []
            st.audit.record(AuditEvent(event="request", outcome="after"))
            assert events(got) == ["one", "two", "three"]
        finally:
            sinks.stop(timeout=0.5)
        assert st.audit.taps == []


def test_other_taps_stay_when_the_sinks_tap_comes_and_goes(tmp_path: Path) -> None:
    from vaultproxy.core.state import ProxyState
    from vaultproxy.engine.audit_sinks import AuditSinks
    from vaultproxy.files.home import Home

    home = Home(tmp_path / "home")
    home.create()
    st = ProxyState.from_text(home, "")
    feed: list[str] = []
    st.audit.taps.append(feed.append)
    sinks = AuditSinks(st)
    sinks.start()
    try:
        assert st.audit.taps == [feed.append]
        st.reload_text('[audit]\nsinks = ["stdout"]\n')
        assert st.audit.taps == [feed.append, sinks.offer]
        st.reload_text("")
        assert st.audit.taps == [feed.append]
        st.audit.record(AuditEvent(event="request", outcome="x"))
        assert len(feed) == 1
    finally:
        sinks.stop(timeout=0.5)
    assert st.audit.taps == [feed.append]
