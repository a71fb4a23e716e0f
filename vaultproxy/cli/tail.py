"""`vaultproxy tail [--follow] [--service S] [--agent A] [--json]`: what agents do, one line
per audit record (time, agent, service, method, host, path, status, outcome).

It reads the running proxy over ``admin.sock`` (``GET /v1/audit``, then the SSE stream
``GET /v1/audit/stream`` with ``--follow``), so it needs no token and sees every worker's
records. ``vaultproxy run`` prints the same line per record when its stdout is a terminal
(``echo_records``).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any, TextIO

from vaultproxy.cli import add_home
from vaultproxy.cli.control import NotRunning, _fail, _UnixConnection, call
from vaultproxy.cli.shown import shown
from vaultproxy.errors import VaultproxyError
from vaultproxy.files.home import Home


def _cell(value: object, width: int) -> str:
    text = "-" if value is None or value == "" else str(value)
    return text.ljust(width)


def format_record(record: dict[str, Any]) -> str:
    """One readable line: ``time agent service method host path status outcome (reason)``."""
    ts = str(record.get("ts") or "")
    when = ts.replace("T", " ").rstrip("Z")
    event = record.get("event")
    reason = record.get("reason")
    if event == "admin":
        who = record.get("caller") or "-"
        what = f"{record.get('method') or ''} {record.get('path') or ''}".strip()
        tail = f" ({reason})" if reason else ""
        return (f"{when}  {_cell('admin', 12)} {_cell(who, 14)} {what} "
                f"{_cell(record.get('status'), 3)} {record.get('outcome')}{tail}")
    target = f"{record.get('host') or '-'}{record.get('path') or ''}"
    status = record.get("status")
    outcome = str(record.get("outcome") or "-")
    if event and event not in ("request", "forward"):
        outcome = f"{event}:{outcome}"
    elif event == "forward":
        outcome = "forwarding"
    tail = f" ({reason})" if reason and reason != outcome else ""
    return (f"{when}  {_cell(record.get('agent'), 12)} {_cell(record.get('service'), 14)} "
            f"{_cell(record.get('method'), 6)} {target} {_cell(status, 3)} {outcome}{tail}")


def _emit(record: dict[str, Any], as_json: bool, out: TextIO) -> None:
    line = json.dumps(record, separators=(",", ":")) if as_json else shown(format_record(record))
    out.write(line + "\n")
    out.flush()


def _history(home: Home, args: argparse.Namespace) -> list[dict[str, Any]]:
    if args.lines <= 0:
        return []
    query: dict[str, str] = {"limit": str(args.lines if args.agent is None else 10000)}
    if args.service:
        query["service"] = args.service
    status, data = call(home, "GET", "/v1/audit?" + urllib.parse.urlencode(query))
    if status != 200:
        raise _fail(status, data)
    records = [r for r in data.get("records", []) if isinstance(r, dict)]
    if args.agent is not None:
        records = [r for r in records if r.get("agent") == args.agent]
    return records[-args.lines:]


def _follow(home: Home, args: argparse.Namespace, out: TextIO) -> int:
    query = {k: v for k, v in (("service", args.service), ("agent", args.agent)) if v}
    path = "/v1/audit/stream" + ("?" + urllib.parse.urlencode(query) if query else "")
    conn = _UnixConnection(str(home.admin_sock))
    conn.timeout = None  # a quiet proxy sends a keepalive comment every 15 s
    try:
        conn.request("GET", path, headers={"Accept": "text/event-stream"})
        response = conn.getresponse()
        if response.status != 200:
            raw = response.read()
            raise _fail(response.status, json.loads(raw) if raw else {})
        sys.stderr.write(f"vaultproxy: following the audit of {home.path} (Ctrl-C ends)\n")
        sys.stderr.flush()
        for raw_line in response:
            line = raw_line.decode("utf-8", "replace").rstrip("\r\n")
            if not line.startswith("data:"):
                continue
            try:
                record = json.loads(line[5:].strip())
            except ValueError:
                continue
            if isinstance(record, dict):
                _emit(record, args.json, out)
    except (ConnectionRefusedError, FileNotFoundError):
        raise NotRunning(f"vaultproxy is not running for {home.path}; start it with "
                         f"`vaultproxy run --home {home.path}`") from None
    except OSError as e:
        raise VaultproxyError(f"lost the stream from {home.admin_sock}: {e.strerror or e}") \
            from None
    finally:
        conn.close()
    sys.stderr.write("vaultproxy: the proxy stopped; the stream ended\n")
    return 0


def cmd_tail(args: argparse.Namespace) -> int:
    home = Home.resolve(args.home)
    out = sys.stdout
    for record in _history(home, args):
        _emit(record, args.json, out)
    if not args.follow:
        return 0
    try:
        return _follow(home, args, out)
    except KeyboardInterrupt:
        return 0


def echo_records(path: Path, out: TextIO, stop: threading.Event,
                 interval: float = 0.2) -> threading.Thread:
    """`vaultproxy run` on a terminal: print one line per new record of ``path`` (every
    process's) until ``stop`` is set. A daemon thread: it never holds up the exit."""
    from vaultproxy.audit.follow import Follower

    def loop() -> None:
        with Follower(path) as follower:
            while not stop.is_set():
                try:
                    for record in follower.records():
                        out.write(shown(format_record(record)) + "\n")
                    out.flush()
                except (OSError, ValueError):
                    return  # the terminal went away: the audit file still has everything
                time.sleep(interval)

    thread = threading.Thread(target=loop, name="vaultproxy-echo", daemon=True)
    thread.start()
    return thread


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "tail", help="audit records as readable lines (live with --follow)",
        description="Show the running proxy's audit records, one line each: time, agent, "
        "service, method, host+path, status, outcome (reason). Reads admin.sock; --follow "
        "keeps printing new records (every worker's) until Ctrl-C.")
    add_home(p)
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new records")
    p.add_argument("-n", "--lines", type=int, default=10, metavar="N",
                   help="how many past records to show first (default 10)")
    p.add_argument("--service", metavar="S", help="only this service's records")
    p.add_argument("--agent", metavar="A", help="only this agent's records")
    p.add_argument("--json", action="store_true", help="one JSON object per line (as stored)")
    p.set_defaults(func=cmd_tail)
