"""Produce the report: keystore -> weak/reused verdicts -> breach check when configured."""

from __future__ import annotations

import logging

from vaultproxy.config.health import HealthSettings
from vaultproxy.errors import VaultproxyError
from vaultproxy.files.home import Home
from vaultproxy.health import hibp, report
from vaultproxy.keystore import Keystore

logger = logging.getLogger(__name__)


async def audit(ks: Keystore, home: Home, settings: HealthSettings) -> report.Report:
    """The health report for ``ks``; the breach check runs only when hibp_url is set."""
    result, values = report.build(report.secret_values(ks))
    try:
        if not settings.hibp_url or not values:
            result.breach_check = report.BreachCheck(enabled=bool(settings.hibp_url),
                                                     status="ok" if settings.hibp_url else "off")
            return result
        result.breach_check = report.BreachCheck(enabled=True, status="ok")
        client = hibp.RangeClient(home, settings)
        try:
            verdicts = await hibp.check(client, values)
        finally:
            await client.aclose()
        for item in result.items:
            item.breached = verdicts.get(item.label)
    except (VaultproxyError, OSError, ValueError) as e:
        message = _why(e)
        logger.warning("credential health: breach check failed: %s", message)
        result.breach_check = report.BreachCheck(enabled=True, status="error", error=message)
    finally:
        values.clear()
    return result


def _why(err: Exception) -> str:
    if isinstance(err, VaultproxyError):
        return str(err)
    if isinstance(err, OSError):
        return f"cannot read [health] ca_cert: {err.strerror}"
    return "invalid [health] settings"
