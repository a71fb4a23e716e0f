"""``POST /v1/agent-env``: which of the caller's environment variables hold a stored secret.

`vaultproxy exec` and `vaultproxy env` send the variables an agent would inherit; the answer
names the ones to swap (with the placeholder-only value, which is public) and the ones to
drop (vaultproxy/values/env_secrets.py). The proxy checks because it holds the secrets already: the
CLI never does. Only over ``admin.sock`` (the same uid, proven by SO_PEERCRED): a token
holder over TCP gains nothing from a "does this value hold a secret" answer. The body is
never logged or audited (it is the caller's environment).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from vaultproxy.admin.actions import audit_admin
from vaultproxy.admin.context import admin_context, caller, peer, proxy_state
from vaultproxy.config.refs import is_ref
from vaultproxy.config.signed import PUBLIC_FIELDS
from vaultproxy.core.state import ProxyState
from vaultproxy.errors import LockedError, SecretMissing, VaultproxyError
from vaultproxy.values.env_secrets import Known, check, known_secrets

router = APIRouter()
NOT_SECRET_FIELDS = frozenset({"username"}).union(*PUBLIC_FIELDS.values())
MAX_VARIABLES = 4096


class SocketOnly(VaultproxyError):
    status, code, public = 403, "admin_socket_only", "this endpoint answers on admin.sock only"


class AgentEnvIn(BaseModel):
    model_config = ConfigDict(hide_input_in_errors=True, extra="forbid")
    env: dict[str, str] = Field(max_length=MAX_VARIABLES)


class AgentEnvOut(BaseModel):
    model_config = ConfigDict(hide_input_in_errors=True)
    swap: dict[str, str]  # name -> value with placeholders (no secret left in it)
    drop: list[str]


def stored_secrets(st: ProxyState, admin_token: str) -> list[Known]:
    """Every stored secret value with its placeholder-mode service's placeholder, if any."""
    ks = st.session.keystore
    if ks is None:
        raise LockedError()
    services = st.registry.services
    placeholder = {s.secret_name: s.placeholder_text for s in services
                   if s.mode == "placeholder" and not is_ref(s.secret_name)}
    pairs: list[tuple[str, str | None]] = [(admin_token, None)]
    entries = [(e, placeholder.get(e.name)) for e in (ks.get(n) for n in ks.names())
               if e is not None]
    for service in services:
        if is_ref(service.secret_name):  # the source cache's copy (SPEC §9)
            try:
                entry = st.session.entry_for(service)
            except (LockedError, SecretMissing):
                continue
            ph = service.placeholder_text if service.mode == "placeholder" else None
            entries.append((entry, ph))
    for entry, ph in entries:
        if entry.value is not None:
            pairs.append((entry.value.reveal().decode("utf-8", "replace"), ph))
        for name, secret in entry.fields.items():
            if name not in NOT_SECRET_FIELDS:
                pairs.append((secret.reveal().decode("utf-8", "replace"), ph))
    return known_secrets(pairs)


@router.post("/v1/agent-env", response_model=AgentEnvOut)
async def agent_env(body: AgentEnvIn, request: Request) -> AgentEnvOut:
    st, who = proxy_state(request), caller(request)
    if not peer(request).startswith("unix:"):
        audit_admin(st, caller=who, action="agent_env", method="POST", path="/v1/agent-env",
                    status=403, code=SocketOnly.code)
        raise SocketOnly()
    try:
        secrets = stored_secrets(st, admin_context(request).token)
    except LockedError:
        audit_admin(st, caller=who, action="agent_env", method="POST", path="/v1/agent-env",
                    status=503, code="locked")
        raise
    verdict = check(body.env, secrets)
    audit_admin(st, caller=who, action="agent_env", method="POST", path="/v1/agent-env",
                status=200)
    return AgentEnvOut(swap=verdict.swap, drop=list(verdict.drop))
