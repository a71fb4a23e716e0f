"""`vaultproxy ca show` and `vaultproxy ca bundle`: inspect the MITM CA, bundle it for agents."""

from __future__ import annotations

import argparse
import sys

from vaultproxy import ca as ca_mod
from vaultproxy.cli import add_home
from vaultproxy.home import Home


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
    bundle.set_defaults(func=cmd_bundle)

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
    sys.stdout.write(f"{ca_mod.build_bundle(Home.resolve(args.home))}\n")
    return 0
