"""The access desk: the live approval book, rate buckets and notifier of one process.

Exactly one process owns them: the only process of a single ``run`` or ``mitmdump``, or the
supervisor of ``run --workers N`` (whose workers ask it over their channel,
engine/access_channel.py, through the same ``Desk`` interface). So a decision made through
the admin API, which only the supervisor serves, reaches the request wherever it is held,
every worker sees the same grants, and a rate limit counts an agent's requests across all
workers.

``hold`` waits (without blocking the event loop) for the operator's decision or the end of
``hold_seconds``; every transition is an ``approval`` audit record."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from vaultproxy.access.approvals import Approval, ApprovalBook, DecidedBy, Decision, Ticket
from vaultproxy.access.notify import Notifier
from vaultproxy.access.ratelimit import Rate, RateBuckets
from vaultproxy.audit.canonical import Sink, record_approval

Outcome = Literal["approved", "granted", "denied", "timeout"]


class HoldSettings(Protocol):
    @property
    def hold_seconds(self) -> float: ...
    @property
    def grant_seconds(self) -> float: ...
    @property
    def notify_command(self) -> Sequence[str] | None: ...


@dataclass(frozen=True)
class HoldResult:
    approval_id: str | None  # None: a grant admitted it without asking
    outcome: Outcome


class Desk(Protocol):
    """What the request path needs: the owner's desk, or a worker's client of it."""

    async def hold(self, ticket: Ticket) -> HoldResult: ...

    async def rate(self, agent: str | None, service: str, rate: Rate) -> float | None: ...

    def alert(self, summary: str) -> None: ...


class AccessDesk:
    def __init__(self, settings: Callable[[], HoldSettings], audit: Sink,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.audit = audit
        self.book = ApprovalBook(clock)
        self.buckets = RateBuckets()
        self.notifier = Notifier(lambda: settings().notify_command)
        self._waiters: dict[str, asyncio.Future[Outcome]] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self.changed = asyncio.Event()  # set on every change, for watchers (long polls)

    # -- the request path -----------------------------------------------------------------
    async def hold(self, ticket: Ticket) -> HoldResult:
        if self.book.use_grant(ticket):
            return HoldResult(None, "granted")
        s = self.settings()
        approval = self.book.open(ticket, s.hold_seconds)
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Outcome] = loop.create_future()
        self._waiters[approval.id] = waiter
        self._timers[approval.id] = loop.call_later(s.hold_seconds, self._expire, approval.id)
        self._audit(approval, "requested", None)
        self.notifier.notify(ticket.summary(approval.id))
        self._changed()
        try:
            return HoldResult(approval.id, await asyncio.shield(waiter))
        except asyncio.CancelledError:
            self.book.abandon(approval.id)  # a later approval becomes a grant for the retry
            raise
        finally:
            self._waiters.pop(approval.id, None)

    async def rate(self, agent: str | None, service: str, rate: Rate) -> float | None:
        return self.buckets.take(agent, service, rate)

    def alert(self, summary: str) -> None:
        self.notifier.notify(summary)

    # -- the operator ---------------------------------------------------------------------
    def listed(self) -> list[Approval]:
        return self.book.listed()

    def decide(self, aid: str, decision: Decision, decided_by: DecidedBy,
               grant_seconds: float | None = None) -> Approval:
        """Record a decision (UnknownApproval / AlreadyDecided propagate)."""
        current = self.book.get(aid)
        waiter = self._waiters.get(aid)
        if waiter is None or waiter.done():
            self.book.abandon(aid)  # nobody is held on it any more
        done = self.book.decide(aid, decision, decided_by, grant_seconds,
                                self.settings().grant_seconds)
        timer = self._timers.pop(aid, None)
        if timer is not None:
            timer.cancel()
        self._audit(done, decision, decided_by)
        if waiter is not None and not waiter.done() and current.state == "pending":
            waiter.set_result("approved" if decision == "approve" else "denied")
        self._changed()
        return done

    def _expire(self, aid: str) -> None:
        self._timers.pop(aid, None)
        done = self.book.time_out(aid)
        if done is None:
            return
        self._audit(done, "timeout", "timeout")
        waiter = self._waiters.get(aid)
        if waiter is not None and not waiter.done():
            waiter.set_result("timeout")
        self._changed()

    def _audit(self, a: Approval, decision: str, decided_by: str | None) -> None:
        t = a.ticket
        record_approval(self.audit, approval_id=a.id, decision=decision, decided_by=decided_by,
                        agent=t.agent, service=t.service, method=t.method, host=t.host,
                        path=t.path)

    def _changed(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()
