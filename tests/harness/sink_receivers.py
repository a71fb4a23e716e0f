"""Real receivers for the audit sinks, started by the tests:

- :class:`Rsyslog`: Debian's ``/usr/sbin/rsyslogd`` with a config of the test's own (imudp
  and imtcp on loopback ports, imuxsock on a test socket path, omfile to a file), run in the
  foreground with its own pid file and work directory: nothing of the system's is touched.
- :class:`HttpReceiver`: a small HTTP server that keeps every POST (path, headers, body) and
  can misbehave on demand: ``mode`` "ok", "refuse" (500) or "slow" (sleeps before answering).
  The OTLP receiver decodes its bodies with ``opentelemetry-proto``; the webhook receiver
  checks the HMAC signature header.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from tests.harness.upstream import free_port

RSYSLOGD = "/usr/sbin/rsyslogd"
# What omfile writes per message: which input took it, then the RFC 5424 fields as rsyslog
# parsed them (so a message rsyslog could not parse as RFC 5424 shows as such), then MSG.
_TEMPLATE = "%inputname%|%protocol-version%|%pri%|%app-name%|%procid%|%msgid%|%msg%\\n"


@dataclass
class SyslogLine:
    input: str
    version: str
    pri: int
    app: str
    procid: str
    msgid: str
    msg: str


class Rsyslog:
    def __init__(self, base: Path) -> None:
        self.dir = base
        self.dir.mkdir(parents=True, exist_ok=True)
        self.out = self.dir / "out.log"
        self.socket = self.dir / "log.sock"
        self.pidfile = self.dir / "rsyslogd.pid"
        self.udp_port = free_port()
        self.tcp_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def config(self) -> str:
        return f"""
global(workDirectory="{self.dir}" maxMessageSize="64k")
module(load="imuxsock" SysSock.Use="off")
module(load="imudp")
module(load="imtcp")
input(type="imudp" address="127.0.0.1" port="{self.udp_port}")
input(type="imtcp" address="127.0.0.1" port="{self.tcp_port}")
input(type="imuxsock" Socket="{self.socket}" UseSpecialParser="off" ParseHostname="on"
      RateLimit.Interval="0")
template(name="fields" type="string" string="{_TEMPLATE}")
action(type="omfile" file="{self.out}" template="fields")
"""

    def start(self) -> Rsyslog:
        conf = self.dir / "rsyslog.conf"
        conf.write_text(self.config())
        log = open(self.dir / "rsyslogd.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [RSYSLOGD, "-n", "-f", str(conf), "-i", str(self.pidfile)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self._log = log
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("rsyslogd exited: "
                                     + (self.dir / "rsyslogd.log").read_text(errors="replace"))
            if self.socket.exists() and _listening(self.tcp_port):
                return self
            time.sleep(0.05)
        raise AssertionError("rsyslogd did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def lines(self) -> list[SyslogLine]:
        if not self.out.exists():
            return []
        out = []
        for raw in self.out.read_text(errors="replace").splitlines():
            parts = raw.split("|", 6)
            if len(parts) == 7:
                out.append(SyslogLine(parts[0], parts[1], int(parts[2]), parts[3], parts[4],
                                      parts[5], parts[6]))
        return out


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Post:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class HttpReceiver:
    mode: str = "ok"  # "ok", "refuse" (500), "slow" (sleep slow_seconds, then 200)
    slow_seconds: float = 30.0
    posts: list[Post] = field(default_factory=list)
    port: int = 0

    def start(self) -> HttpReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                mode = receiver.mode
                if mode == "slow":
                    time.sleep(receiver.slow_seconds)
                if mode == "refuse":
                    self._answer(500)
                    return
                receiver.posts.append(Post(self.path, {k.lower(): v for k, v in
                                                      self.headers.items()}, body))
                self._answer(200)

            def _answer(self, status: int) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        class Server(ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client that gave up on a slow answer (the point of "slow")

        self._server = Server(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def bodies(self, path: str) -> list[bytes]:
        return [p.body for p in list(self.posts) if p.path == path]


# -- OTLP decoding ----------------------------------------------------------------------------
def _value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    return None if kind is None else getattr(v, kind)


def otlp_logs(receiver: HttpReceiver) -> list[dict[str, Any]]:
    """Every log record received on /v1/logs: body, attributes, resource attributes."""
    out = []
    for body in receiver.bodies("/v1/logs"):
        req = ExportLogsServiceRequest()
        req.ParseFromString(body)
        for rl in req.resource_logs:
            resource = {a.key: _value(a.value) for a in rl.resource.attributes}
            for sl in rl.scope_logs:
                for lr in sl.log_records:
                    out.append({
                        "body": _value(lr.body),
                        "attributes": {a.key: _value(a.value) for a in lr.attributes},
                        "resource": resource, "scope": sl.scope.name,
                        "time": lr.time_unix_nano, "event_name": lr.event_name,
                    })
    return out


def otlp_spans(receiver: HttpReceiver) -> list[dict[str, Any]]:
    out = []
    for body in receiver.bodies("/v1/traces"):
        req = ExportTraceServiceRequest()
        req.ParseFromString(body)
        for rs in req.resource_spans:
            resource = {a.key: _value(a.value) for a in rs.resource.attributes}
            for ss in rs.scope_spans:
                for sp in ss.spans:
                    out.append({
                        "name": sp.name, "kind": sp.kind,
                        "attributes": {a.key: _value(a.value) for a in sp.attributes},
                        "resource": resource, "start": sp.start_time_unix_nano,
                        "end": sp.end_time_unix_nano, "trace_id": sp.trace_id.hex(),
                    })
    return out


# -- webhook verification ---------------------------------------------------------------------
_SIG = re.compile(r"^sha256=([0-9a-f]{64})$")


def signature_ok(post: Post, key: bytes) -> bool:
    """What a webhook receiver does: recompute the HMAC over the raw body, compare in
    constant time."""
    m = _SIG.match(post.headers.get("x-vaultproxy-signature", ""))
    if m is None:
        return False
    expected = hmac.new(key, post.body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, m.group(1))
