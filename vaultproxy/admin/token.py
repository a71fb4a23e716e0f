"""The admin bearer token: new at every start, written 0600, compared in constant time."""

from __future__ import annotations

import hmac
import secrets
from pathlib import Path

from vaultproxy.files.atomic_file import write_atomic


def new_token() -> str:
    return secrets.token_urlsafe(32)


def write_token(path: Path, token: str) -> None:
    """Write ``token`` to ``path`` (0600) atomically; an old token file is replaced."""
    write_atomic(path, token + "\n")


def bearer_matches(header: bytes | None, token: str) -> bool:
    """Does an ``Authorization`` header value carry exactly ``Bearer <token>``?"""
    if header is None:
        return False
    scheme, _, value = header.strip().partition(b" ")
    if scheme.lower() != b"bearer":
        return False
    return hmac.compare_digest(value.strip(), token.encode("ascii"))
