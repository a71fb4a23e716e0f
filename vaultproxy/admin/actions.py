"""Admin actions shared with the signal handlers: reload (SIGHUP and ``POST /v1/reload``)
and the audit record of an admin action."""

from __future__ import annotations

import logging

from vaultproxy.audit import ADMIN_EVENT, AuditEvent, metrics
from vaultproxy.ca.constraints import home_warnings, registered_hosts
from vaultproxy.core.references import secret_problems, warning_lines
from vaultproxy.core.state import ProxyState
from vaultproxy.errors import ConfigError, VaultproxyError

logger = logging.getLogger(__name__)


def reload_registry(state: ProxyState) -> tuple[int, int]:
    """Re-read services.toml; on error raise ConfigError and keep the previous registry."""
    try:
        before, after = state.reload()
    except ConfigError:
        metrics.RELOADS.labels("invalid").inc()
        raise
    except VaultproxyError as e:
        metrics.RELOADS.labels("invalid").inc()
        raise ConfigError([str(e)]) from None
    metrics.RELOADS.labels("ok").inc()
    for line in home_warnings(state.home, registered_hosts(state.registry.services)):
        logger.warning("%s", line)  # a host added outside a name-constrained CA
    return before, after


def audit_admin(
    state: ProxyState, *, caller: str, action: str, method: str, path: str, status: int,
    code: str | None = None,
) -> None:
    """One ``event="admin"`` record: who did what, and whether it worked (never a value)."""
    ok = code is None
    metrics.ADMIN_ACTIONS.labels(action, "ok" if ok else code or "error").inc()
    state.audit.record(
        AuditEvent(
            event=ADMIN_EVENT,
            method=method,
            path=path,
            status=status,
            outcome="ok" if ok else "failed",
            reason=action if ok else f"{action}: {code}",
            caller=caller,
        )
    )


def refresh_keystore(state: ProxyState) -> None:
    """Re-read keystore.enc (SIGHUP and ``POST /v1/reload``); errors are logged, not raised."""
    try:
        changed = state.refresh_keystore()
    except VaultproxyError as e:
        logger.error("keystore.enc not re-read, the unlocked copy keeps serving: %s", e)
        return
    if changed:
        logger.info("re-read keystore.enc (secrets and agents)")


def warn_missing_secrets(state: ProxyState) -> list[str]:
    """Log (and return) one warning per service whose secret is missing from the unlocked
    keystore: at start, on reload and on unlock, not first at the agent's request."""
    ks = state.session.keystore
    if ks is None:
        return []
    lines = warning_lines(secret_problems(state.registry.config, ks))
    for line in lines:
        logger.warning("%s", line)
    return lines
