"""Agent identities: tokens, their stored hashes, scopes, and Proxy-Authorization parsing.

Pure: no files, no sockets. An agent's keystore entry ``agent:NAME`` holds a JSON record
``{"v": 1, "salt": hex, "hash": hex, "services": [...], "created": ts, "expires": ts|null}``
where ``hash = HMAC-SHA256(key=salt, msg=token)``; ``expires`` is absent in records made
before tokens had a lifetime (they never expire). Tokens are 256-bit random strings, so a slow
KDF adds nothing but CPU per CONNECT; the per-agent salt keeps two agents' hashes unrelated.
The token itself is never stored. Verification is constant-time and does the same work for
an unknown name as for a known one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from vaultproxy.errors import UsageError
from vaultproxy.secret import Secret

NAMESPACE = "agent:"
NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
TOKEN_PREFIX = "vpa_"  # noqa: S105 - a prefix, not a secret
TOKEN_RE = re.compile(r"vpa_[A-Za-z0-9_-]{43}")
SALT_LEN = 16
RECORD_VERSION = 1
# Compared against when the name is unknown, so both paths cost one HMAC + one compare.
_DUMMY_SALT = secrets.token_bytes(SALT_LEN)
_DUMMY_HASH = secrets.token_bytes(32)


@dataclass(frozen=True)
class AgentRecord:
    """What the keystore holds for one agent (no token)."""

    name: str
    salt: bytes
    digest: bytes
    services: frozenset[str]
    created: float
    expires: float | None = None  # epoch seconds; None: the token never expires

    def __repr__(self) -> str:
        return f"AgentRecord(name={self.name!r}, services={sorted(self.services)!r})"

    @property
    def identity(self) -> str:
        """This agent's identity for grants and approvals: bound to its token (a new
        agent of the same name, or a rotated token, is another identity)."""
        return identity_of(self.digest)

    def allows(self, service: str) -> bool:
        return service in self.services

    def expired(self, now: float | None) -> bool:
        """True once ``now`` reaches ``expires``; an unknown ``now`` counts as expired for a
        token that has a lifetime (fail closed when a caller forgot the clock)."""
        return self.expires is not None and (now is None or now >= self.expires)

    def encode(self) -> Secret:
        data = {
            "v": RECORD_VERSION,
            "salt": self.salt.hex(),
            "hash": self.digest.hex(),
            "services": sorted(self.services),
            "created": self.created,
            "expires": self.expires,
        }
        return Secret(json.dumps(data, sort_keys=True).encode())

    @classmethod
    def decode(cls, name: str, value: Secret) -> AgentRecord:
        try:
            data = json.loads(value.reveal())
            if data.get("v") != RECORD_VERSION:
                raise ValueError("version")
            return cls(
                name=name,
                salt=bytes.fromhex(data["salt"]),
                digest=bytes.fromhex(data["hash"]),
                services=frozenset(str(s) for s in data["services"]),
                created=float(data["created"]),
                expires=None if data.get("expires") is None else float(data["expires"]),
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            raise ValueError(f"agent record {name} is malformed") from None


def identity_of(digest: bytes | None) -> str:
    """The identity key of the agent whose token hash is ``digest`` ("" for none). A prefix
    of the salted hash: it names the token, and reveals nothing the keystore does not."""
    return digest[:16].hex() if digest else ""


def check_name(name: str) -> None:
    if not NAME_RE.fullmatch(name):
        raise UsageError(
            f"invalid agent name {name!r}: use 1-64 of a-z 0-9 _ - (starting with a letter "
            "or digit)"
        )


def entry_name(name: str) -> str:
    return NAMESPACE + name


def new_token() -> Secret:
    """A fresh token, safe in a proxy URL's userinfo without quoting."""
    return Secret(TOKEN_PREFIX + secrets.token_urlsafe(32))


def _digest(salt: bytes, token: bytes) -> bytes:
    return hmac.new(salt, token, hashlib.sha256).digest()


def make_record(
    name: str, token: Secret, services: Iterable[str], now: float, ttl: float | None = None
) -> AgentRecord:
    """A record for ``token``; ``ttl`` seconds from ``now`` until it expires (None: never)."""
    check_name(name)
    salt = secrets.token_bytes(SALT_LEN)
    expires = None if ttl is None else now + ttl
    return AgentRecord(
        name, salt, _digest(salt, token.reveal()), frozenset(services), now, expires
    )


def rotated(record: AgentRecord, token: Secret, now: float) -> AgentRecord:
    """The same agent and scopes with ``token``; a token with a lifetime gets a new one of
    the same length from ``now`` (rotation is how an expired agent is brought back)."""
    ttl = None if record.expires is None else record.expires - record.created
    return make_record(record.name, token, record.services, now, ttl)


DEFAULT_TTL = "24h"
NEVER = "never"
_DURATION_PART = re.compile(r"(\d+)([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_TTL = 3650 * 86400


def parse_ttl(text: str) -> float | None:
    """``90s``, ``30m``, ``24h``, ``7d``, ``1h30m`` -> seconds; ``never`` -> None."""
    raw = text.strip().lower()
    if raw == NEVER:
        return None
    pos, total = 0, 0
    for m in _DURATION_PART.finditer(raw):
        if m.start() != pos:
            break
        total += int(m.group(1)) * _UNIT_SECONDS[m.group(2)]
        pos = m.end()
    if pos != len(raw) or not raw or total <= 0 or total > MAX_TTL:
        raise UsageError(
            f"invalid --ttl {text!r}: use a positive duration such as 90s, 30m, 24h, 7d or "
            f"1h30m (at most 3650d), or {NEVER!r} for a token that does not expire"
        )
    return float(total)


def format_expiry(record: AgentRecord, now: float) -> str:
    """``2026-12-07T08:00:00Z (in 23h59m)``, ``... (expired)`` or ``never``."""
    if record.expires is None:
        return NEVER
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.expires))
    left = int(record.expires - now)
    if left <= 0:
        return f"{when} (expired)"
    hours, rest = divmod(left, 3600)
    if hours:
        return f"{when} (in {hours}h{rest // 60:02d}m)"
    return f"{when} (in {rest // 60}m{rest % 60:02d}s)"


def verify(
    agents: Mapping[str, AgentRecord], name: str, token: bytes
) -> AgentRecord | None:
    """The agent when ``token`` is its token, else None (constant time in the token)."""
    record = agents.get(name)
    salt, expected = (record.salt, record.digest) if record else (_DUMMY_SALT, _DUMMY_HASH)
    ok = hmac.compare_digest(_digest(salt, token), expected)
    return record if (ok and record is not None) else None


def load_records(pairs: Iterable[tuple[str, Secret]]) -> dict[str, AgentRecord]:
    """Records from keystore (entry name, value) pairs; malformed ones are skipped."""
    out: dict[str, AgentRecord] = {}
    for entry, value in pairs:
        if not entry.startswith(NAMESPACE):
            continue
        name = entry[len(NAMESPACE):]
        try:
            out[name] = AgentRecord.decode(name, value)
        except ValueError:
            continue
    return out


@dataclass(frozen=True)
class Credentials:
    name: str
    token: bytes

    def __repr__(self) -> str:
        return f"Credentials(name={self.name!r}, token=***)"


def parse_proxy_authorization(value: str | None) -> Credentials | None:
    """``Basic base64(name:token)`` -> Credentials; None when absent or not Basic/decodable."""
    if not value:
        return None
    scheme, _, param = value.strip().partition(" ")
    if scheme.lower() != "basic" or not param.strip():
        return None
    try:
        raw = base64.b64decode(param.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, token = raw.partition(b":")
    if not sep:
        return None
    try:
        name = user.decode("ascii")
    except UnicodeDecodeError:
        return None
    return Credentials(name, token)


def parse_services(text: str) -> list[str]:
    """``a,b`` -> ["a", "b"] (trimmed, de-duplicated, order kept)."""
    out: list[str] = []
    for part in text.split(","):
        part = part.strip()
        if part and part not in out:
            out.append(part)
    return out
