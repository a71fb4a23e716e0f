"""``GET /v1/audit/stream``: audit records live, as Server-Sent Events (one record per event).

The records come from ``audit.jsonl`` as it grows (audit/follow.py), so the stream carries
what every process of the run wrote (``--workers`` included), exactly as written: the same
fields as ``GET /v1/audit``, never a value. A comment line every ``KEEPALIVE`` seconds keeps
idle connections (and proxies in between) open and notices a client that went away.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from vaultproxy.admin.context import admin_context
from vaultproxy.audit.follow import Follower, matches

router = APIRouter()

POLL_SECONDS = 0.1
KEEPALIVE = 15.0


async def _events(request: Request, service: str | None, agent: str | None) -> AsyncIterator[str]:
    ctx = admin_context(request)
    st = ctx.live.require()
    with Follower(st.audit.path) as follower:
        yield ": vaultproxy audit stream\n\n"  # headers and a first byte out now
        quiet_since = time.monotonic()
        while not ctx.closing:
            sent = False
            for record in follower.records():
                if matches(record, service, agent):
                    yield f"event: audit\ndata: {_json(record)}\n\n"
                    sent = True
            now = time.monotonic()
            if sent:
                quiet_since = now
            elif now - quiet_since >= KEEPALIVE:
                yield ": keepalive\n\n"
                quiet_since = now
            if await request.is_disconnected():
                return
            await asyncio.sleep(POLL_SECONDS)


def _json(record: dict[str, object]) -> str:
    return json.dumps(record, separators=(",", ":"))


@router.get("/v1/audit/stream", response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}},
                             "description": "one `event: audit` per record, data = its JSON"}})
async def audit_stream(
    request: Request,
    service: str | None = Query(None, max_length=64),
    agent: str | None = Query(None, max_length=64),
) -> StreamingResponse:
    admin_context(request).live.require()  # 503 not_ready before any stream starts
    return StreamingResponse(
        _events(request, service, agent), media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
