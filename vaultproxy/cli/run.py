"""`vaultproxy run`: the proxy on 127.0.0.1:3203 and the admin API on 127.0.0.1:3201 +
admin.sock."""

from __future__ import annotations

import argparse
import io
import logging
import os
import resource
import socket
import sys
import threading
from typing import TYPE_CHECKING

from vaultproxy.cli import add_home, add_password_file, tty
from vaultproxy.cli.password import (
    BACKGROUND,
    TRIES,
    check_strength,
    get_password,
    in_background,
    source_of,
    wrong_password_hint,
)
from vaultproxy.engine import loop as engine_loop
from vaultproxy.engine import nodump
from vaultproxy.errors import ConfigError, UsageError, VaultproxyError
from vaultproxy.files.home import Home
from vaultproxy.net.hostnames import parse_listen
from vaultproxy.secret import Secret

if TYPE_CHECKING:
    from vaultproxy.config.mtls import MtlsSettings
    from vaultproxy.core.state import ProxyState
    from vaultproxy.engine.master import MtlsListener

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
    p.add_argument("--dashboard-listen",
                   default=os.environ.get("VAULTPROXY_DASHBOARD_LISTEN", DEFAULT_DASHBOARD),
                   metavar="HOST:PORT",
                   help=f"web dashboard listen address (default {DEFAULT_DASHBOARD}, or "
                        "$VAULTPROXY_DASHBOARD_LISTEN; empty = off); log in with "
                        "`vaultproxy dashboard`")
    p.add_argument("--workers", default="1", metavar="N",
                   help="proxy processes sharing one listening socket; default 1; "
                        "auto = one per CPU (each costs ~75 MiB and holds the unlocked "
                        "secrets)")
    p.add_argument("--mtls-listen", default=None, metavar="HOST:PORT",
                   help="also serve the proxy inside mutual TLS here ([mtls] in "
                   "services.toml: server_cert, server_key, client_ca); the client "
                   "certificate's CN names the agent")
    p.set_defaults(func=cmd_run)


def mtls_listener(home: Home, settings: MtlsSettings, listen: tuple[str, int],
                  plain: tuple[str, int]) -> MtlsListener:
    """The mTLS listener's TLS context from ``[mtls]``; refuses a readable key."""
    from OpenSSL import SSL

    from vaultproxy.engine.master import MtlsListener, mode_spec
    from vaultproxy.files.home import check_private
    from vaultproxy.seam.mtls import server_context

    if not settings.complete:
        raise UsageError("--mtls-listen needs [mtls] server_cert, server_key and client_ca in "
                         f"{home.services} (files relative to the home); see "
                         "docs/operator/AGENTS.md")
    if mode_spec(listen) == mode_spec(plain):
        raise UsageError("--mtls-listen must differ from --listen")
    cert, key, ca = settings.paths(home.path)
    for path, what in ((cert, "server_cert"), (key, "server_key"), (ca, "client_ca")):
        if not path.is_file():
            raise UsageError(f"[mtls] {what}: no file {path}")
    check_private(key, 0o600)  # a group/other-readable key is refused, as ca.key
    try:
        context = server_context(cert, key, ca)
    except SSL.Error:
        raise UsageError("[mtls]: server_cert/server_key/client_ca could not be loaded (PEM "
                         "files; the key must match the certificate)") from None
    return MtlsListener(listen, context)


def parse_workers(text: str) -> int:
    if text == "1":
        return 1  # the default, without importing the engine before the password prompt
    from vaultproxy.seam import imports as seam_imports

    seam_imports.lean()  # engine.workers imports mitmproxy and pydantic (seam/imports.py)
    from vaultproxy.engine.workers import MAX_WORKERS, default_workers

    if text == "auto":
        return min(default_workers(), MAX_WORKERS)
    if not text.isdigit() or not 1 <= int(text) <= MAX_WORKERS:
        raise UsageError(f"--workers must be auto or a number from 1 to {MAX_WORKERS}")
    return int(text)


def check_free(address: tuple[str, int], flag: str) -> None:
    """Fail now, naming the flag, when ``address`` is taken (the engine would only notice
    after its start-up timeout)."""
    host, port = address
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as e:
            raise UsageError(
                f"cannot listen on {host}:{port}: {e.strerror} (another vaultproxy, or `make "
                f"demo`, may hold it: `vaultproxy stop --home DIR` ends one); or choose "
                f"another address with {flag} HOST:PORT"
            ) from None


def _unlock(state: ProxyState, password: Secret, flag: str | None, home: Home) -> bool:
    """Unlock with ``password``; a wrong one typed at a terminal is asked again (TRIES)."""
    from vaultproxy.keystore.store import WrongPassword

    tries = TRIES if source_of(flag) is None else 1
    for n in range(1, tries + 1):
        try:
            state.unlock_sync(password)
            return True
        except WrongPassword as e:
            if n >= tries:
                print(f"vaultproxy: {e}; {wrong_password_hint(flag)}", file=sys.stderr)
                return False
            tty.say(f"wrong master password, try again ({tries - n} more)")
        finally:
            password.wipe()
        again = get_password(flag, home=home.path)
        assert again is not None
        password = again
    return False


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
    engine_loop.wanted()  # a VAULTPROXY_UVLOOP it does not understand: said before the prompt
    home = Home.resolve(args.home)
    home.require()
    check_free(listen, "--listen")  # a busy port: said at once, naming the flag
    check_free(admin_listen, "--admin-listen")
    # The prompt comes before the heavy imports (mitmproxy, the config models): a person
    # at the terminal is asked at once, not after seconds of silence.
    from vaultproxy.keystore import Keystore

    password: Secret | None = None
    if not Keystore.has_tpm_slot(home.keystore):
        password = get_password(args.password_file, required=False, home=home.path)
        if password is not None:
            check_strength(password)
        elif in_background():
            logging.getLogger(__name__).warning("no password prompt: " + BACKGROUND)

    # After the prompt (finding mitmproxy's addon package imports mitmproxy itself), before
    # anything imports mitmproxy.master or httpx (seam/imports.py).
    from vaultproxy.seam import imports as seam_imports

    seam_imports.lean()
    from vaultproxy.ca import load_ca, materialize_mitm_confdir
    from vaultproxy.core.state import ProxyState
    from vaultproxy.engine.serve import ServeOptions, serve
    from vaultproxy.errors import problems_text

    ca = load_ca(home)
    confdir = materialize_mitm_confdir(home)
    try:
        state = ProxyState.load(home)
    except ConfigError as e:
        print(f"vaultproxy: {home.services} is invalid:", file=sys.stderr)
        print(problems_text(e), file=sys.stderr)
        return 1
    mtls = (mtls_listener(home, state.registry.config.mtls,
                          parse_listen(args.mtls_listen, "--mtls-listen"), listen)
            if args.mtls_listen else None)
    from vaultproxy.cli.tpm import try_unlock

    sealed = try_unlock(home) if password is None else None  # a TPM slot: no password
    if sealed is None and password is None and Keystore.has_tpm_slot(home.keystore):
        # The TPM is unreachable or refuses the slot: the password is the recovery path.
        password = get_password(args.password_file, required=False, home=home.path)
    if sealed is not None:
        state.install_keystore(sealed)
    elif password is not None:
        if not _unlock(state, password, args.password_file, home):
            return 1
    else:
        logging.getLogger(__name__).warning(
            "no password source (no --password-file, no VAULTPROXY_PASSWORD_FILE, no terminal): "
            "starting LOCKED; intercepted hosts answer 503 until `vaultproxy unlock`"
        )
    tty.restore()  # echo back on: no more prompts
    opts = ServeOptions(listen=listen, confdir=str(confdir), admin_listen=admin_listen,
                        workers=workers, mtls=mtls, dashboard_listen=dashboard_listen)
    stop_echo = threading.Event()
    if sys.stdout.isatty():  # a person watches: one line per request (as `vaultproxy tail`)
        from vaultproxy.cli.tail import echo_records

        echo_records(home.audit, sys.stdout, stop_echo)
    try:
        return engine_loop.run(serve, state, ca, opts)
    except VaultproxyError as e:
        print(f"vaultproxy: {e}", file=sys.stderr)
        return 1
    finally:
        stop_echo.set()
