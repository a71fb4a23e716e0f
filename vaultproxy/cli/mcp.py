"""`vaultproxy mcp` (the MCP server over stdio, a bridge to the running proxy) and
`vaultproxy mcp config` (an `.mcp.json` for the configured `[[mcp_server]]` entries)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vaultproxy.cli import add_home
from vaultproxy.config.mcp_servers import McpServer
from vaultproxy.errors import UsageError
from vaultproxy.files.home import Home


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("mcp", help="the MCP server over stdio; `mcp config` prints .mcp.json",
                       description="Serve vaultproxy's MCP tools over stdio (through the "
                       "running proxy's admin.sock, or HTTPS_PROXY inside `vaultproxy exec`).")
    add_home(p)
    p.set_defaults(func=_serve)
    inner = p.add_subparsers(dest="mcp_command", metavar="SUBCOMMAND")
    c = inner.add_parser("config", help="print an .mcp.json launching each [[mcp_server]] "
                         "under `vaultproxy exec`")
    c.add_argument("--home", metavar="DIR", default=argparse.SUPPRESS,
                   help="vaultproxy home (default: $VAULTPROXY_HOME or ~/.config/vaultproxy)")
    c.add_argument("--client", choices=("claude", "generic"), default="claude",
                   help="claude: Claude Code's .mcp.json (default); generic: the same shape "
                   "without client-specific keys")
    c.set_defaults(func=_config)


def _serve(args: argparse.Namespace) -> int:
    from vaultproxy.mcp.bridge import NoProxy, run_bridge

    home = Home.resolve(args.home)
    try:
        run_bridge(home.admin_sock)
    except NoProxy as e:
        raise UsageError(str(e)) from None
    return 0


def _config(args: argparse.Namespace) -> int:
    from vaultproxy.config.load import load_config

    home = Home.resolve(args.home)
    config = load_config(home.services)  # an env placeholder of no service is a problem
    print(json.dumps(client_config(home, config.mcp_server, args.client), indent=2))
    return 0


def _executable() -> str:
    """This installation's ``vaultproxy`` (beside the interpreter, as pip installs it),
    else the one on PATH: the client launches it without our environment."""
    sibling = Path(sys.executable).parent / "vaultproxy"
    if sibling.is_file() and os.access(sibling, os.X_OK):
        return str(sibling)
    return shutil.which("vaultproxy") or "vaultproxy"


def client_config(home: Home, servers: Sequence[McpServer], client: str) -> dict[str, Any]:
    """``{"mcpServers": {...}}``: vaultproxy's own tools (``vaultproxy mcp``), then each
    ``[[mcp_server]]`` under ``vaultproxy exec`` (isolated unless ``isolate = false``); its
    env placeholders are set inside, with ``env`` (placeholders are not secrets)."""
    exe = _executable()
    base = ["--home", str(home.path)]
    entries: dict[str, dict[str, Any]] = {"vaultproxy": {"command": exe,
                                                         "args": ["mcp", *base]}}
    for m in servers:
        inner = list(m.command)
        if m.env:
            inner = ["env", *(f"{k}={v}" for k, v in sorted(m.env.items())), *inner]
        flags = [] if m.isolate else ["--no-isolate"]
        entries[m.name] = {"command": exe, "args": ["exec", *base, *flags, "--", *inner]}
    if client == "claude":
        for entry in entries.values():
            entry["type"] = "stdio"
    return {"mcpServers": entries}
