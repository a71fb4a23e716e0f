"""`vaultproxy secret audit [--json]`: credential health (weak / reused / breached) per secret
value. Prints names, fields and verdicts only; docs/operator/HEALTH.md lists the fields."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from vaultproxy.config.health import HealthSettings
from vaultproxy.config.load import parse_config, read_text
from vaultproxy.errors import ConfigError
from vaultproxy.files.home import Home
from vaultproxy.health import report
from vaultproxy.health.run import audit


def _settings(home: Home) -> tuple[HealthSettings, str | None]:
    """[health] from services.toml; an invalid file turns the breach check off, saying so."""
    if not home.services.exists():
        return HealthSettings(), None
    try:
        return parse_config(read_text(home.services), home.path).health, None
    except ConfigError:
        return HealthSettings(), "services.toml is invalid (see `vaultproxy check`)"


def _verdict(item: report.Item) -> str:
    parts = []
    if item.weak_reasons:
        parts.append(f"weak ({', '.join(item.weak_reasons)})")
    if item.reused_with:
        parts.append(f"reused with {', '.join(item.reused_with)}")
    if item.breached:
        parts.append("breached")
    return "; ".join(parts) or "ok"


def _breach_line(check: report.BreachCheck) -> str:
    if check.status == "off":
        return "breach check: off (set [health] hibp_url in services.toml to turn it on)"
    if check.status == "error":
        return f"breach check: FAILED ({check.error}); breached verdicts are unknown"
    return "breach check: ok (only 5-character SHA-1 prefixes were sent)"


def _text(result: report.Report) -> str:
    rows = [("NAME", "FIELD", "VERDICT")]
    rows += [(i.name, i.field or "-", _verdict(i)) for i in result.items]
    widths = [max(len(r[i]) for r in rows) for i in range(2)]
    lines = [f"{r[0].ljust(widths[0])}  {r[1].ljust(widths[1])}  {r[2]}" for r in rows]
    summary = result.as_dict()["summary"]
    assert isinstance(summary, dict)
    lines.append(_breach_line(result.breach_check))
    lines.append(f"{summary['checked']} values checked: {summary['weak']} weak, "
                 f"{summary['reused']} reused, {summary['breached']} breached")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    from vaultproxy.cli.password import open_store

    home = Home.resolve(args.home)
    store = open_store(args)
    settings, problem = _settings(home)
    result = asyncio.run(audit(store, home, settings))
    if problem is not None:
        result.breach_check = report.BreachCheck(enabled=False, status="error", error=problem)
    if args.json:
        sys.stdout.write(json.dumps(result.as_dict(), indent=2) + "\n")
    else:
        sys.stdout.write(_text(result))
    return 0


def add_audit(group: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = group.add_parser("audit", help="credential health: weak, reused, breached (no values)",
                         description="Check every stored value: weak (length, character "
                         "classes), reused (same value under two names), breached (HIBP range "
                         "API, only 5 hex characters of the SHA-1 leave; [health] hibp_url in "
                         "services.toml, off when empty). Prints names and verdicts only.")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)
