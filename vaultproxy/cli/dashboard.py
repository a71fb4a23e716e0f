"""`vaultproxy dashboard [--open]`: a one-time login URL for the running proxy's dashboard
(SPEC §12), minted by the proxy over ``admin.sock`` (same user only). The token is in the
URL fragment; the page exchanges it once for a session cookie."""

from __future__ import annotations

import argparse
import sys
import webbrowser

from vaultproxy.cli import add_home
from vaultproxy.cli.control import _fail, call
from vaultproxy.files.home import Home


def cmd_dashboard(args: argparse.Namespace) -> int:
    home = Home.resolve(args.home)
    status, data = call(home, "POST", "/v1/dashboard/login")
    if status != 200:
        raise _fail(status, data)
    url = str(data["url"])
    sys.stdout.write(url + "\n")
    sys.stdout.flush()
    sys.stderr.write("open it within 2 minutes; it works once (run this again for another)\n")
    if args.open and not webbrowser.open(url):
        sys.stderr.write("no browser could be started: open the URL above yourself\n")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("dashboard", help="print a one-time login URL for the web dashboard",
                       description="Print a one-time login URL for the running proxy's web "
                       "dashboard (default http://127.0.0.1:3202; `run --dashboard-listen`).")
    add_home(p)
    p.add_argument("--open", action="store_true", help="also open it in a browser")
    p.set_defaults(func=cmd_dashboard)
