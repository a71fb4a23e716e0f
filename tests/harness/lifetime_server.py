"""A hostile upstream for credential-lifetime tests (an ``Upstream`` handler, real TLS): it
mints tokens, logs sessions in, forces re-mints with 401s, and reflects any credential it
ever saw or issued, on request, in a response header and body.

Its tokens, session ids and CSRF tokens are ``lt_<hex>``, not canaries: the negative twins
show one of them coming back verbatim through a service that never injected it.

Routes (every app on one server):

- ``POST /token``: an OAuth2 token endpoint (any client): ``{"access_token", "expires_in"}``.
- ``POST /login``: a session login that sets ``sid`` (a secret) and ``theme=dark`` cookies.
- ``POST /unifi/api/auth/login``: a UniFi OS login: a ``TOKEN`` cookie (JWT-shaped, its
  payload carries ``csrfToken``) and the same CSRF token in ``X-CSRF-Token``.
- ``/unifi/...``: ``X-API-KEY`` while ``api_key_valid``, else the session cookie + CSRF.
- ``/api/force401...``: always 401 (a minted service's token is dropped and minted anew).
- ``/cookies``: httpbin's echo, ``{"cookies": {NAME: VALUE}}`` of the request's ``Cookie``.
- ``/reflect/<what>[/...]``: ``first-token`` (the first token ``/token`` issued), ``sid`` (the last
  session id), ``csrf`` (the last CSRF token), ``first-bearer`` (the first bearer credential
  a request to host ``?of=HOST`` carried): in ``X-Echo`` and in the JSON body.
- anything else: 200 ``{"ok": true}``.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading

from tests.harness.upstream import Received, Reply

JSON = (b"content-type", b"application/json")


def value() -> str:
    return "lt_" + secrets.token_hex(16)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class LifetimeApp:
    def __init__(self, api_key: str = "") -> None:
        self.api_key = api_key or value()
        self.api_key_valid = True
        self.issued: list[str] = []  # tokens from /token, in order
        self.sids: list[str] = []
        self.csrfs: list[str] = []
        self.unifi_cookies: dict[str, str] = {}  # TOKEN cookie -> csrf
        self.bearers: dict[str, list[str]] = {}  # Host -> bearer credentials, in order
        self._lock = threading.Lock()

    def __call__(self, rec: Received) -> Reply:
        with self._lock:
            auth = rec.header("authorization") or ""
            if auth.startswith("Bearer "):
                host = (rec.header("host") or rec.header(":authority") or "").split(":")[0]
                self.bearers.setdefault(host, []).append(auth[7:])
            if rec.method == "POST" and rec.path == "/token":
                token = value()
                self.issued.append(token)
                return 200, [JSON], [json.dumps({"access_token": token, "expires_in": 3600,
                                                 "token_type": "Bearer"}).encode()]
            if rec.method == "POST" and rec.path == "/login":
                sid = value()
                self.sids.append(sid)
                return 200, [JSON, (b"set-cookie", f"sid={sid}; Path=/; HttpOnly".encode()),
                             (b"set-cookie", b"theme=dark; Path=/")], [b'{"ok": true}']
            if rec.method == "POST" and rec.path == "/unifi/api/auth/login":
                return self._unifi_login()
            if rec.path.startswith("/unifi/") and not self._unifi_ok(rec):
                return 401, [JSON], [b'{"error": "unauthorized"}']
            if "/api/force401" in rec.path:
                return 401, [JSON], [b'{"error": "token expired"}']
            if rec.path.endswith("/cookies"):
                jar = {}
                for pair in (rec.header("cookie") or "").split(";"):
                    name, _, val = pair.strip().partition("=")
                    if name:
                        jar[name] = val
                return 200, [JSON], [json.dumps({"cookies": jar}).encode()]
            if "/reflect/" in rec.path:
                what = rec.path.split("/reflect/", 1)[1].split("/")[0]
                return self._reflect(what, rec.query)
            return 200, [JSON], [b'{"ok": true}']

    def _unifi_login(self) -> Reply:
        csrf = value()
        claims = _b64(json.dumps({"userId": "u1", "csrfToken": csrf}).encode())
        jwt = f"{_b64(b'{}')}.{claims}.{_b64(secrets.token_bytes(16))}"
        self.csrfs.append(csrf)
        self.unifi_cookies[jwt] = csrf
        cookie = f"TOKEN={jwt}; path=/; samesite=strict; secure; httponly".encode()
        return 200, [JSON, (b"set-cookie", cookie), (b"x-csrf-token", csrf.encode())], [b"{}"]

    def _unifi_ok(self, rec: Received) -> bool:
        key = rec.header("x-api-key")
        if key is not None:
            return self.api_key_valid and key == self.api_key
        cookie = (rec.header("cookie") or "").strip()
        jwt = cookie.partition("TOKEN=")[2].split(";")[0]
        return jwt in self.unifi_cookies and rec.header("x-csrf-token") == self.unifi_cookies[jwt]

    def _reflect(self, what: str, query: str) -> Reply:
        of = query.partition("of=")[2].split("&")[0]  # first-bearer: of which Host
        found = {
            "first-token": self.issued[:1],
            "sid": self.sids[-1:],
            "csrf": self.csrfs[-1:],
            "first-bearer": self.bearers.get(of, [])[:1],
        }.get(what, [])
        echo = found[0] if found else ""
        body = json.dumps({"value": echo}).encode()
        return 200, [JSON, (b"x-echo", echo.encode())], [body]
