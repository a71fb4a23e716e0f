"""Mint: a minted service's token (SPEC §4.1), fetched before Inject puts it on the request.

``requestheaders`` asks the process's token source (the cache's owner, or in a worker the
supervisor, engine/tokens.py) without blocking the event loop: other flows go on while a
mint is in flight, and every request waiting for the same service shares one mint. A mint
that fails answers ``502 token_unavailable``; nothing is forwarded. A body held for the
honeytoken scan (stages/access.py) is scanned first: such a request mints in ``request``,
after RequestGate, so a refused decoy never costs a mint.

``responseheaders``: a 401 from the upstream drops the token the request carried. An
idempotent request with no body (GET, HEAD, OPTIONS, PUT, DELETE; no Upgrade) is resent
once, at once, with a fresh token, before any byte of the 401 reaches the agent; the
response gate then answers with the resend's response. Any other request gets the 401 back
and the next request mints anew: a request is never resent when its body cannot be sent
again.
"""

from __future__ import annotations

from collections.abc import Awaitable

from mitmproxy import http

from vaultproxy.config.models import Service
from vaultproxy.core.pipeline import needs_token
from vaultproxy.core.state import ProxyState
from vaultproxy.inject.minted import MintedHeaders, credential
from vaultproxy.inject.request import canonical_name
from vaultproxy.mint.cache import Issued
from vaultproxy.stages.flowrecord import KEY, FlowRecord, handed, idle_unless, record_of
from vaultproxy.stages.guard import guarded_sometimes_async
from vaultproxy.stages.resend import resend
from vaultproxy.stages.runtime import Stage

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})


def _bodyless(req: http.Request) -> bool:
    """Safe to send again as it was: idempotent, and certainly without a body (over HTTP/2
    and 3 a body needs no Content-Length, so a PUT must say ``Content-Length: 0``)."""
    length = req.headers.get("content-length")
    if length is None and req.method == "PUT" and not req.http_version.startswith("HTTP/1"):
        return False
    return (
        req.method in IDEMPOTENT
        and (length or "0").strip() == "0"
        and "transfer-encoding" not in req.headers
        and "upgrade" not in req.headers
    )


def token_reason(rec: FlowRecord) -> str | None:
    """The audit line's ``reason`` for a minted request: ``minted`` or ``cached`` (with
    ``_retried`` when it was resent after a 401)."""
    if rec.minted is None:
        return None
    return rec.minted.source + ("_retried" if rec.retried else "")


class Mint(Stage):
    """Every hook is synchronous and returns an awaitable only when it must wait (a token to
    fetch, a 401 to act on): a request to a service that mints nothing costs no coroutine."""

    @guarded_sometimes_async
    @idle_unless(rec_true=("decision.plan.mint",))  # (a held body also returns at once)
    @handed
    def requestheaders(self, flow: http.HTTPFlow, rec: FlowRecord | None = None
                       ) -> Awaitable[None] | None:
        if rec is None:  # (handed on by the dispatch: seam/dispatch.py ``RECORD``)
            rec = flow.metadata.get(KEY) or record_of(flow)
        if rec.hold_body:
            return None
        decision = rec.decision  # (``_mint``'s first test, inline: nothing minted, no call)
        if decision is None or decision.plan is None or not decision.plan.mint:
            return None
        return self._mint(flow, rec)

    @guarded_sometimes_async
    @idle_unless(rec_true=("hold_body",))
    @handed
    def request(self, flow: http.HTTPFlow, rec: FlowRecord | None = None
                ) -> Awaitable[None] | None:
        if rec is None:  # (handed on by the dispatch: seam/dispatch.py ``RECORD``)
            rec = flow.metadata.get(KEY) or record_of(flow)
        if rec.hold_body:  # held for the honeytoken scan, which it passed: mint only now
            return self._mint(flow, rec)
        return None

    def _mint(self, flow: http.HTTPFlow, rec: FlowRecord) -> Awaitable[None] | None:
        decision = rec.decision
        plan = decision.plan if decision is not None else None
        if rec.answered or plan is None or not plan.mint:
            return None  # refused, nothing to inject, or nothing minted (``needs_token``)
        st = self.rt.state()
        if needs_token(plan, flow.request, st.snapshot.index):
            return self._fetch(st, plan.service, rec)
        return None

    async def _fetch(self, st: ProxyState, service: Service, rec: FlowRecord) -> None:
        rec.minted = await st.token_source().get(service)

    @guarded_sometimes_async
    @idle_unless(rec_set=("minted",))
    @handed
    def responseheaders(self, flow: http.HTTPFlow, rec: FlowRecord | None = None
                       ) -> Awaitable[None] | None:
        if rec is None:  # (handed on by the dispatch: seam/dispatch.py ``RECORD``)
            rec = flow.metadata.get(KEY) or record_of(flow)
        issued, resp = rec.minted, flow.response
        if issued is None or resp is None or resp.status_code != 401 or rec.refusal:
            return None  # the upstream's 401 (never our own refusal) drops its token
        return self._rejected(flow, rec, issued)

    async def _rejected(self, flow: http.HTTPFlow, rec: FlowRecord, issued: Issued) -> None:
        st = self.rt.state()
        st.token_source().reject(issued.service, issued.gen)
        decision = rec.decision
        plan = decision.plan if decision is not None else None
        if rec.retried or plan is None or not plan.resend:
            return  # the agent gets the 401; the next request mints anew
        service = plan.service
        if not _bodyless(flow.request):
            return
        # Resend now, before anything of the 401 reaches the agent; the response gate sends
        # the resend's answer in its place and drops the 401's body (stages/response_gate.py).
        fresh = await st.token_source().get(service)
        _token, new = credential(fresh, service.auth)
        _old, before = credential(issued, service.auth)
        headers = _replace(list(flow.request.headers.fields), before, new)
        rec.minted = fresh
        flow.response = await resend(self.rt, flow, service, headers)
        rec.retried = True


def _replace(
    fields: list[tuple[bytes, bytes]], before: MintedHeaders, new: MintedHeaders
) -> list[tuple[bytes, bytes]]:
    """The request's headers with the old minted headers swapped for the new ones."""
    drop = {canonical_name(n.encode("ascii")) for n in (*before, *new)}
    kept = [(k, v) for k, v in fields if canonical_name(k) not in drop]
    return kept + [(n.encode("ascii"), v.reveal()) for n, v in new.items()]
