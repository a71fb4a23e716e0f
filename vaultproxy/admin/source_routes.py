"""``GET /v1/sources`` and ``POST /v1/sync`` (SPEC §6, §9): external sources' state and an
on-demand sync. Names, counts, times and error reasons only, never a value."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from vaultproxy.admin.actions import audit_admin
from vaultproxy.admin.context import admin_context, caller, proxy_state
from vaultproxy.errors import VaultproxyError
from vaultproxy.sync.base import is_ref
from vaultproxy.sync.cached import ref_of

router = APIRouter()


class _Out(BaseModel):
    model_config = ConfigDict(hide_input_in_errors=True)


class SourceOut(_Out):
    name: str
    kind: Literal["openbao", "vault", "bitwarden"]
    url: str
    auth: str
    refresh_seconds: int
    services: list[str]  # services that take a secret from it
    last_success: str | None  # ISO-8601 UTC of the last sync the source answered
    last_attempt: str | None
    last_error: str | None  # why the last sync failed (None: it did not)
    items: int | None  # items cached (None while locked)


class SourcesOut(_Out):
    locked: bool
    sources: list[SourceOut]


class SyncIn(BaseModel):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    source: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")


class SyncResultOut(_Out):
    source: str
    kind: str
    ok: bool
    items: int
    changed: int
    missing: list[str]  # item paths the source did not have (dropped from the cache)
    error: str | None


class SyncOut(_Out):
    ok: bool  # every source synced without error
    results: list[SyncResultOut]


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@router.get("/v1/sources", response_model=SourcesOut)
async def sources(request: Request) -> SourcesOut:
    st, ctx = proxy_state(request), admin_context(request)
    ks = st.session.keystore
    cfg = st.registry.config
    users: dict[str, list[str]] = {}
    for svc in cfg.services:
        if is_ref(svc.secret_name):
            users.setdefault(ref_of(svc.secret_name).source, []).append(svc.name)
    out = []
    for src in cfg.sources:
        last = ctx.sync.last(ks, src.name)
        out.append(SourceOut(
            name=src.name, kind=src.kind, url=src.url, auth=src.auth,
            refresh_seconds=src.refresh_seconds, services=users.get(src.name, []),
            last_success=_iso(last.ok if last else None),
            last_attempt=_iso(last.attempt if last else None),
            last_error=last.error if last else None,
            items=None if ks is None else (len(last.items) if last else 0),
        ))
    return SourcesOut(locked=ks is None, sources=out)


@router.post("/v1/sync", response_model=SyncOut)
async def sync(request: Request, body: SyncIn | None = None) -> SyncOut:
    st, ctx, who = proxy_state(request), admin_context(request), caller(request)
    only = body.source if body is not None else None
    try:
        outcomes = await ctx.sync.sync(st, only, trigger=f"api by {who}")
    except VaultproxyError as e:
        audit_admin(st, caller=who, action="sync", method="POST", path="/v1/sync",
                    status=e.status, code=e.code)
        raise
    ok = all(o.ok for o in outcomes)
    audit_admin(st, caller=who, action="sync", method="POST", path="/v1/sync", status=200,
                code=None if ok else "source_failed")
    return SyncOut(ok=ok, results=[SyncResultOut.model_validate(o.as_dict())
                                   for o in outcomes])
