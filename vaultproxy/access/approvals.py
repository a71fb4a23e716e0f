"""The approval book: held requests, decisions and grants, as a pure state machine (SPEC §10).

States of an approval::

    pending --approve--> approved      (the held request is forwarded)
    pending --deny-----> denied        (403 approval_denied)
    pending --timeout--> timed_out     (403 approval_timeout, with the id)
    timed_out --approve--> approved    (late: a grant, so the agent's retry passes)
    timed_out --deny-----> denied

A decision is final: deciding a decided approval again is refused (``AlreadyDecided``),
except that a timed-out one may still be approved or denied.

Grants: an approval with ``grant_seconds`` admits the same agent + service + rule for that
long (any number of requests). "The same agent" is its identity, not its name: the token it
proved (``agent_id``), so an agent removed and added again under the same name (a new token)
is not admitted by the old agent's grants, and ``keep_agents`` drops the grants of agents
that are gone. An approval whose request is no longer waiting for it (it
timed out, or the worker holding it went away) becomes a one-use grant valid for the
configured ``grant_seconds``, so no decision is lost: the agent's retry passes once.

Plain data, an injectable clock, no I/O: ``access/desk.py`` adds the waiting.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Literal

State = Literal["pending", "approved", "denied", "timed_out"]
Decision = Literal["approve", "deny"]
DecidedBy = Literal["cli", "api", "dashboard", "timeout"]

KEEP_DECIDED = 3600.0  # seconds a decided approval stays listed
MAX_PENDING = 1000  # more held requests than this are refused (a flood is not a question)
# ... and more than this from one agent: one agent's flood must not fill the queue and get
# every other agent's held requests refused
MAX_PENDING_PER_AGENT = 100


class ApprovalError(Exception):
    pass


class UnknownApproval(ApprovalError):
    pass


class AlreadyDecided(ApprovalError):
    pass


class TooManyPending(ApprovalError):
    pass


@dataclass(frozen=True)
class Ticket:
    """What an operator is asked about: never a secret, never a body (only its size)."""

    agent: str | None
    service: str
    method: str
    host: str
    path: str  # normalised, without the query
    body_size: int | None
    rule: str  # the matched rule's key, or "default"
    via: str = "proxy"
    # the agent's identity (``AgentRecord.identity``: bound to its token); "" anonymous
    agent_id: str = ""
    # besides the operator, who may read it by id when there is no agent: an anonymous MCP
    # caller's session (a server-issued secret); "" nobody
    owner: str = ""

    @property
    def grant_key(self) -> tuple[str, str, str, str]:
        return (self.agent or "", self.agent_id, self.service, self.rule)

    def readable_by(self, agent: str | None, agent_id: str, owner: str) -> bool:
        """Whether a caller that is not the operator may read this approval by its id: an
        agent its own (same name *and* token identity); an anonymous caller only one its
        own MCP session opened (``owner``) -- never another caller's, anonymous or not."""
        if agent is not None:
            return self.agent == agent and bool(agent_id) and self.agent_id == agent_id
        return self.agent is None and bool(owner) and self.owner == owner

    def summary(self, approval_id: str) -> str:
        size = "?" if self.body_size is None else str(self.body_size)
        return (f"vaultproxy approval {approval_id}: agent {self.agent or '(anonymous)'} "
                f"wants {self.method} https://{self.host}{self.path} "
                f"(service {self.service}, body {size} bytes)")


@dataclass(frozen=True)
class Approval:
    id: str
    ticket: Ticket
    created: float  # wall clock (time.time)
    deadline: float
    state: State = "pending"
    decided_by: DecidedBy | None = None
    decided_at: float | None = None
    grant_until: float | None = None
    waiting: bool = True  # a request is held on it right now


@dataclass
class Grant:
    until: float
    uses: int | None  # None: any number until ``until``


def new_id() -> str:
    return secrets.token_hex(4)


class ApprovalBook:
    def __init__(self, clock: Callable[[], float] = time.time,
                 ids: Callable[[], str] = new_id) -> None:
        self.clock = clock
        self._ids = ids
        self._approvals: dict[str, Approval] = {}
        self._grants: dict[tuple[str, str, str, str], Grant] = {}

    # -- requests -------------------------------------------------------------------------
    def use_grant(self, ticket: Ticket) -> bool:
        """Whether a live grant admits ``ticket`` (a one-use grant is spent)."""
        key = ticket.grant_key
        grant = self._grants.get(key)
        if grant is None:
            return False
        if grant.until <= self.clock():
            del self._grants[key]
            return False
        if grant.uses is not None:
            grant.uses -= 1
            if grant.uses <= 0:
                del self._grants[key]
        return True

    def open(self, ticket: Ticket, hold_seconds: float) -> Approval:
        self.prune()
        pending = [a for a in self._approvals.values() if a.state == "pending"]
        if len(pending) >= MAX_PENDING:
            raise TooManyPending(f"more than {MAX_PENDING} requests are waiting for approval")
        if sum(1 for a in pending if a.ticket.agent == ticket.agent) >= MAX_PENDING_PER_AGENT:
            raise TooManyPending(f"more than {MAX_PENDING_PER_AGENT} requests of this agent "
                                 "are waiting for approval")
        aid = self._ids()
        while aid in self._approvals:
            aid = self._ids()
        now = self.clock()
        approval = Approval(aid, ticket, now, now + hold_seconds)
        self._approvals[aid] = approval
        return approval

    def get(self, aid: str) -> Approval:
        try:
            return self._approvals[aid]
        except KeyError:
            raise UnknownApproval(f"no approval with id {aid}") from None

    def listed(self) -> list[Approval]:
        self.prune()
        return sorted(self._approvals.values(), key=lambda a: a.created)

    # -- transitions ----------------------------------------------------------------------
    def decide(self, aid: str, decision: Decision, decided_by: DecidedBy,
               grant_seconds: float | None, default_grant: float) -> Approval:
        """Record the operator's decision (see the module docstring for grants)."""
        current = self.get(aid)
        if current.state in ("approved", "denied"):
            raise AlreadyDecided(f"approval {aid} was already decided ({current.state})")
        now = self.clock()
        if decision == "deny":
            done = replace(current, state="denied", decided_by=decided_by, decided_at=now)
        else:
            until = None
            if grant_seconds:
                until = now + grant_seconds
                self._grants[current.ticket.grant_key] = Grant(until, None)
            elif not current.waiting:  # nobody to hand it to: the retry passes once
                until = now + default_grant
                self._grants[current.ticket.grant_key] = Grant(until, 1)
            done = replace(current, state="approved", decided_by=decided_by, decided_at=now,
                           grant_until=until)
        self._approvals[aid] = done
        return done

    def time_out(self, aid: str) -> Approval | None:
        """The hold ended without a decision; None if it was decided meanwhile."""
        current = self._approvals.get(aid)
        if current is None or current.state != "pending":
            return None
        done = replace(current, state="timed_out", decided_by="timeout",
                       decided_at=self.clock(), waiting=False)
        self._approvals[aid] = done
        return done

    def abandon(self, aid: str) -> None:
        """The held request went away (its worker exited): a later approval becomes a grant."""
        current = self._approvals.get(aid)
        if current is not None:
            self._approvals[aid] = replace(current, waiting=False)

    def keep_agents(self, live: Mapping[str, str]) -> int:
        """Drop the grants of every agent not in ``live`` (``{name: identity}``): removed,
        or replaced by a new agent of the same name. Returns how many were dropped."""
        gone = [k for k in self._grants if k[0] and live.get(k[0]) != k[1]]
        for key in gone:
            del self._grants[key]
        return len(gone)

    def prune(self) -> None:
        now = self.clock()
        for aid in [a.id for a in self._approvals.values()
                    if a.decided_at is not None and now - a.decided_at > KEEP_DECIDED]:
            del self._approvals[aid]
        for key in [k for k, g in self._grants.items() if g.until <= now]:
            del self._grants[key]
