"""`vaultproxy sync [SOURCE]`: pull the secrets services take from external sources now.

When a proxy runs on this home, the command asks it (``POST /v1/sync`` over admin.sock): the
running proxy is then the only writer of keystore.enc and audit.jsonl, and its worker
processes get the new values at once. When none runs, the command opens the keystore itself
(master password as for every keystore command), syncs, saves, and appends the audit records,
holding the home's claim (Home.claim) so that no proxy starts meanwhile.
Exit 0 when every source synced, 1 when any failed (each failure named).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import Any

from vaultproxy.cli import add_home, add_password_file
from vaultproxy.cli.control import NotRunning, call, error_message
from vaultproxy.errors import ConfigError, VaultproxyError, problems_text
from vaultproxy.files.home import Home


def _via_proxy(home: Home, only: str | None) -> list[dict[str, Any]] | None:
    """The running proxy's sync results; None when no proxy runs on this home."""
    body = json.dumps({"source": only} if only else {}).encode()
    try:
        status, data = call(home, "POST", "/v1/sync", body)
    except NotRunning:
        return None
    error = data.get("error") if isinstance(data.get("error"), dict) else {}
    if status == 503 and (error.get("code") or data.get("code")) == "locked":
        raise VaultproxyError("the running proxy is locked; `vaultproxy unlock` first")
    if status != 200:
        raise VaultproxyError(f"the proxy answered {status}: "
                              f"{error_message(data) or 'no details'}")
    return list(data.get("results", []))


def _offline(args: argparse.Namespace, home: Home, only: str | None) -> list[dict[str, Any]]:
    """No proxy runs: open the keystore here and sync with the same code the proxy uses."""
    from vaultproxy.cli.password import open_store
    from vaultproxy.core.state import ProxyState
    from vaultproxy.sync.run import Syncer

    try:
        state = ProxyState.load(home)
    except ConfigError as e:
        raise VaultproxyError(f"{home.services} is invalid:\n{problems_text(e)}") from None
    if only is not None and only not in {s.name for s in state.registry.config.sources}:
        raise VaultproxyError(f"no [[source]] named {only!r} in {home.services}")
    # Held to the end: a proxy whose admin.sock did not answer is named before the prompt,
    # and none may start (writing keystore.enc and audit.jsonl) while this sync runs.
    claim = home.claim()
    try:
        state.install_keystore(open_store(args))

        async def go() -> list[dict[str, Any]]:
            syncer = Syncer()
            try:
                return [o.as_dict() for o in await syncer.sync(state, only, trigger="cli")]
            finally:
                await syncer.aclose()

        return asyncio.run(go())
    finally:
        state.audit.close()
        state.lock()
        os.close(claim)


def _line(r: dict[str, Any]) -> str:
    if r.get("error") and not r.get("missing"):
        return f"{r['source']}: FAILED: {r['error']} (cached values kept: {r['items']})"
    text = f"{r['source']}: {r['items']} items synced, {r['changed']} changed"
    if r.get("missing"):
        text += f"; not found at the source (dropped): {', '.join(r['missing'])}"
    return text


def cmd_sync(args: argparse.Namespace) -> int:
    home = Home.resolve(args.home)
    home.require()
    only = args.source
    results = _via_proxy(home, only)
    where = "the running proxy"
    if results is None:
        results = _offline(args, home, only)
        where = str(home.keystore)
    if args.json:
        sys.stdout.write(json.dumps({"via": where, "results": results}) + "\n")
    elif not results:
        sys.stdout.write("no [[source]] in services.toml; nothing to sync\n")
    else:
        sys.stdout.write("".join(_line(r) + "\n" for r in results))
        sys.stdout.write(f"(synced by {where})\n")
    return 0 if all(r.get("ok") for r in results) else 1


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "sync", help="pull secrets from external sources ([[source]]) now",
        description="Fetch every secret services take from external sources "
        "(secret = \"SOURCE:PATH#FIELD\") and cache it in the keystore. Asks the running "
        "proxy when one runs on this home; otherwise opens the keystore itself. Exit 1 when "
        "any source failed (its cached values stay in use).")
    p.add_argument("source", nargs="?", metavar="SOURCE", help="only this [[source]]")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    add_home(p)
    add_password_file(p)
    p.set_defaults(func=cmd_sync)
