"""The lean layer's hook job (seam/lean.py ``_Job._request``: ``_hook`` and ``_respond``
inline, ``_killed`` asked only when the flow has an error or an event came for the paused
layer) makes the same hook calls, in the same order, with the same outcome, error and flow
state as the job it replaced (kept here as the reference, ``_Reference``), on seeded stage
behaviours: kills, the agent gone, a stage's own response, no exchange, upstream errors,
invalid response heads, bodies read with the head or in chunks, a streamed response,
intercepts."""

from __future__ import annotations

import asyncio
import collections
import random
import time
from types import SimpleNamespace
from typing import Any

import pytest
from mitmproxy import connection, http
from mitmproxy import flow as mflow
from mitmproxy.proxy import events
from mitmproxy.proxy.layers import http as layers_http
from mitmproxy.test import tflow

from vaultproxy.seam import lean
from vaultproxy.seam.lean import ERROR, KILL, SEND, STREAM, check_headers
from vaultproxy.seam.pool import POOLED, PoolChunkHook, PoolExchangeHook

lhttp: Any = layers_http
_ = (check_headers, time)  # (what the reference's code names)


class _Reference(lean._Job):
    """The job as it was (``_request`` and ``_respond`` as they were)."""

    async def _request(self) -> str:
        flow, addons = self.flow, self.addons
        await addons.handle_lifecycle(lhttp.HttpRequestHeadersHook(flow))  # (``_hook`` inline)
        if flow.intercepted:
            await flow.wait_for_resume()
        if self._killed():
            return await self._kill(True)
        # mitmproxy reads the body here; it is already read.
        await addons.handle_lifecycle(lhttp.HttpRequestHook(flow))  # (``_hook`` inline)
        if flow.intercepted:
            await flow.wait_for_resume()
        if self._killed():
            return await self._kill(True)
        if flow.response:
            # A response set by a stage: emulate the responseheaders hook (as mitmproxy does).
            flow.response.timestamp_start = time.time()
            await self._hook(lhttp.HttpResponseHeadersHook(flow))
            if self._killed():
                return await self._kill(True)
            return await self._respond()
        ex = flow.metadata.get(POOLED)
        if ex is None:
            # The pool stage did not take it (a reload between the head and the hooks): no
            # upstream connection exists on this path; the agent retries on a new one.
            return await self._fail("server closed connection")
        await addons.handle_lifecycle(PoolExchangeHook(flow))  # (``_hook`` inline)
        if flow.intercepted:
            await flow.wait_for_resume()
        if ex.error is not None or flow.response is None:
            return await self._fail(ex.error or "server closed connection")
        resp = flow.response
        no_body = flow.request.method == "HEAD" or resp.status_code in (204, 304)
        # check_body_size: a no-op (choose() takes no connection with a body size option)
        if self.lean is not None and self.lean.validate:
            try:
                check_headers(resp)
            except ValueError as e:
                err = (f"Received {e} from server, refusing to prevent request smuggling "
                       "attacks. Disable the validate_inbound_headers option to skip this "
                       "security check.")
                flow.error = mflow.Error(err)
                await self._hook(lhttp.HttpErrorHook(flow))
                flow.live = False
                self.code, self.message = lhttp.ErrorCode.RESPONSE_VALIDATION_FAILED, err
                return ERROR
        await addons.handle_lifecycle(lhttp.HttpResponseHeadersHook(flow))  # (``_hook`` inline)
        if flow.intercepted:
            await flow.wait_for_resume()
        if self._killed():
            return await self._kill(True)
        if flow.response is not resp:  # a stage answered in the upstream's stead
            return await self._respond()
        if resp.stream and not no_body:
            return STREAM  # the layer sends the head, then each chunk as it comes
        body = bytearray(ex.body or b"")  # a small body the exchange read with the head
        while not no_body and ex.body is None:
            await self._hook(PoolChunkHook(flow))
            if self._killed():
                return await self._kill(True)
            if ex.error is not None:
                return await self._fail(ex.error)
            if ex.chunk is None:
                break
            body += ex.chunk
            if len(body) > ex.body_limit:
                return await self._fail("response body exceeds the body size limit")
        resp.data.content = bytes(body)
        return await self._respond()

    async def _respond(self) -> str:
        """``send_response`` up to the bytes: the ``response`` hook, then the kill check."""
        flow, addons = self.flow, self.addons
        assert flow.response is not None
        flow.response.timestamp_end = time.time()
        await addons.handle_lifecycle(lhttp.HttpResponseHook(flow))  # (``_hook`` inline)
        if flow.intercepted:
            await flow.wait_for_resume()
        if self._killed():
            return await self._kill(False)
        return SEND


class _Lean:
    """What the job reads of its layer: ``validate``, the paused layer's event queue."""

    client_gone = lean.LeanLayer.client_gone

    def __init__(self, client: connection.Client, validate: bool) -> None:
        self.context = SimpleNamespace(client=client)
        self.validate = validate
        self._paused_event_queue: collections.deque[Any] = collections.deque()


HEADS = [
    [(b"content-length", b"2")], [(b"content-length", b"2"), (b"content-length", b"3")],
    [(b"transfer-encoding", b"chunked")], [(b"bad name", b"x")], [], [(b"server", b"x")],
]


class _Bytes(bytes):
    """A ``bytes`` subclass (not ``bytes`` itself: the job copies it, as before)."""


def _made(status: int, content: bytes) -> http.Response:
    resp = http.Response.make(status, content)
    resp.timestamp_start = resp.timestamp_end = None  # (the job's own stamps show)
    return resp


class _Addons:
    """Each hook: a seeded stage behaviour (the same for both jobs)."""

    def __init__(self, seed: int, lean_: _Lean | None) -> None:
        self.rng = random.Random(seed)
        self.lean = lean_
        self.calls: list[str] = []

    async def handle_lifecycle(self, hook: Any) -> None:
        rng, flow, name = self.rng, hook.flow, hook.name
        self.calls.append(name)
        roll = rng.random()
        if name == PoolChunkHook.name and roll < 0.1 and self.lean is not None:
            self.lean._paused_event_queue.append(events.ConnectionClosed(flow.client_conn))
        elif roll < 0.04:
            flow.error = mflow.Error(mflow.Error.KILLED_MESSAGE)
        elif roll < 0.07 and self.lean is not None:
            self.lean._paused_event_queue.append(events.ConnectionClosed(flow.client_conn))
        elif roll < 0.09 and self.lean is not None:
            self.lean._paused_event_queue.append(events.DataReceived(flow.client_conn, b"x"))
        elif roll < 0.11:
            flow.error = mflow.Error("some other error")
        if rng.random() < 0.05:
            flow.intercept()
            asyncio.get_running_loop().call_soon(flow.resume)
        if name in ("requestheaders", "request"):
            if rng.random() < 0.05:
                flow.response = _made(403, b"no")
            elif rng.random() < 0.9:
                flow.metadata[POOLED] = SimpleNamespace(
                    error=None, body=None, chunk=None, body_limit=rng.choice([4, 100]))
        elif name == PoolExchangeHook.name:
            ex = flow.metadata[POOLED]
            if rng.random() < 0.05:
                ex.error = "upstream gone"
            elif rng.random() < 0.95:
                resp = _made(rng.choice([200, 204, 304, 500]), b"")
                resp.headers = http.Headers(rng.choice(HEADS))
                flow.response = resp
                if rng.random() < 0.3:
                    # (a ``bytes`` body is taken as it is; any other through the loop's copy)
                    ex.body = rng.choice([b"", b"ab", bytearray(b"ab"), _Bytes(b"ab")])
        elif name == "responseheaders":
            if rng.random() < 0.05:
                flow.response = _made(200, b"own")
            elif rng.random() < 0.15 and flow.response is not None:
                flow.response.stream = True
            # (what the job read before this hook decides: a status or method changed here
            # does not make a body go or come)
            if flow.response is not None and rng.random() < 0.15:
                flow.response.status_code = rng.choice([200, 204, 304])
            if rng.random() < 0.1:
                flow.request.method = rng.choice(["HEAD", "GET", "head"])
        elif name == PoolChunkHook.name:
            ex = flow.metadata[POOLED]
            roll = rng.random()
            if roll < 0.05:
                ex.error = "cut"
            ex.chunk = rng.choice([b"x", b"yy", None, None])
            if rng.random() < 0.05:
                flow.response = _made(200, b"swapped")
        await asyncio.sleep(0)


def _state(job: lean._Job, addons: _Addons) -> tuple[Any, ...]:
    flow = job.flow
    resp = flow.response
    content = resp and resp.raw_content
    return (job.outcome, job.code, job.message, addons.calls, flow.live,
            flow.error and flow.error.msg, resp and (resp.status_code, content,
                                                     type(content)),
            resp and resp.timestamp_start is not None, resp and resp.timestamp_end is not None,
            flow.intercepted)


def _run(kind: type[lean._Job], seed: int) -> tuple[Any, ...]:
    rng = random.Random(seed)
    flow = tflow.tflow()
    flow.live = True
    flow.request.method = rng.choice(["GET", "GET", "HEAD", "POST"])
    lean_ = _Lean(flow.client_conn, rng.random() < 0.8) if rng.random() < 0.9 else None
    job = kind(flow, lean_)  # type: ignore[arg-type]
    addons = _Addons(seed, lean_)
    asyncio.run(job.run(addons))
    return _state(job, addons)


@pytest.mark.parametrize("seed", range(400))
def test_the_job_makes_the_same_calls_as_the_one_it_replaced(seed: int) -> None:
    assert _run(lean._Job, seed) == _run(_Reference, seed)


def test_the_seeded_behaviours_reach_every_outcome() -> None:
    """Twin of the comparison: its stage behaviours reach each outcome and the chunk loop."""
    outcomes = collections.Counter()
    chunks = 0
    for seed in range(400):
        state = _run(lean._Job, seed)
        outcomes[state[0]] += 1
        chunks += PoolChunkHook.name in state[3]
    assert {SEND, STREAM, ERROR, KILL} <= set(outcomes), outcomes
    assert chunks > 20
