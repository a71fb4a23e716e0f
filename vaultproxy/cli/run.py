"""`vaultproxy run`: the proxy on 127.0.0.1:3203 and the admin API on 127.0.0.1:3201 +
admin.sock."""

from __future__ import annotations

import argparse
import asyncio
import io
import logging
import resource
import sys

from vaultproxy.cli import add_home, add_password_file
from vaultproxy.cli.password import check_strength, get_password, wrong_password_hint
from vaultproxy.engine import nodump
from vaultproxy.errors import ConfigError, UsageError, VaultproxyError
from vaultproxy.home import Home
from vaultproxy.hostnames import parse_listen

DEFAULT_LISTEN = "127.0.0.1:3203"
DEFAULT_ADMIN = "127.0.0.1:3201"
DEFAULT_DASHBOARD = "127.0.0.1:3202"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("run", help="run the proxy (and admin API)",
                       description="Run the proxy and its admin API (TCP + admin.sock). "
                       "Unlocks from --password-file / $VAULTPROXY_PASSWORD_FILE / a prompt on "
                       "the terminal; with none of them it starts locked (`vaultproxy unlock`).")
    add_home(p)
    add_password_file(p)
    p.add_argument("--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT",
                   help=f"proxy listen address (default {DEFAULT_LISTEN}; port 0 = any free port)")
    p.add_argument("--admin-listen", default=DEFAULT_ADMIN, metavar="HOST:PORT",
                   help=f"admin API listen address (default {DEFAULT_ADMIN})")
    p.add_argument("--dashboard-listen", default=DEFAULT_DASHBOARD, metavar="HOST:PORT",
                   help=f"web dashboard listen address (default {DEFAULT_DASHBOARD}; empty = "
                        "off); log in with `vaultproxy dashboard`")
    p.add_argument("--workers", default="1", metavar="N",
                   help="proxy processes sharing the port (SO_REUSEPORT); default 1; "
                        "auto = one per CPU (each costs ~100 MiB and holds the unlocked "
                        "secrets)")
    p.set_defaults(func=cmd_run)


def parse_workers(text: str) -> int:
    from vaultproxy.engine.workers import MAX_WORKERS, default_workers

    if text == "auto":
        return min(default_workers(), MAX_WORKERS)
    if not text.isdigit() or not 1 <= int(text) <= MAX_WORKERS:
        raise UsageError(f"--workers must be auto or a number from 1 to {MAX_WORKERS}")
    return int(text)


def cmd_run(args: argparse.Namespace) -> int:
    # No core dumps of a process that holds decrypted secrets, and no same-uid ptrace or
    # /proc/PID/{mem,environ} reads (engine/nodump.py).
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    nodump.disable()
    # The banner and reload lines must reach a file or the journal as they happen, not when
    # a block buffer fills: stdout is line-buffered even when it is not a terminal.
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)
    listen = parse_listen(args.listen, "--listen")
    admin_listen = parse_listen(args.admin_listen, "--admin-listen")
    dashboard_listen = (parse_listen(args.dashboard_listen, "--dashboard-listen")
                        if args.dashboard_listen.strip() else None)
    workers = parse_workers(args.workers)
    home = Home.resolve(args.home)
    home.require()

    from vaultproxy.ca import load_ca, materialize_mitm_confdir
    from vaultproxy.engine.serve import ServeOptions, serve
    from vaultproxy.errors import problems_text
    from vaultproxy.state import ProxyState

    ca = load_ca(home)
    confdir = materialize_mitm_confdir(home)
    try:
        state = ProxyState.load(home)
    except ConfigError as e:
        print(f"vaultproxy: {home.services} is invalid:", file=sys.stderr)
        print(problems_text(e), file=sys.stderr)
        return 1
    from vaultproxy.cli.tpm import try_unlock

    sealed = try_unlock(home)  # a TPM slot this machine's TPM unseals: no password needed
    if sealed is not None:
        state.install_keystore(sealed)
        password = None
    else:
        password = get_password(args.password_file, required=False, home=home.path)
    if password is not None:
        from vaultproxy.keystore.store import WrongPassword

        check_strength(password)
        try:
            state.unlock_sync(password)
        except WrongPassword as e:
            print(f"vaultproxy: {e}; {wrong_password_hint(args.password_file)}", file=sys.stderr)
            return 1
        finally:
            password.wipe()
    elif sealed is None:
        logging.getLogger(__name__).warning(
            "no password source (no --password-file, no VAULTPROXY_PASSWORD_FILE, no terminal): "
            "starting LOCKED; intercepted hosts answer 503 until `vaultproxy unlock`"
        )
    opts = ServeOptions(listen=listen, confdir=str(confdir), admin_listen=admin_listen,
                        workers=workers, dashboard_listen=dashboard_listen)
    try:
        return asyncio.run(serve(state, ca, opts))
    except VaultproxyError as e:
        print(f"vaultproxy: {e}", file=sys.stderr)
        return 1
