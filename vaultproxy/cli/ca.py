"""`vaultproxy ca show|bundle|rotate|init|reissue`: inspect the MITM CA, bundle it for agents,
rotate it, and limit it to the registered hosts (name constraints)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vaultproxy import ca as ca_mod
from vaultproxy.ca import constraints
from vaultproxy.cli import add_home
from vaultproxy.errors import UsageError
from vaultproxy.files.home import Home


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "ca",
        help="show the MITM CA or write the CA bundle for agents",
        description="Inspect the MITM CA that agents must trust.",
    )
    sub = parser.add_subparsers(dest="ca_command", metavar="ACTION")
    show = sub.add_parser(
        "show",
        help="CA path, subject, expiry and SHA-256 fingerprint",
        description="Print the CA certificate path, subject, expiry and SHA-256 fingerprint.",
    )
    add_home(show)
    show.set_defaults(func=cmd_show)
    bundle = sub.add_parser(
        "bundle",
        help="write system CAs + our CA to one file and print its path",
        description="Write ca-bundle.pem (system CAs + the vaultproxy CA) and print its path "
        "alone on stdout, for SSL_CERT_FILE / REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE.",
    )
    add_home(bundle)
    bundle.add_argument("--add", metavar="PEM", action="append", default=[],
                        help="also trust this CA file in the agents' bundle from now on "
                        "(recorded in services.toml as [agent] extra_ca), e.g. the private "
                        "CA of an internal package index reached through passthrough")
    bundle.set_defaults(func=cmd_bundle)

    rotate = sub.add_parser(
        "rotate",
        help="start, finish or abort a CA rotation (old and new CA overlap in the bundle)",
        description="Without flags: create the next CA (ca.next.crt) beside the current one; "
        "the proxy keeps signing with the current CA while ca-bundle.pem carries both. Trust "
        "ca.next.crt where agents need it, then run `ca rotate --finish` and restart the proxy. "
        "--abort drops the next CA. See docs/operator/TRANSPARENT-CA.md.",
    )
    add_home(rotate)
    phase = rotate.add_mutually_exclusive_group()
    phase.add_argument("--finish", action="store_true", help="promote the next CA")
    phase.add_argument("--abort", action="store_true", help="drop the next CA")
    rotate.set_defaults(func=cmd_rotate)

    init = sub.add_parser(
        "init",
        help="create the CA if missing; --constrain: limit it to the registered hosts",
        description="Create the MITM CA unless it exists (never replaces ca.key). With "
        "--constrain the CA certificate carries a critical Name Constraints extension that "
        "permits only the hosts in services.toml: clients that enforce it reject a "
        "certificate for any other name, even one signed with a stolen ca.key. An existing "
        "CA is re-issued constrained (same key). See docs/operator/TRANSPARENT-CA.md.",
    )
    add_home(init)
    init.add_argument("--constrain", action="store_true",
                      help="permit only the registered hosts (name constraints)")
    init.set_defaults(func=cmd_init)
    reissue = sub.add_parser(
        "reissue",
        help="re-issue ca.crt (same key) for the hosts in services.toml now",
        description="Re-issue the CA certificate with the same key and subject: a "
        "constrained CA gets Name Constraints for the hosts registered now. Then re-trust "
        "ca.crt (ca/trust.sh replaces the previous certificate) and rebuild bundles.",
    )
    add_home(reissue)
    mode = reissue.add_mutually_exclusive_group()
    mode.add_argument("--constrain", dest="constrain", action="store_true", default=None,
                      help="add name constraints (default: keep whether the CA has them)")
    mode.add_argument("--no-constrain", dest="constrain", action="store_false",
                      help="drop the name constraints")
    reissue.set_defaults(func=cmd_reissue)

    def usage(_args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return 2

    parser.set_defaults(func=usage)


def cmd_show(args: argparse.Namespace) -> int:
    ca = ca_mod.load_ca(Home.resolve(args.home))
    expiry = ca.not_after.strftime("%Y-%m-%d %H:%M:%S UTC")
    if ca.is_expired():
        expiry += " (EXPIRED: move ca.key/ca.crt away, run `vaultproxy init`, re-trust ca.crt)"
    sys.stdout.write(
        f"path:    {ca.cert_path}\n"
        f"key:     {ca.key_path}\n"
        f"subject: {ca.subject}\n"
        f"expires: {expiry}\n"
        f"sha256:  {ca.fingerprint_sha256}\n"
    )
    return 0


def cmd_bundle(args: argparse.Namespace) -> int:
    home = Home.resolve(args.home)
    if args.add:
        _add_extra(home, args.add)
    sys.stdout.write(f"{ca_mod.build_bundle(home)}\n")
    return 0


def _add_extra(home: Home, files: list[str]) -> None:
    """Append each file to ``[agent] extra_ca`` (comment-preserving, validated)."""
    from vaultproxy.config.edit import set_table_key
    from vaultproxy.config.load import load_config
    from vaultproxy.config.rules import RuleViolation, check_ca_file

    current = list(load_config(home.services).agent.extra_ca)
    for name in files:
        path = Path(name).expanduser().absolute()
        try:
            check_ca_file(path)
        except RuleViolation as e:
            raise UsageError(f"--add {name}: {e}") from None
        entry = str(path.relative_to(home.path)) if path.is_relative_to(home.path) else str(path)
        if entry not in current:
            current.append(entry)
            sys.stderr.write(f"added {entry} to [agent] extra_ca in {home.services}\n")
    set_table_key(home.services, "agent", "extra_ca", current)


def cmd_rotate(args: argparse.Namespace) -> int:
    home = Home.resolve(args.home)
    if args.abort:
        found = ca_mod.rotate_abort(home)
        sys.stdout.write("rotation aborted\n" if found else "no rotation in progress\n")
        return 0
    if args.finish:
        ca = ca_mod.rotate_finish(home)
        sys.stdout.write(
            f"new CA active: {ca.cert_path}\nsha256:  {ca.fingerprint_sha256}\n"
            f"old certificate kept as {ca_mod.retired_cert_path(home)}: untrust it once no "
            "agent needs it. Restart `vaultproxy run` to sign with the new CA.\n"
        )
        return 0
    constrained = constraints.constraints_of(ca_mod.load_ca(home).cert) is not None
    cert = ca_mod.rotate_start(home)
    if constrained:  # the next CA carries today's name constraints too
        cert = constraints.constrain_next(home, _hosts(home))
        ca_mod.build_bundle(home)
    _key, path = ca_mod.next_paths(home)
    sys.stdout.write(
        f"next CA: {path}\nsha256:  {ca_mod.fingerprint(cert)}\n"
        "The proxy still signs with the current CA; ca-bundle.pem now carries both. Trust the "
        "next CA where needed (ca/trust.sh), then run `vaultproxy ca rotate --finish`.\n"
    )
    return 0


def _hosts(home: Home) -> list[str]:
    from vaultproxy.config.load import load_config

    return constraints.registered_hosts(load_config(home.services).services)


def _say_reissued(home: Home, ca: ca_mod.CA) -> None:
    nc = constraints.constraints_of(ca.cert)
    trees = [str(t.value) for t in (nc.permitted_subtrees or [])] if nc else []
    sys.stdout.write(
        f"CA certificate {ca.cert_path} re-issued (same key)\n"
        f"sha256:  {ca.fingerprint_sha256}\n"
        + (f"permits: {', '.join(trees)}\n" if nc else "name constraints: none\n")
        + f"bundle:  {ca_mod.build_bundle(home)}\n"
        "Re-trust it where it was trusted: `sudo ca/trust.sh` replaces the previous "
        "certificate of this CA; a browser or NODE_EXTRA_CA_CERTS copy needs the new ca.crt. "
        "A running proxy keeps working (same key).\n"
    )


def cmd_init(args: argparse.Namespace) -> int:
    home = Home.resolve(args.home)
    home.create()
    hosts = _hosts(home) if args.constrain else None
    created = ca_mod.ensure_ca(home)
    if args.constrain:
        _say_reissued(home, constraints.reissue_ca(home, hosts))
        return 0
    ca = ca_mod.load_ca(home)
    what = "created" if created else "exists (left unchanged)"
    sys.stdout.write(f"CA {what}: {ca.cert_path}\nsha256:  {ca.fingerprint_sha256}\n")
    return 0


def cmd_reissue(args: argparse.Namespace) -> int:
    home = Home.resolve(args.home)
    current = ca_mod.load_ca(home)
    constrain = args.constrain
    if constrain is None:
        constrain = constraints.constraints_of(current.cert) is not None
    ca = constraints.reissue_ca(home, _hosts(home) if constrain else None)
    _say_reissued(home, ca)
    return 0
