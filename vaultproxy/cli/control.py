"""`vaultproxy status|unlock|lock|reload`: talk to the running proxy over ``admin.sock``.

The socket is 0600 in the 0700 home and the proxy checks SO_PEERCRED, so no token is
needed. ``unlock`` reads the master password from --password-file /
$VAULTPROXY_PASSWORD_FILE / a hidden prompt on the terminal and sends it in the request
body over that socket; it never takes it from argv.
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import sys
from typing import Any

from vaultproxy.cli import add_home, add_password_file, tty
from vaultproxy.cli.password import TRIES, get_password, source_of, wrong_password_hint
from vaultproxy.errors import VaultproxyError
from vaultproxy.files.home import Home

TIMEOUT = 60.0  # an unlock runs the KDF; every worker must confirm a change
NOT_RUNNING = 3  # `status` exit code when no proxy runs on this home (as systemctl/LSB)


class NotRunning(VaultproxyError):
    """Nothing listens on the home's admin.sock."""


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=TIMEOUT)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def call(home: Home, method: str, path: str, body: bytes | None = None,
         caller: str | None = None) -> tuple[int, Any]:
    """One admin API request over admin.sock -> (status, decoded JSON). ``caller`` names
    what asked (``X-Caller-Id``, recorded in the admin audit record)."""
    start = f"start it with `vaultproxy run --home {home.path}`"
    if not home.admin_sock.exists():
        raise NotRunning(f"vaultproxy is not running for {home.path} (no admin.sock); {start}")
    conn = _UnixConnection(str(home.admin_sock))
    headers = {"Content-Type": "application/json"} if body is not None else {}
    if caller is not None:
        headers["X-Caller-Id"] = caller
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        raw = response.read()
    except (ConnectionRefusedError, FileNotFoundError):
        raise NotRunning(f"vaultproxy is not running for {home.path} (nobody listens on "
                         f"{home.admin_sock}); {start}") from None
    except OSError as e:
        raise VaultproxyError(f"cannot talk to {home.admin_sock}: {e.strerror or e}") from None
    finally:
        conn.close()
    try:
        data = json.loads(raw) if raw else {}
    except ValueError:
        data = {}
    return response.status, _flat_error(data)


def _flat_error(data: Any) -> Any:
    """Lift the error object (SPEC §5: ``{"error": {"message", "type", "code", ...}}``) to
    ``error`` (the message), ``code`` and ``problems`` beside the rest, for the commands here."""
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        detail = data["error"]
        return {**data, **{k: v for k, v in detail.items() if k != "message"},
                "error": detail.get("message")}
    return data


def error_message(data: Any) -> str | None:
    """The message of an admin API error body (``{"error": {"message", "code"}}``)."""
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):
        return str(error.get("message") or error.get("code") or "") or None
    return str(error) if error else None


def _fail(status: int, data: Any) -> VaultproxyError:
    message = error_message(data)
    return VaultproxyError(f"the proxy answered {status}: {message or 'no details'}")


def _services(home: Home) -> list[dict[str, Any]]:
    status, data = call(home, "GET", "/v1/services")
    if status != 200:
        return []
    return list(data.get("services", []))


def _missing(services: list[dict[str, Any]]) -> list[str]:
    return [s["name"] for s in services if s.get("secret_present") is False]


def _run_json(home: Home) -> dict[str, Any]:
    try:
        data = json.loads(home.run_json.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def cmd_status(args: argparse.Namespace) -> int:
    home = Home.resolve(args.home)
    try:
        status, health = call(home, "GET", "/v1/health")
    except NotRunning as e:
        if args.json:
            sys.stdout.write(json.dumps({"running": False, "home": str(home.path)}) + "\n")
        else:
            sys.stdout.write(f"not running: {e}\n")
        return NOT_RUNNING
    if status != 200:
        raise _fail(status, health)
    services = _services(home)
    run = _run_json(home)
    if args.json:
        out = {"running": True, "home": str(home.path), "locked": health.get("locked"),
               "version": health.get("version"), "pid": run.get("pid"),
               "workers": run.get("workers"), "proxy_url": run.get("proxy_url"),
               "admin_url": run.get("admin_url"), "admin_socket": str(home.admin_sock),
               "dashboard_url": run.get("dashboard_url"),
               "services": [s["name"] for s in services], "secrets_missing": _missing(services)}
        sys.stdout.write(json.dumps(out) + "\n")
        return 0
    locked = health.get("locked")
    names = ", ".join(s["name"] for s in services)
    lines = [
        f"vaultproxy {health.get('version', '?')} running for {home.path}"
        + (f" (pid {run['pid']}, {run.get('workers', 1)} worker(s))" if "pid" in run else ""),
        f"  proxy:    {run.get('proxy_url', '?')}",
        f"  admin:    {run.get('admin_url') or 'no TCP listener'}, socket {home.admin_sock}",
        f"  dashboard: {run.get('dashboard_url') or 'off'}"
        + (" (log in: `vaultproxy dashboard`)" if run.get("dashboard_url") else ""),
        "  keystore: " + ("LOCKED (unlock with `vaultproxy unlock`)" if locked else "unlocked"),
        f"  services: {health.get('services', len(services))}" + (f": {names}" if names else ""),
    ]
    missing = _missing(services)
    if missing:
        lines.append(f"  secrets missing for: {', '.join(missing)} (`vaultproxy check` "
                     "says what to set)")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def cmd_unlock(args: argparse.Namespace) -> int:
    home = Home.resolve(args.home)
    status, health = call(home, "GET", "/v1/health")  # not running: say so before prompting
    if status == 200 and health.get("locked") is False:
        sys.stdout.write("already unlocked\n")
        return 0
    tries = TRIES if source_of(args.password_file) is None else 1
    for n in range(1, tries + 1):
        password = get_password(args.password_file, prompt="Master password (to unlock the "
                                "running proxy): ", home=home.path)
        assert password is not None
        try:
            body = json.dumps({"password": password.reveal_str()}).encode()
        finally:
            password.wipe()
        status, data = call(home, "POST", "/v1/unlock", body)
        del body
        if status != 403 or n >= tries:
            break
        tty.say(f"wrong master password, try again ({tries - n} more)")
    if status == 403:
        raise VaultproxyError(f"{error_message(data) or 'unlock failed'}; "
                              f"{wrong_password_hint(args.password_file)}")
    if status == 429:
        raise VaultproxyError(f"{error_message(data) or 'too many failed unlocks'}; "
                              "wait and try again")
    if status != 200:
        raise _fail(status, data)
    sys.stdout.write("unlocked\n")
    _say_missing(home)
    return 0


def _say_missing(home: Home) -> None:
    missing = _missing(_services(home))
    if missing:
        sys.stderr.write(f"vaultproxy: warning: no secret stored for: {', '.join(missing)}; "
                         "their requests fail with 502 secret_missing (`vaultproxy check` "
                         "says what to set)\n")


def cmd_lock(args: argparse.Namespace) -> int:
    home = Home.resolve(args.home)
    status, data = call(home, "POST", "/v1/lock")
    if status != 200:
        raise _fail(status, data)
    sys.stdout.write("locked: intercepted hosts answer 503 locked until `vaultproxy unlock`\n")
    return 0


def cmd_reload(args: argparse.Namespace) -> int:
    home = Home.resolve(args.home)
    status, data = call(home, "POST", "/v1/reload")
    if status == 409:
        error = data.get("error") if isinstance(data.get("error"), dict) else {}
        problems = data.get("problems") or error.get("problems") or []
        sys.stdout.write("".join(f"{p}\n" for p in problems))
        sys.stderr.write("vaultproxy: services.toml is invalid; the previous registry stays "
                         "in use (fix it and run `vaultproxy reload` again)\n")
        return 1
    if status != 200:
        raise _fail(status, data)
    sys.stdout.write(f"reloaded services.toml and keystore.enc: {data.get('before')} -> "
                     f"{data.get('after')} services\n")
    _say_missing(home)
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("status", help="is the proxy running, locked, serving which services",
                       description="Ask the running proxy (over admin.sock) for its state. "
                       f"Exit 0 when it runs, {NOT_RUNNING} when it does not.")
    add_home(p)
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("unlock", help="unlock the running proxy (prompts for the password)",
                       description="Unlock the running proxy's keystore. The master password "
                       "comes from --password-file / $VAULTPROXY_PASSWORD_FILE / a hidden "
                       "prompt, never from the command line.")
    add_home(p)
    add_password_file(p)
    p.set_defaults(func=cmd_unlock)
    p = sub.add_parser("lock", help="lock the running proxy (drops decrypted secrets)",
                       description="Lock the running proxy: decrypted secrets are dropped in "
                       "every worker; intercepted hosts answer 503 locked until unlocked.")
    add_home(p)
    p.set_defaults(func=cmd_lock)
    p = sub.add_parser("reload", help="re-read services.toml and keystore.enc (as SIGHUP)",
                       description="Re-read services.toml and keystore.enc in the running "
                       "proxy. An invalid services.toml is refused (every problem listed) "
                       "and the previous registry keeps serving.")
    add_home(p)
    p.set_defaults(func=cmd_reload)


def apply_to_running(home: Home, what: str = "keystore-write", *,
                     audit_locally: bool = True) -> str | None:
    """After the CLI wrote keystore.enc: a proxy running for this home re-reads it now
    (``POST /v1/reload`` over admin.sock, as SIGHUP). The sentence to tell the user, or None
    when no proxy runs (the next `vaultproxy run` reads the file anyway)."""
    try:
        status, health = call(home, "GET", "/v1/health")
        if status == 200 and health.get("locked"):
            return ("the running proxy is locked; it uses the change once unlocked "
                    "(`vaultproxy unlock`)")
        # The admin audit record of this reload names the command that asked for it.
        status, data = call(home, "POST", "/v1/reload", caller=f"cli-{what}")
    except NotRunning:
        if audit_locally:
            _audit_locally(home, what)
        return None
    except VaultproxyError as e:
        return f"the running proxy was not told ({e}); run `vaultproxy reload`"
    if status == 200:
        return "the running proxy uses it now"
    if status == 409:
        return ("the running proxy re-read keystore.enc and uses it now, but services.toml "
                "is invalid and was not reloaded (`vaultproxy check` lists why)")
    return (f"the running proxy answered {status} ({error_message(data) or 'no details'}); "
            "run `vaultproxy reload`")


def _audit_locally(home: Home, what: str) -> None:
    """No proxy to record it: the CLI appends the admin record itself (who and what, never
    a value), so audit.jsonl names every keystore change."""
    import os

    from vaultproxy.audit import ADMIN_EVENT, AuditEvent, AuditLog

    if not home.path.is_dir():
        return
    log = AuditLog(home.audit)
    try:
        log.record(AuditEvent(event=ADMIN_EVENT, method="CLI", path="keystore.enc",
                              outcome="ok", reason=what, caller=f"cli:uid={os.getuid()}"))
    finally:
        log.close()
