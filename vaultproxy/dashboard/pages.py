"""The data behind each page, read through the admin API's functions (the same answers
`GET /v1/...` gives) plus the audit feed."""

from __future__ import annotations

import logging
import time
from typing import Any

from starlette.requests import Request

from vaultproxy.access import agents as agent_records
from vaultproxy.admin import approval_routes, health_routes, keystore_routes
from vaultproxy.admin.context import proxy_state
from vaultproxy.audit import status as audit_status
from vaultproxy.config.refs import is_ref
from vaultproxy.dashboard import views
from vaultproxy.dashboard.site import Site
from vaultproxy.keystore.cached import has_secret, ref_of

logger = logging.getLogger(__name__)
FILTERS = ("service", "agent", "outcome")
OK_OUTCOMES = frozenset({"injected", "forwarded", "passthrough"})


def overview(request: Request, dash: Site) -> dict[str, Any]:
    st = proxy_state(request)
    by_service, by_outcome = dash.feed.per_minute()
    last = by_outcome[-1] if by_outcome else None
    hour_errors = sum(n for c in by_outcome for k, n in c.items() if k not in OK_OUTCOMES)
    pending = [a for a in approval_routes.owner_desk(st).listed() if a.state == "pending"]
    return {
        "locked": st.locked, "workers": dash.workers(),
        "services": st.registry.services,
        "per_minute": sum(last.values()) if last else 0,
        "hour_requests": sum(sum(c.values()) for c in by_outcome),
        "hour_errors": hour_errors, "problems": audit_status.problems(st.audit),
        "pending": len(pending),
        "plot_service": views.plot(by_service, "requests per minute by service"),
        "plot_outcome": views.plot(by_outcome, "requests per minute by outcome"),
    }


def filters(request: Request) -> dict[str, str]:
    return {k: v[:64] for k in FILTERS if (v := request.query_params.get(k, "").strip())}


def shown(rec: dict[str, Any], want: dict[str, str]) -> bool:
    if rec.get("event") not in ("request", "honeytoken", "approval"):
        return False
    return all(str(rec.get(k) or "") == v for k, v in want.items())


def requests(request: Request, dash: Site) -> dict[str, Any]:
    st = proxy_state(request)
    want = filters(request)
    recent = dash.feed.recent(500)
    rows = [r for r in recent if shown(r, want)][-200:]
    options = {k: sorted({str(r[k]) for r in recent if r.get(k)}) for k in FILTERS}
    options["service"] = sorted(set(options["service"]) |
                                {s.name for s in st.registry.services})
    return {"rows": list(reversed(rows)), "want": want, "options": options,
            "query": "&".join(f"{k}={v}" for k, v in want.items())}


async def approvals(request: Request) -> dict[str, Any]:
    listed = await approval_routes.list_approvals(request, wait=0)
    pending = [a for a in listed.approvals if a.state == "pending"]
    history = [a for a in listed.approvals if a.state != "pending"]
    history.sort(key=lambda a: a.decided_at or a.created, reverse=True)
    return {"pending": pending, "history": history[:100], "now": time.time(),
            "hold_seconds": listed.hold_seconds, "grant_seconds": listed.grant_seconds}


def verdicts(report: health_routes.SecretsAuditOut) -> dict[str, str]:
    """One word per keystore entry, the worst of its value and fields."""
    rank = {"ok": 0, "reused": 1, "weak": 2, "breached": 3}
    out: dict[str, str] = {}
    for h in report.secrets:
        word = ("breached" if h.breached else "weak" if h.weak else "reused" if h.reused
                else "ok")
        if rank[word] >= rank[out.get(h.name, "ok")]:
            out[h.name] = word
    return out


async def services(request: Request, dash: Site) -> dict[str, Any]:
    st = proxy_state(request)
    health: dict[str, str] | None = None
    if request.query_params.get("health") and not st.locked:
        health = verdicts(await health_routes.secrets_audit(request))
    ks = st.session.keystore
    used = views.last_use(list(dash.feed.records))
    rows = []
    for s in st.registry.services:
        rows.append({
            "name": s.name, "hosts": ", ".join(s.hosts), "mode": s.mode, "auth": s.auth,
            "secret": s.secret_name,
            "present": None if ks is None else has_secret(ks, s.secret_name),
            "source": ref_of(s.secret_name).source if is_ref(s.secret_name) else "keystore",
            "rules": len(getattr(s, "rules", ()) or ()),
            "last_use": used.get(s.name),
            "health": None if health is None else health.get(s.secret_name, "-"),
        })
    return {"rows": rows, "locked": ks is None, "checked": health is not None}


def _agent_records(request: Request) -> list[agent_records.AgentRecord]:
    ks = proxy_state(request).session.keystore
    if ks is None:
        return []
    out: list[agent_records.AgentRecord] = []
    for entry in ks.internal_names(agent_records.NAMESPACE):
        value = ks.get_internal(entry)
        if value is not None:
            out.extend(agent_records.load_records([(entry, value)]).values())
    return out


def agents(request: Request) -> dict[str, Any]:
    """Each agent with its token's expiry as `vaultproxy agent list` words it, so an
    operator sees which tokens are about to stop working (or already have)."""
    st = proxy_state(request)
    records = _agent_records(request)
    now = time.time()
    expiry = {r.name: agent_records.format_expiry(r, now) for r in records}
    return {"agents": records, "expiry": expiry, "locked": st.locked}


async def revoke_agent(request: Request, name: str) -> None:
    """The keystore write path of the admin API (lock, refresh, save, every worker)."""
    agent_records.check_name(name)
    ks = keystore_routes._unlocked(request)

    def work() -> None:
        ks.refresh()
        if not ks.remove_internal(agent_records.entry_name(name)):
            raise keystore_routes.NotFound(f"no agent named {name}")
        ks.save()

    await keystore_routes._write(request, "agent_rm", f"/agents/{name}", "POST", work)


async def secrets(request: Request) -> dict[str, Any]:
    """``?name=`` fills the form's name: a link to the page for one secret (what MCP's
    ``store_secret`` is to point at)."""
    st = proxy_state(request)
    prefill = request.query_params.get("name", "")[:71]
    if st.locked:
        return {"locked": True, "secrets": [], "prefill": prefill}
    listed = await keystore_routes.list_secrets(request)
    return {"locked": False, "secrets": listed.secrets, "prefill": prefill}
