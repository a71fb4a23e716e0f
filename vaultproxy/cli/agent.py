"""`vaultproxy agent add|list|rm`: agent identities with service scopes.

``add`` prints the new token once, alone on stdout; the keystore keeps only its salted hash
(see vaultproxy/agents.py). A running proxy loads agents when it unlocks: restart it (or
lock and unlock it) after adding or removing one.
"""

from __future__ import annotations

import argparse
import datetime
import sys

from vaultproxy import agents
from vaultproxy.cli import add_home, add_password_file
from vaultproxy.cli.password import open_store
from vaultproxy.config.load import load_config
from vaultproxy.errors import KeystoreError, UsageError
from vaultproxy.home import Home
from vaultproxy.keystore import Keystore

RELOAD_NOTE = (
    "note: a running proxy loads agents when it unlocks; restart it (or lock and unlock it) "
    "to apply this change\n"
)


def _note_if_running(home: Home) -> None:
    if home.run_json.exists():
        sys.stderr.write(RELOAD_NOTE)


def _add(args: argparse.Namespace) -> int:
    agents.check_name(args.name)
    wanted = agents.parse_services(args.services)
    if not wanted:
        raise UsageError("--services needs at least one service name, e.g. --services a,b")
    home = Home.resolve(args.home)
    known = {s.name for s in load_config(home.services).services}
    unknown = [s for s in wanted if s not in known]
    if unknown:
        raise UsageError(
            f"unknown service(s) {', '.join(unknown)} in --services; services.toml defines: "
            f"{', '.join(sorted(known)) or '(none)'}"
        )
    store = open_store(args)
    entry = agents.entry_name(args.name)
    if store.get_internal(entry) is not None:
        raise UsageError(
            f"agent {args.name} already exists; `vaultproxy agent rm {args.name}` first to "
            "replace its token"
        )
    token = agents.new_token()
    try:
        record = agents.make_record(args.name, token, wanted, Keystore.clock())
        store.set_internal(entry, record.encode())
        store.save()
        sys.stdout.write(token.reveal_str() + "\n")
        _tell_running(args, "agent-add")
        sys.stdout.flush()
    finally:
        token.wipe()
    sys.stderr.write(
        f"agent {args.name} may use: {', '.join(wanted)}. The token above is shown once; "
        f"give it to the agent via `vaultproxy exec --agent {args.name} --token-file F` "
        "or $VAULTPROXY_AGENT_TOKEN.\n"
    )
    _note_if_running(home)
    return 0


def _records(store: Keystore) -> list[agents.AgentRecord]:
    out: list[agents.AgentRecord] = []
    for entry in store.internal_names(agents.NAMESPACE):
        value = store.get_internal(entry)
        if value is not None:
            out.extend(agents.load_records([(entry, value)]).values())
    return out


def _list(args: argparse.Namespace) -> int:
    store = open_store(args)
    records = _records(store)
    if not records:
        sys.stdout.write("no agents\n")
        return 0
    rows = [("NAME", "SERVICES", "CREATED")]
    for r in records:
        created = datetime.datetime.fromtimestamp(r.created, datetime.UTC)
        rows.append((r.name, ",".join(sorted(r.services)), created.strftime("%Y-%m-%dT%H:%M:%SZ")))
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    for row in rows:
        sys.stdout.write(f"{row[0].ljust(widths[0])}  {row[1].ljust(widths[1])}  {row[2]}\n")
    return 0


def _rm(args: argparse.Namespace) -> int:
    agents.check_name(args.name)
    store = open_store(args)
    if not store.remove_internal(agents.entry_name(args.name)):
        raise KeystoreError(f"no agent named {args.name}; `vaultproxy agent list` shows them")
    store.save()
    sys.stdout.write(f"removed agent {args.name}\n")
    _tell_running(args, "agent-rm")
    _note_if_running(Home.resolve(args.home))
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("agent", help="add, list and remove agent identities",
                            description="Agent identities: a token per agent, limited to "
                            "the services it may use.")
    group = parser.add_subparsers(dest="agent_command", metavar="ACTION", required=True,
                                  parser_class=type(parser))
    p = group.add_parser("add", help="create an agent; prints its token once on stdout",
                         description="Create an agent allowed to use --services. Its token "
                         "is printed once, alone on stdout; only a salted hash is stored.")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--services", required=True, metavar="A,B",
                   help="comma-separated service names from services.toml")
    p.set_defaults(func=_add)
    p = group.add_parser("list", help="agent names, services and creation times")
    p.set_defaults(func=_list)
    p = group.add_parser("rm", help="remove an agent (its token stops working)")
    p.add_argument("name", metavar="NAME")
    p.set_defaults(func=_rm)
    for p in group.choices.values():
        add_home(p)
        add_password_file(p)


def _tell_running(args: argparse.Namespace, what: str) -> None:
    """A running proxy serves the agent change at once; said on stderr (stdout is the token)."""
    from vaultproxy.cli.control import apply_to_running
    from vaultproxy.home import Home

    said = apply_to_running(Home.resolve(args.home), what)
    if said is not None:
        sys.stderr.write(f"vaultproxy: {said}\n")
