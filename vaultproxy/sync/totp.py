"""The current one-time code of a TOTP seed (RFC 6238), computed when a request needs it.

A source marks fields whose value is a seed (``Fetched.totp``; Bitwarden's ``totp``): the
cache keeps the seed, and ``secret = "vw:Item#totp"`` injects the code valid *now*. Seeds:
a bare base32 secret (spaces and case ignored), or an ``otpauth://totp/...?secret=...``
URI with optional ``digits`` (6-8), ``period`` (seconds) and ``algorithm`` (SHA1, SHA256,
SHA512). Errors never quote the seed.
"""

from __future__ import annotations

import base64
import binascii
import time
from urllib.parse import parse_qs, urlsplit

from cryptography.hazmat.primitives.hashes import SHA1, SHA256, SHA512
from cryptography.hazmat.primitives.twofactor.totp import TOTP

from vaultproxy.errors import SecretMissing
from vaultproxy.secret import Secret

Algorithm = SHA1 | SHA256 | SHA512
_ALGORITHMS: dict[str, type[Algorithm]] = {"SHA1": SHA1, "SHA256": SHA256, "SHA512": SHA512}


def _params(seed: str) -> tuple[str, int, int, Algorithm]:
    if not seed.lower().startswith("otpauth://"):
        return seed, 6, 30, SHA1()  # noqa: S303 - RFC 6238's default; HMAC-SHA1 is sound
    parts = urlsplit(seed)
    if parts.netloc.lower() != "totp":
        raise ValueError("only otpauth://totp/ seeds")
    query = {k.lower(): v[-1] for k, v in parse_qs(parts.query).items()}
    digits, period = int(query.get("digits", "6")), int(query.get("period", "30"))
    algorithm = _ALGORITHMS.get(query.get("algorithm", "SHA1").upper())
    if algorithm is None or not 6 <= digits <= 8 or not 1 <= period <= 3600:
        raise ValueError("unsupported otpauth parameters")
    return query.get("secret", ""), digits, period, algorithm()  # noqa: S303 - as above


def current_code(seed: Secret, where: str, now: float | None = None) -> Secret:
    """The code for ``now`` (default: the clock); SecretMissing names ``where``, not the seed."""
    try:
        secret, digits, period, algorithm = _params(seed.reveal_str().strip())
        key = "".join(secret.split()).upper()
        raw = base64.b32decode(key + "=" * (-len(key) % 8))
        if not raw:
            raise ValueError("empty seed")
        totp = TOTP(raw, digits, algorithm, period, enforce_key_length=False)
        return Secret(totp.generate(time.time() if now is None else now))
    except (ValueError, UnicodeDecodeError, binascii.Error):
        raise SecretMissing(f"{where}: the TOTP seed is not a base32 secret or an "
                            "otpauth://totp/ URI") from None
