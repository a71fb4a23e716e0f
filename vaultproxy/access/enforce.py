"""The one access check every request entry calls (the proxy's stages, ``POST /proxy``):
rules, then the rate limit, then (if a rule says so) the operator's approval. It runs after
routing and before any credential is minted or added; a refusal raises the SPEC §5 error.

Order matters: a denied request never costs the agent a rate-limit token and never bothers a
person; a rate-limited one is never put in front of a person either."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from vaultproxy.access.approvals import Ticket, TooManyPending
from vaultproxy.access.desk import Desk
from vaultproxy.access.ratelimit import Rate, parse_rate, retry_after
from vaultproxy.access.rules import Action, Rule, RuleTable
from vaultproxy.errors import (
    ApprovalDenied,
    ApprovalTimeout,
    RequestDenied,
    rate_limited,
)


@dataclass(frozen=True)
class ServiceAccess:
    """One service's compiled rules and rate (built once per registry, loaded/snapshot.py)."""

    table: RuleTable
    rate: Rate | None

    @classmethod
    def build(cls, rules: Iterable[tuple[str, str, str]], default: str,
              rate: str | None) -> ServiceAccess:
        table = RuleTable(
            (Rule(m.upper(), p, a) for m, p, a in rules),  # type: ignore[arg-type]
            default,  # type: ignore[arg-type]
        )
        return cls(table, parse_rate(rate) if rate else None)

    @property
    def active(self) -> bool:
        return bool(self.table.rules) or self.rate is not None or (
            self.table.verdict("GET", "/").action != "allow")


OPEN = ServiceAccess(RuleTable((), "allow"), None)


async def enforce(desk: Callable[[], Desk], access: ServiceAccess, method: str, path: str,
                  ticket: Callable[[], Ticket]) -> None:
    """Raise RequestDenied / RateLimited / ApprovalDenied / ApprovalTimeout, or return.

    ``path`` is normalised (what goes upstream); ``desk`` and ``ticket`` are only called when
    a rate limit or an approval needs them (an allowed request costs one regex match)."""
    if access is OPEN:
        return
    verdict = access.table.verdict(method, path)
    action: Action = verdict.action
    if action == "deny":
        where = f"rule {verdict.key!r}" if verdict.rule is not None else "default_action"
        raise RequestDenied(f"service {ticket().service}: {where} denies {method.upper()} "
                            "on this path")
    if action == "allow" and access.rate is None:
        return
    t = ticket()
    if access.rate is not None:
        wait = await desk().rate(t.agent, t.service, access.rate)
        if wait is not None:
            raise rate_limited(
                retry_after(wait),
                f"service {t.service}: rate limit reached for this agent; "
                f"retry after {retry_after(wait)} s",
            )
    if action != "approve":
        return
    try:
        result = await desk().hold(replace(t, rule=verdict.key))
    except TooManyPending as e:
        raise rate_limited(5, str(e)) from None
    if result.outcome == "denied":
        raise ApprovalDenied(result.approval_id or "?")
    if result.outcome == "timeout":
        raise ApprovalTimeout(result.approval_id or "?")
