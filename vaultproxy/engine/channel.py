"""The supervisor <-> worker channel: framed messages over a private socketpair.

A frame is ``!II`` (header length, payload length), a JSON header, and an opaque payload.
The payload carries keystore plaintext (supervisor -> worker) or a copy of one audit line
(worker -> supervisor); it is read into a ``bytearray`` so the receiver can wipe it. Nothing
here logs a header or a payload.

Supervisor -> worker: ``init`` (home, confdir, listen, ``listen_fd`` -- the shared listening
socket, inherited at spawn -- and the state), ``state`` (the whole state
again after any change), ``ping`` (answered by ``pong`` once everything before it is applied),
``stop`` (drain and exit).
Worker -> supervisor: ``ready``, ``pong`` (with the worker's audit counters), ``audit``
(``ok``: whether its write worked; payload: the JSON line the worker wrote to
``audit.jsonl``, for ``/metrics``, or none for a ``forward`` record, only counted),
``audit_state`` (its audit counters, when its audit health changes and at exit), ``busy``
(a connection after it said it had none) and ``idle`` (none, at start); every ``pong`` also
carries ``conns``, its connections (the heartbeat pings only a busy worker, engine/workers.py).
Minted tokens (engine/tokens.py): worker -> supervisor ``mint``, answered by ``minted``
(payload: the token and its headers).
Approvals and rate limits (engine/access_channel.py): worker -> supervisor ``access``,
answered by ``access_answer`` (no payload; no secret).
"""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import Callable
from typing import Any

_PREFIX = struct.Struct("!II")
MAX_HEADER = 1 << 20
MAX_PAYLOAD = 64 << 20


class ChannelClosed(Exception):
    """The other end went away (or sent something that is not a frame)."""


def frame(header: dict[str, Any], payload: bytes | bytearray = b"") -> bytes:
    head = json.dumps(header, separators=(",", ":")).encode()
    return b"".join((_PREFIX.pack(len(head), len(payload)), head, payload))


def frame_head(header: dict[str, Any]) -> Callable[[bytes | bytearray], bytes]:
    """``frame(header, payload)`` as a function of the payload, with the header encoded
    once (for a header sent many times)."""
    head = json.dumps(header, separators=(",", ":")).encode()
    size, pack = len(head), _PREFIX.pack

    def build(payload: bytes | bytearray) -> bytes:
        return b"".join((pack(size, len(payload)), head, payload))

    return build


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
