"""``GET /v1/secrets/audit``: the credential-health report (names and verdicts, never values,
fingerprints or hashes). Same auth as every admin route; audited as an admin action."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict

from vaultproxy.admin.actions import audit_admin
from vaultproxy.admin.context import caller, proxy_state
from vaultproxy.errors import LockedError
from vaultproxy.health.run import audit

router = APIRouter()


class _Out(BaseModel):
    model_config = ConfigDict(hide_input_in_errors=True)


class SecretHealthOut(_Out):
    name: str
    field: str | None
    weak: bool
    weak_reasons: list[Literal["short", "few_classes", "repetitive"]]
    reused: bool
    reused_with: list[str]  # "name" or "name.field" of the others holding the same value
    breached: bool | None  # None: the breach check is off or failed


class HealthSummaryOut(_Out):
    checked: int
    weak: int
    reused: int
    breached: int


class BreachCheckOut(_Out):
    enabled: bool
    status: Literal["off", "ok", "error"]
    error: str | None


class SecretsAuditOut(_Out):
    secrets: list[SecretHealthOut]
    summary: HealthSummaryOut
    breach_check: BreachCheckOut


@router.get("/v1/secrets/audit", response_model=SecretsAuditOut)
async def secrets_audit(request: Request) -> SecretsAuditOut:
    st, who = proxy_state(request), caller(request)
    ks = st.session.keystore
    if ks is None:
        audit_admin(st, caller=who, action="secrets_audit", method="GET",
                    path="/v1/secrets/audit", status=503, code="locked")
        raise LockedError()
    result = await audit(ks, st.home, st.registry.config.health)
    audit_admin(st, caller=who, action="secrets_audit", method="GET", path="/v1/secrets/audit",
                status=200)
    return SecretsAuditOut.model_validate(result.as_dict())
