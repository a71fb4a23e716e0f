"""The admin bearer token: new at every start, written 0600, compared in constant time."""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path


def new_token() -> str:
    return secrets.token_urlsafe(32)


def write_token(path: Path, token: str) -> None:
    """Write ``token`` to ``path`` (0600) atomically; an old token file is replaced."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def bearer_matches(header: bytes | None, token: str) -> bool:
    """Does an ``Authorization`` header value carry exactly ``Bearer <token>``?"""
    if header is None:
        return False
    scheme, _, value = header.strip().partition(b" ")
    if scheme.lower() != b"bearer":
        return False
    return hmac.compare_digest(value.strip(), token.encode("ascii"))
