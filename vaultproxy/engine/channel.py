"""The supervisor <-> worker channel: framed messages over a private socketpair.

A frame is ``!II`` (header length, payload length), a JSON header, and an opaque payload.
The payload carries keystore plaintext (supervisor -> worker) or one audit line (worker ->
supervisor); it is read into a ``bytearray`` so the receiver can wipe it. Nothing here logs
a header or a payload.

Supervisor -> worker: ``init`` (home, confdir, listen, state), ``state`` (the whole state
again after any change), ``ping`` (answered by ``pong`` once everything before it is applied),
``stop`` (drain and exit).
Worker -> supervisor: ``ready``, ``pong``, ``audit`` (payload: one JSON line).
Minted tokens (engine/tokens.py): worker -> supervisor ``mint``, answered by ``minted``
(payload: the token and its headers).
"""

from __future__ import annotations

import asyncio
import json
import struct
from typing import Any

from vaultproxy.audit import AuditEvent, AuditLog

_PREFIX = struct.Struct("!II")
MAX_HEADER = 1 << 20
MAX_PAYLOAD = 64 << 20


class ChannelClosed(Exception):
    """The other end went away (or sent something that is not a frame)."""


def frame(header: dict[str, Any], payload: bytes | bytearray = b"") -> bytes:
    head = json.dumps(header, separators=(",", ":")).encode()
    return b"".join((_PREFIX.pack(len(head), len(payload)), head, payload))


async def read_frame(reader: asyncio.StreamReader) -> tuple[dict[str, Any], bytearray]:
    try:
        hlen, plen = _PREFIX.unpack(await reader.readexactly(_PREFIX.size))
        if hlen > MAX_HEADER or plen > MAX_PAYLOAD:
            raise ChannelClosed("oversized frame")
        header = json.loads(await reader.readexactly(hlen))
        payload = bytearray(await reader.readexactly(plen)) if plen else bytearray()
    except (asyncio.IncompleteReadError, ConnectionError, json.JSONDecodeError) as e:
        raise ChannelClosed(type(e).__name__) from None
    if not isinstance(header, dict) or not isinstance(header.get("op"), str):
        raise ChannelClosed("bad header")
    return header, payload


class ForwardingAudit(AuditLog):
    """A worker's audit sink: every record goes to the supervisor, the only file writer."""

    def __init__(self, writer: asyncio.StreamWriter, loop: asyncio.AbstractEventLoop) -> None:
        self._writer = writer
        self._loop = loop
        self._forwarded = 0

    def record(self, event: AuditEvent) -> None:
        try:
            data = frame({"op": "audit"}, event.to_json_line().encode())
        except Exception:  # noqa: BLE001 - auditing must never break the request path
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            self._send(data)
        else:
            self._loop.call_soon_threadsafe(self._send, data)

    def _send(self, data: bytes) -> None:
        if not self._writer.is_closing():
            self._writer.write(data)
            self._forwarded += 1

    @property
    def dropped(self) -> int:
        return 0

    @property
    def buffered(self) -> int:
        return 0

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    async def run_flusher(self, interval: float = 1.0) -> None:
        await asyncio.Event().wait()

    def tail(
        self, limit: int = 100, since: str | None = None, service: str | None = None
    ) -> list[dict[str, Any]]:
        raise RuntimeError("a worker has no audit file; the supervisor serves GET /v1/audit")
