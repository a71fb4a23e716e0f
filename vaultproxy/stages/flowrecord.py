"""The one record a flow carries through the stages, under one ``flow.metadata`` key.

Identify puts the ``Decision`` in it, the only carrier of the verdict (service, agent,
target, plan); the later stages read it and add what they did (injected, the pending body,
the redactor, a refusal); Record turns the decision and the outcome into the canonical audit
line."""

from __future__ import annotations

from dataclasses import dataclass

from mitmproxy import http

from vaultproxy.config.models import Service
from vaultproxy.decide import Decision
from vaultproxy.keystore import Entry
from vaultproxy.mint.cache import Issued
from vaultproxy.redact import Redactor

KEY = "vaultproxy"


@dataclass
class FlowRecord:
    decision: Decision | None = None
    t0: float | None = None  # monotonic, when the request headers arrived
    path: str | None = None  # without the query, as the agent sent it (or after rewriting)
    injected: bool = False
    body: Entry | None = None  # the entry of a body substitution (or signature) waiting
    denied: tuple[str, str] | None = None  # (code, public message) of our refusal
    reply: http.Response | None = None  # our reply, when it replaced an upstream response
    redactor: Redactor | None = None
    whole: str | None = None  # the Content-Encoding of a body redacted whole
    audited: bool = False
    counted: bool = False  # counted in ProxyState.inflight
    ahead: bool = False  # its ``forward`` record was written (stages/ahead.py)
    # Minted credentials (stages/mint.py)
    minted: Issued | None = None  # the token this request carries
    retried: bool = False  # the response is the resend's after a 401 (response_gate.py)
    resent: bytes | None = None  # its gated body, until sent
    # SPEC §10: the body is buffered for the honeytoken scan (stages/access.py)
    hold_body: bool = False


    @property
    def service(self) -> Service | None:
        """The decision's service (a credential may go in), None while undecided."""
        return self.decision.service if self.decision is not None else None

    @property
    def agent(self) -> str | None:
        return self.decision.agent if self.decision is not None else None


def record_of(flow: http.HTTPFlow) -> FlowRecord:
    """The flow's record (created on first use)."""
    rec = flow.metadata.get(KEY)
    if rec is None:
        rec = flow.metadata[KEY] = FlowRecord()
    assert isinstance(rec, FlowRecord)
    return rec
