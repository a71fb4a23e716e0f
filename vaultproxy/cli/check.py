"""`vaultproxy check`: validate services.toml and, when it can be opened, the keystore refs.

Exit 0 with a one-line summary; exit 1 with every problem on stdout, one per line, as
``path: message``. Messages name fields, rules and secret *names*, never values.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from vaultproxy.ca import constraints
from vaultproxy.cli import add_home, add_password_file
from vaultproxy.cli.password import get_password, wrong_password_hint
from vaultproxy.config.load import load_config
from vaultproxy.config.models import Config
from vaultproxy.core.references import secret_problems, source_credential_problems
from vaultproxy.errors import ConfigError, KeystoreError, PermissionProblem
from vaultproxy.files.home import Home


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "check",
        help="validate services.toml (and that every referenced secret exists)",
        description="Validate services.toml; with a master password, also check that every "
        "secret it references exists in the keystore. Exit 0 ok, 1 with every problem "
        "listed as `path: message`.",
    )
    add_home(p)
    add_password_file(p)
    p.set_defaults(func=run)


def _check_secrets(home: Home, cfg: Config, password_file: str | None) -> tuple[list[str], str]:
    password = get_password(password_file, required=False, home=home.path)
    if password is None:
        return [], "secrets not checked (no master password; use --password-file)"
    if not home.keystore.exists():
        return ["keystore.enc: not found; run `vaultproxy init`"], ""
    from vaultproxy.keystore import Keystore  # lazy: pulls in argon2 and AES-GCM
    from vaultproxy.keystore.store import WrongPassword

    try:
        ks = Keystore.open(home.keystore, password)
    except WrongPassword as e:
        return [f"keystore.enc: {e}; {wrong_password_hint(password_file)}"], ""
    except (KeystoreError, PermissionProblem) as e:
        return [f"keystore.enc: {e}"], ""
    finally:
        password.wipe()
    problems = [p.line for p in secret_problems(cfg, ks)]
    problems += source_credential_problems(cfg, ks)
    return problems, f"{len(cfg.services)} secret reference(s) found in keystore.enc"


def passthrough_problems(cfg: Config) -> list[str]:
    """``passthrough_allow`` entries that can never let anything through."""
    from vaultproxy.net.egress import passthrough_never_applies

    out = []
    for j, entry in enumerate(cfg.proxy.passthrough_allow):
        why = passthrough_never_applies(entry)
        if why is not None:
            out.append(f"proxy.passthrough_allow[{j}]: can never apply: {why}; remove it "
                       "(see docs/operator/SERVICES.md)")
    return out


def run(args: argparse.Namespace) -> int:
    home = Home.resolve(args.home)
    try:
        cfg = load_config(home.services)
    except ConfigError as e:
        return _fail(e.problems)
    problems, note = _check_secrets(home, cfg, args.password_file)
    problems = passthrough_problems(cfg) + problems
    if problems:
        return _fail(problems)
    for line in constraints.home_warnings(home, constraints.registered_hosts(cfg.services)):
        sys.stderr.write(f"vaultproxy: {line}\n")
    hosts = sum(len(s.hosts) for s in cfg.services)
    sys.stdout.write(f"services.toml OK: {len(cfg.services)} service(s), {hosts} host(s); "
                     f"{note}\n")
    return 0


def _fail(problems: list[str]) -> int:
    sys.stdout.write("".join(f"{line}\n" for line in problems))
    sys.stderr.write(f"vaultproxy check: {len(problems)} problem(s)\n")
    return 1
