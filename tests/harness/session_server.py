"""Login-session upstreams for ``session`` and ``unifi_dual`` (a handler for
tests/harness/upstream.py's real TLS server).

Three apps on one server, told apart by the first path segment:

- ``/npm/...`` (Nginx Proxy Manager style): ``POST /npm/api/tokens`` with JSON
  ``{"identity", "secret"}`` answers ``{"token": ...}``; the API wants ``Authorization:
  Bearer <token>``.
- ``/dup/...`` (Duplicati style): ``POST /dup/login`` with JSON ``{"user": {"name",
  "pass"}}`` sets a ``session-id`` cookie; the API wants that cookie.
- ``/unifi/...`` (UniFi OS): ``X-API-KEY`` while the key is valid; ``POST
  /unifi/api/auth/login`` with ``{"username", "password"}`` sets a ``TOKEN`` cookie (a JWT
  whose payload carries ``csrfToken``) and answers the same token in ``X-CSRF-Token``; the
  API then wants the cookie and that header.

Every session expires on ``expire_sessions()``; a stale or missing credential is a 401.
Every issued token is a canary.
"""

from __future__ import annotations

import base64
import json
import threading
from collections import Counter

from tests.canary import make_canary
from tests.harness.upstream import Received, Reply

JSON = (b"content-type", b"application/json")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class SessionApp:
    def __init__(self, username: str, password: str, api_key: str) -> None:
        self.username = username
        self.password = password
        self.api_key = api_key
        self.api_key_valid = True
        self.sessions: dict[str, str] = {}  # live token/cookie -> app
        self.csrf: dict[str, str] = {}  # unifi cookie -> csrf
        self.logins: Counter[str] = Counter()
        self.refused_logins = 0
        self.api_ok: Counter[str] = Counter()
        self.api_refused: Counter[str] = Counter()
        self.received_bodies: list[bytes] = []
        self._lock = threading.Lock()

    def expire_sessions(self) -> None:
        with self._lock:
            self.sessions.clear()
            self.csrf.clear()

    # -- the handler ----------------------------------------------------------------------
    def __call__(self, rec: Received) -> Reply:
        app = rec.path.split("/")[1] if rec.path.count("/") >= 1 else ""
        with self._lock:
            if rec.method == "POST" and rec.path in ("/npm/api/tokens", "/dup/login",
                                                     "/unifi/api/auth/login"):
                return self._login(app, rec)
            return self._api(app, rec)

    def _ok_login(self, rec: Received, user_key: tuple[str, ...], pass_key: tuple[str, ...]
                  ) -> bool:
        try:
            data = json.loads(rec.body)
        except ValueError:
            return False

        def at(path: tuple[str, ...]) -> object:
            d: object = data
            for p in path:
                d = d.get(p) if isinstance(d, dict) else None
            return d

        return at(user_key) == self.username and at(pass_key) == self.password

    def _login(self, app: str, rec: Received) -> Reply:
        keys = {"npm": (("identity",), ("secret",)), "dup": (("user", "name"), ("user", "pass")),
                "unifi": (("username",), ("password",))}[app]
        if not self._ok_login(rec, *keys):
            self.refused_logins += 1
            return 401, [JSON], [b'{"error": "bad credentials"}']
        self.logins[app] += 1
        if app == "npm":
            token = make_canary()
            self.sessions[token] = app
            return 200, [JSON], [json.dumps({"token": token, "expires": "never"}).encode()]
        if app == "dup":
            sid = make_canary()
            self.sessions[f"session-id={sid}"] = app
            cookie = f"session-id={sid}; Path=/; HttpOnly; Secure".encode()
            return 200, [JSON, (b"set-cookie", cookie),
                         (b"set-cookie", b"theme=dark; Path=/")], [b'{"ok": true}']
        csrf = make_canary()
        claims = _b64(json.dumps({"userId": "u1", "csrfToken": csrf}).encode())
        jwt = f"{_b64(b'{}')}.{claims}.{make_canary()}"
        self.sessions[f"TOKEN={jwt}"] = app
        self.csrf[f"TOKEN={jwt}"] = csrf
        return 200, [JSON, (b"set-cookie", f"TOKEN={jwt}; path=/; samesite=strict; secure; "
                                           "httponly".encode()),
                     (b"x-csrf-token", csrf.encode())], [b'{"ok": true}']

    def _api(self, app: str, rec: Received) -> Reply:
        ok = False
        if app == "npm":
            auth = rec.header("authorization") or ""
            ok = auth.startswith("Bearer ") and self.sessions.get(auth[7:]) == "npm"
        elif app == "dup":
            ok = any(self.sessions.get(c.strip()) == "dup"
                     for c in (rec.header("cookie") or "").split(";"))
        elif app == "unifi":
            key = rec.header("x-api-key")
            if key is not None:
                ok = self.api_key_valid and key == self.api_key
            else:
                cookie = (rec.header("cookie") or "").strip()
                ok = (self.sessions.get(cookie) == "unifi"
                      and rec.header("x-csrf-token") == self.csrf.get(cookie))
        if not ok:
            self.api_refused[app] += 1
            return 401, [JSON], [b'{"error": "unauthorized"}']
        self.api_ok[app] += 1
        self.received_bodies.append(rec.body)
        # Reflect the credential received (a careless or hostile upstream): the proxy must
        # redact it before the agent sees it.
        seen = {"authorization": rec.header("authorization"), "cookie": rec.header("cookie"),
                "csrf": rec.header("x-csrf-token"), "api_key": rec.header("x-api-key")}
        body = json.dumps({"ok": True, "app": app, "path": rec.path, "seen": seen}).encode()
        echo = (rec.header("cookie") or rec.header("authorization") or "").encode()
        return 200, [JSON, (b"x-echo", echo)], [body]
