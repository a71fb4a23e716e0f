"""Dashboard logins: one-time login tokens (minted for `vaultproxy dashboard` through
``admin.sock``) exchanged for expiring browser sessions, each with its own CSRF token.

Only SHA-256 digests of tokens are kept, so a memory dump of this table gives nobody a
session; tokens are compared as digests in a dict lookup (no timing on the token bytes)."""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

LOGIN_TTL = 120.0  # seconds a printed login URL stays valid (and it works once)
SESSION_TTL = 12 * 3600.0  # a browser session lasts this long, then the login is needed again
MAX_SESSIONS = 64


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


@dataclass
class Session:
    csrf: str
    expires: float
    flash: list[str] = field(default_factory=list)  # notes for the next page shown


class Sessions:
    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 login_ttl: float = LOGIN_TTL, session_ttl: float = SESSION_TTL) -> None:
        self._clock = clock
        self.login_ttl, self.session_ttl = login_ttl, session_ttl
        self._logins: dict[str, float] = {}  # digest -> expiry
        self._sessions: dict[str, Session] = {}  # digest -> session
        self._lock = threading.Lock()

    def mint_login(self) -> str:
        token = secrets.token_urlsafe(32)
        now = self._clock()
        with self._lock:
            self._prune(now)
            self._logins[_digest(token)] = now + self.login_ttl
        return token

    def exchange(self, login_token: str) -> tuple[str, Session] | None:
        """A new session for a valid, unused login token (which is spent); else None."""
        now = self._clock()
        with self._lock:
            self._prune(now)
            expiry = self._logins.pop(_digest(login_token), None)
            if expiry is None or expiry < now:
                return None
            while len(self._sessions) >= MAX_SESSIONS:  # the oldest login makes room
                self._sessions.pop(next(iter(self._sessions)))
            sid = secrets.token_urlsafe(32)
            session = Session(csrf=secrets.token_urlsafe(32), expires=now + self.session_ttl)
            self._sessions[_digest(sid)] = session
            return sid, session

    def get(self, sid: str | None) -> Session | None:
        if not sid:
            return None
        now = self._clock()
        with self._lock:
            session = self._sessions.get(_digest(sid))
            if session is None or session.expires < now:
                self._sessions.pop(_digest(sid), None)
                return None
            return session

    def end(self, sid: str | None) -> None:
        if sid:
            with self._lock:
                self._sessions.pop(_digest(sid), None)

    def _prune(self, now: float) -> None:
        for d in [d for d, t in self._logins.items() if t < now]:
            del self._logins[d]
        for d in [d for d, s in self._sessions.items() if s.expires < now]:
            del self._sessions[d]


def csrf_matches(session: Session, sent: str | None) -> bool:
    return bool(sent) and secrets.compare_digest(session.csrf.encode(), (sent or "").encode())
