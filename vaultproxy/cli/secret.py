"""`vaultproxy secret set|list|rm`: edit keystore entries. Values come from stdin or a
hidden prompt, never from argv (argv shows in `ps` and in shell history)."""

from __future__ import annotations

import argparse
import datetime
import sys

from vaultproxy.cli import add_home, add_password_file
from vaultproxy.cli.password import ask_hidden, open_store
from vaultproxy.errors import KeystoreError, UsageError
from vaultproxy.keystore.entries import check_entry_name, check_name
from vaultproxy.secret import Secret

PIPE_IT = (
    "secret values are never taken from the command line (they would show in `ps` and "
    "shell history); pipe the value on stdin instead, e.g. "
    "`vaultproxy secret set NAME < file`, or run in a terminal to be prompted"
)


def read_value(name: str) -> Secret:
    """The value from stdin (one trailing newline stripped) or a hidden TTY prompt."""
    if sys.stdin.isatty():
        raw = ask_hidden(f"Value for {name} (hidden): ").encode("utf-8")
    else:
        raw = sys.stdin.buffer.read()
        if raw.endswith(b"\r\n"):
            raw = raw[:-2]
        elif raw.endswith(b"\n"):
            raw = raw[:-1]
    if not raw:
        raise UsageError(f"empty value for {name}; nothing was stored")
    return Secret(raw)


def _set(args: argparse.Namespace) -> int:
    if args.value:
        raise UsageError(PIPE_IT)
    check_entry_name(args.name)
    if args.field is not None:
        check_name(args.field, "field name")
    store = open_store(args)
    value = read_value(args.name if args.field is None else f"{args.name}.{args.field}")
    try:
        if args.field is None:
            store.set_value(args.name, value)
        else:
            store.set_field(args.name, args.field, value)
        store.save()
    finally:
        value.wipe()
    what = args.name if args.field is None else f"{args.name} field {args.field}"
    sys.stdout.write(f"stored {what}\n")
    _tell_running(args, "secret-set")
    return 0


def _when(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _list(args: argparse.Namespace) -> int:
    store = open_store(args)
    rows = [("NAME", "VALUE", "FIELDS", "UPDATED")]
    for name in store.names():
        entry = store.get(name)
        assert entry is not None
        fields = ",".join(sorted(entry.fields)) or "-"
        rows.append((name, "set" if entry.value is not None else "-", fields,
                     _when(entry.updated)))
    if len(rows) == 1:
        sys.stdout.write("no secrets stored\n")
        return 0
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        sys.stdout.write("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)))
        sys.stdout.write(f"  {r[3]}\n")
    return 0


def _rm(args: argparse.Namespace) -> int:
    check_entry_name(args.name)
    store = open_store(args)
    if not store.remove(args.name):
        raise KeystoreError(f"no secret named {args.name}; `vaultproxy secret list` shows them")
    store.save()
    sys.stdout.write(f"removed {args.name}\n")
    _tell_running(args, "secret-rm")
    return 0


def _tell_running(args: argparse.Namespace, what: str) -> None:
    """A running proxy serves the change at once (it re-reads keystore.enc); say so."""
    from vaultproxy.cli.control import apply_to_running
    from vaultproxy.files.home import Home

    said = apply_to_running(Home.resolve(args.home), what)
    if said is not None:
        sys.stdout.write(said + "\n")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("secret", help="store, list and remove secrets in the keystore",
                            description="Store, list and remove keystore secrets.")
    group = parser.add_subparsers(dest="secret_command", metavar="ACTION", required=True,
                                  parser_class=type(parser))
    p = group.add_parser("set", help="store a value (from stdin or a hidden prompt)",
                         description="Store a secret. The value is read from stdin (one "
                         "trailing newline removed) or a hidden prompt, never from argv.")
    p.add_argument("name", metavar="NAME", help="entry name; source.NAME holds the "
                   "credentials of the [[source]] NAME (e.g. source.bao --field token)")
    p.add_argument("--field", metavar="FIELD", help="store a named field (e.g. username)")
    p.add_argument("value", nargs="*", help=argparse.SUPPRESS)
    p.set_defaults(func=_set)
    p = group.add_parser("list", help="names, fields and update times (never values)")
    p.set_defaults(func=_list)
    p = group.add_parser("rm", help="remove a secret and all its fields")
    p.add_argument("name", metavar="NAME")
    p.set_defaults(func=_rm)
    from vaultproxy.cli.health import add_audit

    add_audit(group)
    for p in group.choices.values():
        add_home(p)
        add_password_file(p)
