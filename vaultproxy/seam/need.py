"""How the seam asks for a symbol of mitmproxy (or pyOpenSSL) that is not public API."""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import types
from collections.abc import Callable
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


def may_install(env: str, missing_symbol: Callable[[], str | None], log: logging.Logger,
                stays: str) -> bool:
    """The gate every speed patch's ``install`` passes first: False if its environment
    switch ``env`` says off (``0``, ``false``, ``no``, ``off``), or if mitmproxy lacks a
    symbol it needs (``missing_symbol()`` names it; one WARNING: "mitmproxy has no <symbol>:
    <stays> (slower)")."""
    if os.environ.get(env, "1").strip() in ("0", "false", "no", "off"):
        return False
    symbol = missing_symbol()
    if symbol is not None:
        log.warning("mitmproxy has no %s: %s (slower)", symbol, stays)
        return False
    return True


def fingerprint(fn: Any) -> str | None:
    """What a speed patch compares to decide whether ``fn`` (a method of mitmproxy or of the
    standard library it replaces) is still the one it was written against: sha256 (first 16
    hex digits) of its source text (as ``inspect.getsource`` reads it: a decorated function's
    own, decorators included); for a function without source (a frozen module's), of its
    bytecode, names and constants; None: neither. The expected values are constants beside
    each patch (seam/connio.py, seam/tlsio.py, seam/lean.py): a differing one keeps the stock
    method. Reading the source costs a file read and a tokenizer pass per function at
    start-up: ``unchanged`` asks ``code_fingerprint`` first."""
    import inspect

    try:
        src = inspect.getsource(fn).encode()
    except (OSError, TypeError):
        code = getattr(fn, "__code__", None)
        if code is None:
            return None
        src = code.co_code + repr((code.co_names, code.co_consts)).encode()
    return hashlib.sha256(src).hexdigest()[:16]


#: The bytecode (``importlib.util.MAGIC_NUMBER``) the code fingerprints beside each patch
#: were made on: CPython 3.12's.
CODE_MAGIC = "cb0d0d0a"
_MAGIC = importlib.util.MAGIC_NUMBER.hex()


def code_fingerprint(fn: Any) -> str | None:
    """sha256 (first 16 hex digits) of ``fn`` as compiled: of each function down its
    ``__wrapped__`` chain (what ``inspect.getsource`` reads through), the code object's
    bytecode, names, variables, argument counts and flags, its constants (a nested code
    object's the same way, a frozenset's sorted: string hashes vary per process) and the
    function's defaults. None: ``fn`` has no code object. Line numbers and comments are not
    in it; the bytecode differs between CPython versions (``CODE_MAGIC``)."""
    digest = hashlib.sha256()
    seen = 0
    while fn is not None and seen < 100:
        code = getattr(fn, "__code__", None)
        if not isinstance(code, types.CodeType):
            return None
        _feed(digest, code)
        _piece(digest, repr((getattr(fn, "__defaults__", None),
                             getattr(fn, "__kwdefaults__", None))).encode())
        fn = getattr(fn, "__wrapped__", None)
        seen += 1
    return digest.hexdigest()[:16]


def _piece(digest: Any, data: bytes) -> None:
    digest.update(len(data).to_bytes(8, "big"))
    digest.update(data)


def _feed(digest: Any, code: types.CodeType) -> None:
    _piece(digest, code.co_code)
    _piece(digest, repr((code.co_names, code.co_varnames, code.co_freevars, code.co_cellvars,
                         code.co_argcount, code.co_posonlyargcount, code.co_kwonlyargcount,
                         code.co_flags)).encode())
    for const in code.co_consts:
        _const(digest, const)


def _const(digest: Any, const: object) -> None:
    if isinstance(const, types.CodeType):
        _piece(digest, b"code")
        _feed(digest, const)
    elif isinstance(const, tuple):
        _piece(digest, b"tuple %d" % len(const))
        for item in const:
            _const(digest, item)
    elif isinstance(const, frozenset):
        _piece(digest, repr(sorted(repr(item) for item in const)).encode())
    else:
        _piece(digest, repr((type(const).__name__, const)).encode())


def unchanged(fn: Any, source: str, code: str | None) -> bool:
    """Is ``fn`` the function a patch was written against? ``code``: its
    ``code_fingerprint`` on ``CODE_MAGIC``'s bytecode (start-up reads no source file when it
    matches); else, or if that differs, its source text's ``fingerprint`` against
    ``source`` (what holds across Python versions: a CPython that compiles it differently
    only reads the source). A changed ``fn`` differs in both."""
    if code is not None and _MAGIC == CODE_MAGIC and code_fingerprint(fn) == code:
        return True
    return fingerprint(fn) == source


def code_magic_matches() -> bool:
    """Is this CPython's bytecode the one the code fingerprints were made on?"""
    return _MAGIC == CODE_MAGIC
