"""What every start path shares (``vaultproxy run``, its workers, ``mitmdump -s``): the
``SECURITY:`` lines for the settings that weaken the proxy, as a pure function of the
config and the listen addresses, logged the same way by each path at every start.

The workers of ``run --workers N`` serve the supervisor's config: the supervisor logs the
lines once for all of them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from vaultproxy.config.models import SURFACE_RISKS, Config
from vaultproxy.sync.run import source_warnings

logger = logging.getLogger(__name__)

LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


def security_warnings(
    config: Config, proxy_hosts: Iterable[str], admin_host: str | None = None
) -> list[str]:
    """The ``SECURITY:`` lines for ``config`` served on ``proxy_hosts`` (an empty host: every
    interface), with the admin API on ``admin_host`` (None: no TCP listener)."""
    out = []
    for s in config.services:
        if s.insecure_tls:
            out.append(
                f"SECURITY: service {s.name} has insecure_tls = true: upstream TLS is NOT verified"
            )
        if s.allow_loopback:
            out.append(f"SECURITY: service {s.name} may reach loopback addresses (allow_loopback)")
        if s.allow_private:
            out.append(f"SECURITY: service {s.name} may reach private addresses (allow_private)")
        if s.mode == "placeholder":
            for surface in s.substitute_in:
                if surface in SURFACE_RISKS:
                    out.append(
                        f"SECURITY: service {s.name} substitutes its secret in "
                        f"{SURFACE_RISKS[surface]} (substitute_in)"
                    )
        if s.allow_range:
            out.append(
                f"SECURITY: service {s.name} keeps Range requests (allow_range): partial "
                "responses can slice a reflected secret past the redactor"
            )
    if config.audit.on_failure == "continue":
        out.append(
            'SECURITY: [audit] on_failure = "continue": when audit.jsonl cannot be written, '
            "credentials are still injected and those uses are NOT audited"
        )
    out.extend(source_warnings(config))
    if config.proxy.passthrough_allow:
        out.append(
            "SECURITY: passthrough_allow lets unregistered traffic reach listed private addresses"
        )
    for host in dict.fromkeys(proxy_hosts):
        if host not in LOOPBACK_HOSTS:
            where = host or "every interface"
            out.append(
                f"SECURITY: the proxy listens on {where}, not loopback: other hosts can use it"
            )
    if admin_host is not None and admin_host not in LOOPBACK_HOSTS:
        out.append(f"SECURITY: the admin API listens on {admin_host}, not loopback: other "
                   "hosts can reach it (the bearer token is its only protection)")
    return out


def log_warnings(lines: Iterable[str]) -> None:
    """Every start path logs its lines through this one call."""
    for line in lines:
        logger.warning("%s", line)
