"""What the pages show, as plain data (pure functions over the proxy state and the feed):
the fix for each refusal code, the services table, and the requests-per-minute plot as
server-rendered SVG (no JavaScript library)."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any

from markupsafe import Markup, escape

FIXES = {
    "locked": "unlock: `vaultproxy unlock` or the Secrets page",
    "secret_missing": "set the secret on the Secrets page (or `vaultproxy secret set NAME`)",
    "upstream_unreachable": "check the upstream is up and its hosts/connect_to",
    "upstream_tls": "fix the upstream certificate, or set the service's ca_cert",
    "destination_denied": "a lab upstream needs allow_private / allow_loopback on the service",
    "egress_blocked": "register the host in services.toml, or use passthrough egress",
    "placeholder_misdirected": "the agent sent another service's placeholder: check its config",
    "placeholder_unknown": "the placeholder names no service: check the agent's config",
    "body_too_large": "raise [proxy] max_body_mb, or drop \"body\" from substitute_in",
    "agent_auth_required": "give the agent its token: `vaultproxy exec --agent NAME`",
    "agent_scope": "allow the service for this agent: `vaultproxy agent add NAME --services ...`",
    "agent_token_expired": "`vaultproxy agent rotate NAME`",
    "rate_limited": "wait Retry-After seconds, or raise the service's rate_limit",
    "request_denied": "a rule refuses this method and path: change the service's rules",
    "approval_timeout": "approve it on the Approvals page; the agent's retry then passes",
    "approval_denied": "the operator denied it: nothing to fix",
    "honeytoken": "the agent used a decoy credential: investigate the agent",
    "audit_unavailable": "free disk space for audit.jsonl (see /v1/health)",
    "token_unavailable": "check the service's mint settings and its token endpoint",
    "upstream_protocol": "the upstream answered malformed HTTP: fix the upstream",
    "upstream_timeout": "the upstream is slow: check it, or raise the service's timeout",
    "invalid_request": "the client sent a malformed request: fix the client",
    "overloaded": "the proxy is out of connections: lower the agents' concurrency",
}


def fix_for(code: str | None) -> str:
    return FIXES.get(code or "", "")


def when(ts: float | str | None) -> str:
    if ts is None:
        return "-"
    if isinstance(ts, str):
        return ts.replace("T", " ").split(".")[0].rstrip("Z")
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def last_use(records: list[dict[str, Any]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for r in records:
        if r.get("event") == "request" and r.get("service") and r.get("ts"):
            out[str(r["service"])] = str(r["ts"])
    return out


PALETTE = ("#2563eb", "#16a34a", "#dc2626", "#9333ea", "#ea580c", "#0891b2", "#4b5563")
W, H, PAD = 600, 120, 24


def plot(series: list[Counter[str]], title: str) -> Markup:
    """Stacked bars, one per minute (oldest left), one colour per key, with a legend."""
    keys = sorted({k for c in series for k in c})
    top = max((sum(c.values()) for c in series), default=0) or 1
    bar = (W - 2 * PAD) / max(len(series), 1)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H + 30}" '
             f'class="plot" role="img" aria-label="{escape(title)}">',
             f'<text x="{PAD}" y="14" class="plot-title">{escape(title)} '
             f'(max {top}/min)</text>',
             f'<line x1="{PAD}" y1="{H}" x2="{W - PAD}" y2="{H}" class="axis"/>']
    for i, c in enumerate(series):
        y = float(H)
        for j, k in enumerate(keys):
            n = c.get(k, 0)
            if not n:
                continue
            h = (H - 24) * n / top
            y -= h
            parts.append(f'<rect x="{PAD + i * bar:.1f}" y="{y:.1f}" width="{max(bar - 1, 1):.1f}" '
                         f'height="{h:.1f}" fill="{PALETTE[j % len(PALETTE)]}">'
                         f'<title>{escape(k)}: {n}</title></rect>')
    x = PAD
    for j, k in enumerate(keys[:8]):
        parts.append(f'<rect x="{x}" y="{H + 10}" width="10" height="10" '
                     f'fill="{PALETTE[j % len(PALETTE)]}"/>'
                     f'<text x="{x + 14}" y="{H + 19}" class="legend">{escape(k)}</text>')
        x += 14 + 8 * len(k) + 16
    parts.append(f'<text x="{W - PAD}" y="{H + 19}" text-anchor="end" class="legend">'
                 'last 60 min</text></svg>')
    return Markup("".join(parts))  # noqa: S704 - every interpolated text is escaped above
