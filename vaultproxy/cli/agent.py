"""`vaultproxy agent add|list|rotate|rm`: agent identities with service scopes.

``add`` and ``rotate`` print the new token once, alone on stdout; the keystore keeps only its
salted hash and expiry (see vaultproxy/access/agents.py). Each change is written to the keystore,
recorded as an ``admin`` audit event (who and which agent, never the token) and, when a proxy
runs on this home, applied to it at once (``POST /v1/reload`` over admin.sock re-reads
keystore.enc in every worker).
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys

from vaultproxy.access import agents
from vaultproxy.audit import ADMIN_EVENT, AuditEvent
from vaultproxy.audit.log import AuditLog
from vaultproxy.cli import add_home, add_password_file
from vaultproxy.cli.password import open_store
from vaultproxy.config.load import load_config
from vaultproxy.errors import KeystoreError, UsageError
from vaultproxy.files.home import Home
from vaultproxy.keystore import Keystore
from vaultproxy.secret import Secret


def _audit(home: Home, action: str, name: str) -> None:
    """One ``admin`` audit record for the change: who (this uid) and which agent."""
    log = AuditLog(home.audit)
    try:
        ok = log.record(AuditEvent(event=ADMIN_EVENT, agent=name, outcome="ok", reason=action,
                                   caller=f"cli:uid={os.getuid()}"))
    finally:
        log.close()
    if not ok:
        sys.stderr.write(f"vaultproxy: warning: could not write {home.audit}; this change "
                         "is not in the audit log\n")


def _apply(home: Home, action: str) -> None:
    """Make a running proxy on this home re-read keystore.enc (every worker) now."""
    from vaultproxy.cli.control import apply_to_running

    said = apply_to_running(home, f"cli-{action.replace('_', '-')}", audit_locally=False)
    if said is not None:
        sys.stderr.write(f"vaultproxy: {said}\n")


def _changed(home: Home, action: str, name: str) -> None:
    _audit(home, action, name)
    _apply(home, action)


def _emit_token(token: Secret) -> None:
    try:
        sys.stdout.write(token.reveal_str() + "\n")
        sys.stdout.flush()
    finally:
        token.wipe()


def _expiry_note(record: agents.AgentRecord) -> str:
    return agents.format_expiry(record, Keystore.clock())


def _add(args: argparse.Namespace) -> int:
    agents.check_name(args.name)
    ttl = agents.parse_ttl(args.ttl)
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
    record = agents.make_record(args.name, token, wanted, Keystore.clock(), ttl)
    store.set_internal(entry, record.encode())
    store.save()
    _emit_token(token)
    sys.stderr.write(
        f"agent {args.name} may use: {', '.join(wanted)}; token expires: "
        f"{_expiry_note(record)}. The token above is shown once; give it to the agent via "
        f"`vaultproxy exec --agent {args.name} --token-file F` or $VAULTPROXY_AGENT_TOKEN.\n"
    )
    _changed(home, "agent_add", args.name)
    return 0


def _rotate(args: argparse.Namespace) -> int:
    agents.check_name(args.name)
    ttl = agents.parse_ttl(args.ttl) if args.ttl is not None else None
    home = Home.resolve(args.home)
    store = open_store(args)
    entry = agents.entry_name(args.name)
    value = store.get_internal(entry)
    if value is None:
        raise KeystoreError(f"no agent named {args.name}; `vaultproxy agent list` shows them")
    old = agents.AgentRecord.decode(args.name, value)
    token = agents.new_token()
    now = Keystore.clock()
    record = agents.rotated(old, token, now)
    if args.ttl is not None:  # a new lifetime (None from "never")
        record = agents.make_record(args.name, token, old.services, now, ttl)
    store.set_internal(entry, record.encode())
    store.save()
    _emit_token(token)
    sys.stderr.write(f"agent {args.name}: new token above (shown once; the old one no longer "
                     f"works); expires: {_expiry_note(record)}\n")
    _changed(home, "agent_rotate", args.name)
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
    now = Keystore.clock()
    rows = [("NAME", "SERVICES", "CREATED", "EXPIRES")]
    for r in records:
        created = datetime.datetime.fromtimestamp(r.created, datetime.UTC)
        rows.append((r.name, ",".join(sorted(r.services)),
                     created.strftime("%Y-%m-%dT%H:%M:%SZ"), agents.format_expiry(r, now)))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        cells = "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False))
        sys.stdout.write(f"{cells}  {row[3]}\n")
    return 0


def _rm(args: argparse.Namespace) -> int:
    agents.check_name(args.name)
    store = open_store(args)
    if not store.remove_internal(agents.entry_name(args.name)):
        raise KeystoreError(f"no agent named {args.name}; `vaultproxy agent list` shows them")
    store.save()
    sys.stdout.write(f"removed agent {args.name}\n")
    _changed(Home.resolve(args.home), "agent_rm", args.name)
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("agent", help="add, list, rotate and remove agent identities",
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
    p.add_argument("--ttl", default=agents.DEFAULT_TTL, metavar="DURATION",
                   help="token lifetime: 90s, 30m, 24h, 7d, 1h30m, or 'never' "
                   f"(default {agents.DEFAULT_TTL}); after it the proxy answers "
                   "407 agent_token_expired until `agent rotate`")
    p.set_defaults(func=_add)
    p = group.add_parser("list", help="agent names, services, creation and expiry times")
    p.set_defaults(func=_list)
    p = group.add_parser("rotate", help="replace an agent's token; prints the new one once",
                         description="Issue a new token for an agent (same services); the "
                         "old token stops working at once. A token with a lifetime gets the "
                         "same lifetime again from now, unless --ttl says otherwise.")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--ttl", default=None, metavar="DURATION",
                   help="a new lifetime (90s, 30m, 24h, 7d, never); default: the agent's "
                   "current one")
    p.set_defaults(func=_rotate)
    p = group.add_parser("rm", help="remove an agent (its token stops working)")
    p.add_argument("name", metavar="NAME")
    p.set_defaults(func=_rm)
    for p in group.choices.values():
        add_home(p)
        add_password_file(p)
