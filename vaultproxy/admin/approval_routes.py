"""``GET /v1/approvals`` and ``POST /v1/approvals/{id}`` (SPEC §6, §10): the operator's view
of held requests and the one way to decide them (the CLI and the dashboard call these too;
``decided_by`` says which). Nothing here carries a secret: an approval shows agent, service,
method, host, path and body size."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from vaultproxy.access.approvals import AlreadyDecided, Approval, UnknownApproval
from vaultproxy.access.desk import AccessDesk
from vaultproxy.admin.actions import audit_admin
from vaultproxy.admin.context import caller, proxy_state
from vaultproxy.admin.models import ErrorOut
from vaultproxy.core.state import ProxyState
from vaultproxy.errors import VaultproxyError

router = APIRouter()


class ApprovalNotFound(VaultproxyError):
    status, code, public = 404, "approval_unknown", "no such approval"


class ApprovalDecided(VaultproxyError):
    status, code, public = 409, "approval_decided", "this approval was already decided"


class ApprovalOut(BaseModel):
    model_config = ConfigDict(hide_input_in_errors=True)

    id: str
    state: Literal["pending", "approved", "denied", "timed_out"]
    agent: str | None
    service: str
    method: str
    host: str
    path: str
    body_size: int | None
    rule: str
    via: str
    created: float
    deadline: float
    waiting: bool
    decided_by: str | None = None
    decided_at: float | None = None
    grant_until: float | None = None


class ApprovalsOut(BaseModel):
    approvals: list[ApprovalOut]
    hold_seconds: float  # [approvals] as configured
    grant_seconds: float


class DecisionIn(BaseModel):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True, frozen=True)

    decision: Literal["approve", "deny"]
    grant_seconds: float | None = Field(default=None, ge=0, le=7 * 86400, description=(
        "approve: also admit the same agent + service + rule for this many seconds"))
    decided_by: Literal["api", "cli", "dashboard"] = "api"


def approval_out(a: Approval) -> ApprovalOut:
    t = a.ticket
    return ApprovalOut(
        id=a.id, state=a.state, agent=t.agent, service=t.service, method=t.method, host=t.host,
        path=t.path, body_size=t.body_size, rule=t.rule, via=t.via, created=a.created,
        deadline=a.deadline, waiting=a.waiting, decided_by=a.decided_by,
        decided_at=a.decided_at, grant_until=a.grant_until,
    )


def owner_desk(st: ProxyState) -> AccessDesk:
    desk = st.access_desk()
    if not isinstance(desk, AccessDesk):  # pragma: no cover - the admin API runs at the owner
        raise VaultproxyError("approvals are kept by another process")
    return desk


@router.get("/v1/approvals", response_model=ApprovalsOut)
async def list_approvals(
    request: Request,
    wait: float = Query(0, ge=0, le=15, description="long poll: answer at the next change "
                                                    "or after this many seconds"),
) -> ApprovalsOut:
    st = proxy_state(request)
    desk = owner_desk(st)
    if wait:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(desk.changed.wait(), wait)
    settings = st.registry.config.approvals
    return ApprovalsOut(approvals=[approval_out(a) for a in desk.listed()],
                        hold_seconds=settings.hold_seconds, grant_seconds=settings.grant_seconds)


@router.post("/v1/approvals/{approval_id}", response_model=ApprovalOut, responses={
    404: {"model": ErrorOut, "description": "no such approval"},
    409: {"model": ErrorOut, "description": "already decided"},
})
async def decide(approval_id: str, body: DecisionIn, request: Request) -> ApprovalOut:
    """Decide; besides the ``approval`` record, an ``admin`` record names the caller."""
    st = proxy_state(request)
    desk = owner_desk(st)
    aid = approval_id[:64]
    path = f"/v1/approvals/{aid}"
    try:
        done = desk.decide(aid, body.decision, body.decided_by, body.grant_seconds)
    except UnknownApproval:
        audit_admin(st, caller=caller(request), action=body.decision, method="POST",
                    path=path, status=404, code=ApprovalNotFound.code)
        raise ApprovalNotFound(f"no approval with id {aid}") from None
    except AlreadyDecided as e:
        audit_admin(st, caller=caller(request), action=body.decision, method="POST",
                    path=path, status=409, code=ApprovalDecided.code)
        raise ApprovalDecided(str(e)) from None
    audit_admin(st, caller=caller(request), action=body.decision, method="POST", path=path,
                status=200)
    return approval_out(done)
