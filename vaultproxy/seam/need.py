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


def fingerprint(fn: Any) -> str | None:
    """What a speed patch compares to decide whether ``fn`` (a method of mitmproxy or of the
    standard library it replaces) is still the one it was written against: sha256 (first 16
    hex digits) of its source text (as ``inspect.getsource`` reads it: a decorated function's
    own, decorators included); for a function without source (a frozen module's), of its
    bytecode, names and constants; None: neither. The expected values are constants beside
    each patch (seam/connio.py, seam/tlsio.py): a differing one keeps the stock method."""
    import hashlib
    import inspect

    try:
        src = inspect.getsource(fn).encode()
    except (OSError, TypeError):
        code = getattr(fn, "__code__", None)
        if code is None:
            return None
        src = code.co_code + repr((code.co_names, code.co_consts)).encode()
    return hashlib.sha256(src).hexdigest()[:16]
