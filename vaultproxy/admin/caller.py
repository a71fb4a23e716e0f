"""Who is calling the admin API: ``X-Caller-Id`` when it is printable ASCII of at most 64
characters, else the peer (TCP: its IP; Unix socket: its uid, from SO_PEERCRED)."""

from __future__ import annotations

from collections.abc import Iterable

MAX_CALLER_ID = 64


def valid_caller_id(raw: bytes) -> bool:
    return 0 < len(raw) <= MAX_CALLER_ID and all(0x20 < b < 0x7F for b in raw)


def caller_of(headers: Iterable[tuple[bytes, bytes]], transport: str,
              client: tuple[str, int] | None) -> str:
    for name, value in headers:
        if name.lower() == b"x-caller-id":
            if valid_caller_id(value):
                return "id:" + value.decode("ascii")
            break
    if transport == "unix":
        return f"unix:uid={client[1]}" if client else "unix"
    return f"tcp:{client[0]}" if client else "tcp:unknown"
