"""`vaultproxy mcp` (the MCP server over stdio, a bridge to the running proxy) and
`vaultproxy mcp config` (an `.mcp.json` for the configured `[[mcp_server]]` entries)."""

from __future__ import annotations

import argparse

from vaultproxy.cli import add_home
from vaultproxy.errors import UsageError
from vaultproxy.home import Home


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
    raise UsageError("vaultproxy mcp config: not built yet")
