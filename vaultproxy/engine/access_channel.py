"""Approvals, grants and rate limits in ``--workers N``: the supervisor owns the desk
(access/desk.py), workers ask it.

Over the supervisor <-> worker channel (engine/channel.py):

- worker -> supervisor ``access`` ``{"id", "kind": "hold", "ticket": {...}}``: hold a request
  for the operator (answered when decided or timed out);
- worker -> supervisor ``access`` ``{"id", "kind": "rate", "agent", "service", "count",
  "period"}``: spend one request of a rate limit;
- worker -> supervisor ``access`` ``{"kind": "alert", "summary"}``: run ``notify_command``
  (a honeytoken hit); not answered;
- supervisor -> worker ``access_answer`` ``{"id", "approval_id", "outcome"}`` or ``{"id",
  "wait"}`` (seconds until the rate limit admits one more; null: admitted), or ``{"id",
  "error": "too_many"}``.

No secret ever travels here: a ticket is agent, service, method, host, path, body size and
the rule it matched. A worker that exits while requests are held on its behalf has those
holds abandoned (``cancel_for``): their approvals stay open, and approving one later
creates a grant, so the agent's retry passes and no decision is lost.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from typing import Any

from vaultproxy.access.approvals import Ticket, TooManyPending
from vaultproxy.access.desk import Desk, HoldResult
from vaultproxy.access.ratelimit import Rate
from vaultproxy.engine.channel import frame

logger = logging.getLogger(__name__)

SLACK = 30.0  # beyond hold_seconds, how long a worker waits for the supervisor's answer


class RemoteDesk:
    """A worker's desk: every question goes to the supervisor."""

    def __init__(self, send: Callable[[bytes], None],
                 hold_seconds: Callable[[], float]) -> None:
        self._send = send
        self._hold_seconds = hold_seconds
        self._ids = itertools.count(1)
        self._answers: dict[int, asyncio.Future[dict[str, Any]]] = {}

    async def _ask(self, header: dict[str, Any], timeout: float) -> dict[str, Any]:
        n = next(self._ids)
        answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._answers[n] = answer
        try:
            self._send(frame({"op": "access", "id": n, **header}))
            return await asyncio.wait_for(answer, timeout)
        finally:
            self._answers.pop(n, None)

    async def hold(self, ticket: Ticket) -> HoldResult:
        t = ticket
        got = await self._ask({"kind": "hold", "ticket": {
            "agent": t.agent, "service": t.service, "method": t.method, "host": t.host,
            "path": t.path, "body_size": t.body_size, "rule": t.rule, "via": t.via,
            "agent_id": t.agent_id, "owner": t.owner,
        }}, self._hold_seconds() + SLACK)
        if got.get("error") == "too_many":
            raise TooManyPending("too many requests are waiting for approval")
        outcome = str(got.get("outcome"))
        if outcome not in ("approved", "granted", "denied", "timeout"):
            outcome = "denied"  # anything unexpected fails closed
        aid = got.get("approval_id")
        return HoldResult(str(aid) if aid else None, outcome)  # type: ignore[arg-type]

    async def rate(self, agent: str | None, service: str, rate: Rate) -> float | None:
        got = await self._ask({"kind": "rate", "agent": agent, "service": service,
                               "count": rate.count, "period": rate.period}, SLACK)
        wait = got.get("wait")
        return float(wait) if isinstance(wait, int | float) else None

    def alert(self, summary: str) -> None:
        self._send(frame({"op": "access", "id": 0, "kind": "alert", "summary": summary}))

    def answer(self, header: dict[str, Any]) -> None:
        """An ``access_answer`` frame (called by the worker's channel reader)."""
        waiter = self._answers.get(int(header.get("id", 0)))
        if waiter is not None and not waiter.done():
            waiter.set_result(header)


def _ticket(raw: Any) -> Ticket:
    d = raw if isinstance(raw, dict) else {}
    size = d.get("body_size")
    return Ticket(
        agent=str(d["agent"]) if d.get("agent") else None, service=str(d.get("service", "")),
        method=str(d.get("method", "")), host=str(d.get("host", "")),
        path=str(d.get("path", "")), body_size=size if isinstance(size, int) else None,
        rule=str(d.get("rule", "default")), via=str(d.get("via", "proxy")),
        agent_id=str(d.get("agent_id") or ""), owner=str(d.get("owner") or ""),
    )


async def serve_access(desk: Desk, send: Callable[[bytes], None],
                       header: dict[str, Any]) -> None:
    """Answer one worker's ``access`` question (supervisor side)."""
    n = header.get("id")
    kind = header.get("kind")
    if kind == "alert":
        desk.alert(str(header.get("summary", ""))[:1000])
        return
    if kind == "rate":
        count, period = header.get("count"), header.get("period")
        if not isinstance(count, int) or not isinstance(period, int | float) or count < 1:
            send(frame({"op": "access_answer", "id": n, "wait": 1.0}))
            return
        agent = header.get("agent")
        wait = await desk.rate(str(agent) if agent else None, str(header.get("service", "")),
                               Rate(count, float(period)))
        send(frame({"op": "access_answer", "id": n, "wait": wait}))
        return
    if kind == "hold":
        try:
            result = await desk.hold(_ticket(header.get("ticket")))
        except TooManyPending:
            send(frame({"op": "access_answer", "id": n, "error": "too_many"}))
            return
        send(frame({"op": "access_answer", "id": n, "approval_id": result.approval_id,
                    "outcome": result.outcome}))


class AccessServer:
    """The supervisor's side: one task per question, grouped by worker so a worker's exit
    abandons exactly its holds."""

    def __init__(self, desk: Callable[[], Desk]) -> None:
        self._desk = desk
        self._tasks: dict[int, set[asyncio.Task[None]]] = {}

    def spawn(self, slot: int, send: Callable[[bytes], None], header: dict[str, Any]) -> None:
        task = asyncio.create_task(serve_access(self._desk(), send, header))
        tasks = self._tasks.setdefault(slot, set())
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def cancel_for(self, slot: int) -> None:
        """The worker in ``slot`` exited: its held requests are gone (decisions are kept)."""
        for task in list(self._tasks.pop(slot, ())):
            task.cancel()
