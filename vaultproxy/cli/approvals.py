"""`vaultproxy approvals [--watch]`, `approve ID [--grant SECONDS]`, `deny ID` (SPEC §10).

They talk to the running proxy over ``admin.sock`` (``GET /v1/approvals``, ``POST
/v1/approvals/{id}``) and are recorded as ``decided_by: "cli"``. ``--watch`` waits for held
requests and asks at the terminal, one at a time: approve once, approve for
``grant_seconds``, deny (or skip). It shows agent, service, method, host, path and body size;
never a secret (the proxy has none of those in an approval)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from vaultproxy.cli import add_home
from vaultproxy.cli.control import call
from vaultproxy.cli.shown import shown
from vaultproxy.errors import UsageError, VaultproxyError
from vaultproxy.files.home import Home

POLL = 10.0  # long-poll seconds per GET /v1/approvals?wait=


def _fail(status: int, data: Any) -> VaultproxyError:
    err = data.get("error") if isinstance(data, dict) else None
    message = err.get("message") if isinstance(err, dict) else err
    return VaultproxyError(f"the proxy answered {status}: {message or 'no details'}")


def _list(home: Home, wait: float = 0) -> dict[str, Any]:
    status, data = call(home, "GET", f"/v1/approvals?wait={wait:g}")
    if status != 200:
        raise _fail(status, data)
    return data if isinstance(data, dict) else {}


def _shown(a: dict[str, Any]) -> dict[str, Any]:
    return {k: shown(v) if isinstance(v, str) else v for k, v in a.items()}


def describe(a: dict[str, Any]) -> str:
    a = _shown(a)
    size = "?" if a.get("body_size") is None else a["body_size"]
    return (f"{a['id']}  {a['state']:<9} agent={a.get('agent') or '-'} "
            f"service={a['service']} {a['method']} {a['host']}{a['path']} "
            f"body={size} bytes rule={a.get('rule')}")


def decide(home: Home, aid: str, decision: str, grant: float | None) -> dict[str, Any]:
    body: dict[str, Any] = {"decision": decision, "decided_by": "cli"}
    if grant is not None:
        body["grant_seconds"] = grant
    status, data = call(home, "POST", f"/v1/approvals/{aid}", json.dumps(body).encode())
    if status != 200:
        raise _fail(status, data)
    return data if isinstance(data, dict) else {}


def _outcome(a: dict[str, Any]) -> str:
    if a.get("state") == "denied":
        return f"{a['id']}: denied"
    until = a.get("grant_until")
    if not until:
        return f"{a['id']}: approved"
    when = time.strftime("%H:%M:%S", time.localtime(until))
    return f"{a['id']}: approved; the same agent+service+rule is admitted until {when}"


def cmd_approvals(args: argparse.Namespace) -> int:
    home = Home.resolve(args.home)
    if not args.watch:
        data = _list(home)
        items = data.get("approvals", [])
        if args.json:
            sys.stdout.write(json.dumps(items, indent=2) + "\n")
            return 0
        if not items:
            sys.stdout.write("no approvals\n")
        for a in items:
            sys.stdout.write(describe(a) + "\n")
        return 0
    return _watch(home)


def _ask(a: dict[str, Any], grant_seconds: float) -> str | None:
    a = _shown(a)
    size = "?" if a.get("body_size") is None else a["body_size"]
    sys.stdout.write(
        f"\napproval {a['id']} ({a.get('via', 'proxy')}):\n"
        f"  agent:   {a.get('agent') or '(anonymous)'}\n"
        f"  service: {a['service']}\n"
        f"  request: {a['method']} https://{a['host']}{a['path']}\n"
        f"  body:    {size} bytes\n"
        f"  rule:    {a.get('rule')}\n"
        f"[o] approve once  [g] approve for {grant_seconds:g} s  [d] deny  [s] skip > "
    )
    sys.stdout.flush()
    line = sys.stdin.readline()
    if not line:
        raise EOFError
    return {"o": "once", "g": "grant", "d": "deny", "s": None}.get(line.strip().lower()[:1], "?")


def _watch(home: Home) -> int:
    seen: set[str] = set()
    sys.stdout.write("watching for held requests (Ctrl-C to stop)\n")
    sys.stdout.flush()
    try:
        while True:
            data = _list(home)
            if not _pending(data, seen):
                data = _list(home, POLL)  # answers at the next change
            for a in _pending(data, seen):
                seen.add(a["id"])
                while True:
                    choice = _ask(a, float(data.get("grant_seconds", 0)))
                    if choice != "?":
                        break
                    sys.stdout.write("please answer o, g, d or s\n")
                if choice is None:
                    continue
                try:
                    done = decide(home, a["id"], "deny" if choice == "deny" else "approve",
                                  float(data.get("grant_seconds", 0)) if choice == "grant"
                                  else None)
                except VaultproxyError as e:
                    sys.stdout.write(f"{e}\n")
                    continue
                sys.stdout.write(_outcome(done) + "\n")
                sys.stdout.flush()
    except (KeyboardInterrupt, EOFError):
        sys.stdout.write("\n")
        return 0


def _pending(data: dict[str, Any], seen: set[str]) -> list[dict[str, Any]]:
    return [a for a in data.get("approvals", [])
            if a.get("state") == "pending" and a.get("id") not in seen]


def cmd_approve(args: argparse.Namespace) -> int:
    if args.grant is not None and args.grant <= 0:
        raise UsageError("--grant takes a number of seconds above 0")
    done = decide(Home.resolve(args.home), args.id, "approve", args.grant)
    sys.stdout.write(_outcome(done) + "\n")
    return 0


def cmd_deny(args: argparse.Namespace) -> int:
    done = decide(Home.resolve(args.home), args.id, "deny", None)
    sys.stdout.write(_outcome(done) + "\n")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("approvals", help="list held requests; --watch decides them at the "
                       "terminal", description="Requests a rule holds for approval (SPEC §10).")
    add_home(p)
    p.add_argument("--watch", action="store_true",
                   help="wait for held requests and ask: approve once / for grant_seconds / deny")
    p.add_argument("--json", action="store_true", help="print the list as JSON")
    p.set_defaults(func=cmd_approvals)
    p = sub.add_parser("approve", help="approve a held request (or a timed-out one: its retry "
                       "then passes)")
    add_home(p)
    p.add_argument("id", help="the approval id (from `vaultproxy approvals` or the 403's "
                   "X-Vaultproxy-Approval header)")
    p.add_argument("--grant", type=float, metavar="SECONDS",
                   help="also admit the same agent + service + rule for SECONDS")
    p.set_defaults(func=cmd_approve)
    p = sub.add_parser("deny", help="deny a held request (403 approval_denied)")
    add_home(p)
    p.add_argument("id", help="the approval id")
    p.set_defaults(func=cmd_deny)
