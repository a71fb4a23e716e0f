"""`vaultproxy stop` and `vaultproxy try SERVICE [PATH]`: stop the running proxy, and send
one request through it the way an agent would (a quick end-to-end check of a service)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from vaultproxy.cli import add_home
from vaultproxy.cli.control import NotRunning, _fail, _run_json, call, error_message
from vaultproxy.errors import UsageError, VaultproxyError
from vaultproxy.files.home import Home, pid_alive

STOP_WAIT = 60.0  # drains in-flight requests (bounded), flushes the audit, stops workers
TRY_TIMEOUT = 30.0


def cmd_stop(args: argparse.Namespace) -> int:
    home = Home.resolve(args.home)
    try:
        call(home, "GET", "/v1/health")  # a proxy answers on this home's admin.sock
    except NotRunning:
        sys.stdout.write(f"vaultproxy is not running for {home.path}; nothing to stop\n")
        return 0
    pid = _run_json(home).get("pid")
    if not isinstance(pid, int) or not pid_alive(pid):
        raise VaultproxyError(f"a proxy answers on {home.admin_sock} but {home.run_json} "
                              "names no live pid (a mitmdump-hosted proxy?); stop it where "
                              "it was started")
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + args.timeout
    while pid_alive(pid) and _same_proxy(home, pid):
        if time.monotonic() > deadline:
            raise VaultproxyError(f"vaultproxy (pid {pid}) is still running {args.timeout:g} s "
                                  f"after SIGTERM; `kill -KILL {pid}` ends it at once")
        time.sleep(0.05)
    sys.stdout.write(f"stopped vaultproxy (pid {pid}) for {home.path}\n")
    return 0


def _same_proxy(home: Home, pid: int) -> bool:
    """Still the process we signalled: run.json names it (it removes run.json on exit) or,
    as a zombie of our own shell, it is gone from /proc's point of view anyway."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            if f.read().split(b") ", 1)[-1][:1] == b"Z":
                return False  # exited; only its parent has not reaped it yet
    except OSError:
        return False
    return True


def _service(home: Home, name: str) -> dict[str, Any]:
    status, data = call(home, "GET", "/v1/services")
    if status != 200:
        raise _fail(status, data)
    services = {s["name"]: s for s in data.get("services", [])}
    if name not in services:
        known = ", ".join(sorted(services)) or "none"
        raise UsageError(f"no service named {name!r} in the running proxy (it serves: {known})")
    return dict(services[name])


def _injected(home: Home, service: str, since: str, path: str) -> dict[str, Any] | None:
    query = urllib.parse.urlencode({"limit": "50", "service": service, "since": since})
    status, data = call(home, "GET", f"/v1/audit?{query}")
    if status != 200:
        return None
    for record in reversed(data.get("records", [])):
        if record.get("event") == "request" and record.get("path") == path:
            return dict(record)
    return None


TRY_BODY = 1 << 20  # what `try` reads of a body at most (it prints none of it)


def cmd_try(args: argparse.Namespace) -> int:
    from vaultproxy.audit import utc_timestamp

    home = Home.resolve(args.home)
    service = _service(home, args.service)
    proxy = _run_json(home).get("proxy_url")
    if not proxy:
        raise VaultproxyError(f"{home.run_json} names no proxy address; is `vaultproxy run` "
                              "still starting?")
    path = args.path if args.path.startswith("/") else "/" + args.path
    url = f"https://{service['hosts'][0]}{path}"
    ctx = ssl.create_default_context(cafile=str(home.ca_cert))
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({"https": proxy, "http": proxy}),
        urllib.request.HTTPSHandler(context=ctx))
    since = utc_timestamp()
    started = time.monotonic()
    body = b""
    try:
        with opener.open(urllib.request.Request(url, method="GET"),  # noqa: S310
                         timeout=TRY_TIMEOUT) as response:
            status, headers = response.status, response.headers
            response.read(TRY_BODY)  # the whole exchange, as a client would (then recorded)
    except urllib.error.HTTPError as e:
        status, headers, body = e.code, e.headers, e.read(4096)
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise VaultproxyError(f"GET {url} through {proxy} failed: {reason}") from None
    ms = (time.monotonic() - started) * 1000
    code = headers.get("X-Vaultproxy-Error")
    sys.stdout.write(f"GET {url} via {proxy}: {status} in {ms:.0f} ms\n")
    if code:
        message = error_message(_json(body)) or code
        sys.stdout.write(f"  refused by vaultproxy: {code}: {message}\n")
    # A streamed response is recorded at its end, which can come a moment after the client
    # read its last byte: look again for a little while before saying "no".
    record = _injected(home, args.service, since, path.split("?", 1)[0])
    deadline = time.monotonic() + 3.0
    while record is None and code is None and time.monotonic() < deadline:
        time.sleep(0.1)
        record = _injected(home, args.service, since, path.split("?", 1)[0])
    injected = record is not None and record.get("outcome") == "injected"
    sys.stdout.write(f"  credential injected: {'yes' if injected else 'no'}"
                     + (f" (service {args.service}, {service.get('mode')} mode)" if injected
                        else "") + "\n")
    return 0 if code is None else 1


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return {}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("stop", help="stop the running proxy (SIGTERM, wait until it exits)",
                       description="Send SIGTERM to the proxy running for this home and wait "
                       "until it has exited (in-flight requests finish, the audit is flushed).")
    add_home(p)
    p.add_argument("--timeout", type=float, default=STOP_WAIT, metavar="SECONDS",
                   help=f"how long to wait (default {STOP_WAIT:g})")
    p.set_defaults(func=cmd_stop)
    p = sub.add_parser("try", help="one request through the running proxy to a service",
                       description="Send GET https://<service's first host><PATH> through the "
                       "running proxy, trusting its CA, as an agent would; print the status, "
                       "the latency and whether a credential was injected. Exit 1 when "
                       "vaultproxy itself refused it.")
    add_home(p)
    p.add_argument("service", metavar="SERVICE")
    p.add_argument("path", metavar="PATH", nargs="?", default="/")
    p.set_defaults(func=cmd_try)
    from vaultproxy.cli.doctor import register as register_doctor

    register_doctor(sub)
