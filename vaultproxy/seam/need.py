"""How the seam asks for a symbol of mitmproxy (or pyOpenSSL) that is not public API."""

from __future__ import annotations

from typing import Any


class EngineMismatch(RuntimeError):
    """mitmproxy no longer has a symbol a vaultproxy defence relies on."""


def need(obj: object, name: str) -> Any:
    """``getattr(obj, name)``, or EngineMismatch naming what moved (start-up refuses)."""
    if not hasattr(obj, name):
        raise EngineMismatch(
            f"mitmproxy {getattr(obj, '__name__', obj)!s} has no {name}: this mitmproxy "
            "version is not supported (see pyproject.toml); refusing to start"
        )
    return getattr(obj, name)


def missing(obj: object, *names: str) -> str | None:
    """The first of ``names`` that ``obj`` lacks, as ``owner.name``; None if all are there."""
    for name in names:
        if not hasattr(obj, name):
            return f"{getattr(obj, '__name__', type(obj).__name__)}.{name}"
    return None
