"""The ``syslog`` sink: one RFC 5424 message per audit record, over ``unix:``, ``udp://`` or
``tcp://`` (octet-counted framing, RFC 6587 §3.4.1).

    <109>1 2026-11-23T12:00:00.123Z host vaultproxy 4242 request - {"ts":...,"event":...}

PRI is facility 13 ("log audit") with severity 5 (notice) for a refused request or an alert
(``honeytoken``), else 6 (informational). APP-NAME ``vaultproxy``; PROCID the pid of the
process that made the record (a ``--workers`` process's own pid, so a receiver can follow
each process's records in order); MSGID the record's ``event``; no structured data (``-``);
MSG the record exactly as in ``audit.jsonl``: one JSON object, ASCII only. JSON rather than
SD-PARAMs because the record is already JSON, SIEMs parse it without a custom extractor, and
it keeps types (``null``, numbers) and any field a newer record carries, where SD-PARAM
values are untyped strings that need their own escaping.

The address is resolved and judged by the egress policy (``[audit] allow_loopback`` /
``allow_private``) at every connect; the checked address is the one dialled.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence

from vaultproxy.errors import VaultproxyError
from vaultproxy.net.egress import AddressContext
from vaultproxy.net.resolve import resolve_checked
from vaultproxy.sinks.record import Record
from vaultproxy.sinks.sender import SinkFailed

FACILITY_AUDIT = 13
NOTICE, INFO = 5, 6
SEND_TIMEOUT = 5.0
MAX_UDP = 65_000  # a bigger datagram is refused by the kernel; records are far smaller
_REFUSED_OUTCOMES = frozenset({"denied", "refused", "blocked"})


def severity(record: dict[str, object]) -> int:
    if record.get("event") == "honeytoken" or record.get("outcome") in _REFUSED_OUTCOMES:
        return NOTICE
    return INFO


def format_message(rec: Record, hostname: str) -> bytes:
    """The RFC 5424 message for one record (no framing)."""
    data = rec.fields()
    event = str(data.get("event") or "-")
    msgid = "".join(c for c in event if 33 <= ord(c) <= 126)[:32] or "-"
    ts = str(data.get("ts") or "-")
    pri = FACILITY_AUDIT * 8 + severity(data)
    header = f"<{pri}>1 {ts} {hostname or '-'} vaultproxy {rec.pid} {msgid} - "
    return header.encode("ascii", "replace") + rec.line.encode("utf-8")


def octet_counted(message: bytes) -> bytes:
    """RFC 6587 octet-counting frame: ``LEN SP MSG``."""
    return str(len(message)).encode() + b" " + message


class SyslogSink:
    """Sends batches of records; reconnects (with the egress check) after any failure."""

    def __init__(self, scheme: str, host: str, port: int, ctx: AddressContext) -> None:
        self.scheme, self.host, self.port, self.ctx = scheme, host, port, ctx
        self.hostname = socket.gethostname().split(".")[0]
        self._sock: socket.socket | None = None

    @property
    def endpoint(self) -> str:
        return f"unix:{self.host}" if self.scheme == "unix" else f"{self.scheme}://{self.host}"

    async def send(self, batch: Sequence[Record]) -> None:
        messages = [format_message(r, self.hostname) for r in batch]
        try:
            sock = self._sock or await self._connect()
            self._sock = sock
            if self.scheme == "tcp":
                sock.sendall(b"".join(octet_counted(m) for m in messages))
            else:
                for m in messages:
                    sock.send(m[:MAX_UDP])
        except OSError as e:
            self._drop_socket()
            raise SinkFailed(f"{self.endpoint}: {type(e).__name__}") from None

    async def _connect(self) -> socket.socket:
        if self.scheme == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.settimeout(SEND_TIMEOUT)
            try:
                sock.connect(self.host)
            except OSError:
                sock.close()
                raise
            return sock
        try:
            ip, port = await resolve_checked(self.host, self.port, self.ctx, _udp_or_tcp)
        except VaultproxyError as e:
            raise SinkFailed(f"{self.endpoint}: {e}") from None
        family = socket.AF_INET6 if ":" in ip else socket.AF_INET
        kind = socket.SOCK_STREAM if self.scheme == "tcp" else socket.SOCK_DGRAM
        sock = socket.socket(family, kind)
        sock.settimeout(SEND_TIMEOUT)
        try:
            sock.connect((ip, port))
        except OSError:
            sock.close()
            raise
        return sock

    def _drop_socket(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def close(self) -> None:
        self._drop_socket()


async def _udp_or_tcp(host: str, port: int) -> list[str]:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port)
    return list(dict.fromkeys(str(sockaddr[0]) for *_, sockaddr in infos))
