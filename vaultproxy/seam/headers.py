"""Header lookups without mitmproxy's per-field indirection (a speed patch of the seam).

mitmproxy's ``Headers.get``/``in``/``[]``/``get_all`` go through ``MutableMapping`` ->
``__getitem__`` -> ``Headers.get_all`` -> ``always_bytes`` -> ``_MultiDict.get_all``, which
calls the static ``_kconv`` twice per field: ~25 lookups per proxied request (the lean
layer's framing checks, mitmproxy's ``expected_http_body_size`` and ``connection_close``,
the gates) made some 200 Python calls of it. These do the same comparison (the name
encoded as mitmproxy does, lower-cased, against each field's lower-cased name, values
decoded ``utf-8``/``surrogateescape``, folded with ``", "``) in one loop. A key that is
neither ``str`` nor ``bytes`` goes to mitmproxy's own method (and its error).
tests/unit/test_speed_headers.py compares both on the same headers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mitmproxy import http
from mitmproxy.coretypes import multidict

from vaultproxy.seam.need import missing

#: mitmproxy's own methods, as ``Headers`` had them before ``install`` (for the contract test).
STOCK: dict[str, Callable[..., Any]] = {}


def missing_symbol() -> str | None:
    """What this patch needs of mitmproxy that it no longer has (None: all there)."""
    return missing(http, "Headers") or missing(http.Headers, "get_all") or missing(
        multidict, "_MultiDict"
    )


def _stock(name: str) -> Callable[..., Any]:
    return getattr(http.Headers, name)  # type: ignore[no-any-return]


def install() -> bool:
    """Replace the four lookups on ``http.Headers``; False if mitmproxy changed under them."""
    if missing_symbol() is not None:
        return False
    cls = http.Headers
    if getattr(cls, "_vaultproxy_fast", False):
        return True
    stock_get_all, stock_contains = _stock("get_all"), _stock("__contains__")
    stock_getitem, stock_get = _stock("__getitem__"), _stock("get")
    STOCK.update(get_all=stock_get_all, __contains__=stock_contains, __getitem__=stock_getitem,
                 get=stock_get)

    def get_all(self: http.Headers, name: str | bytes) -> list[str]:
        kind = type(name)
        if kind is str:
            key = name.encode("utf-8", "surrogateescape").lower()  # type: ignore[union-attr]
        elif kind is bytes:
            key = name.lower()  # type: ignore[assignment]
        else:
            return stock_get_all(self, name)  # type: ignore[no-any-return]
        return [v.decode("utf-8", "surrogateescape") for k, v in self.fields if k.lower() == key]

    def contains(self: http.Headers, key: object) -> bool:
        kind = type(key)
        if kind is str:
            want = key.encode("utf-8", "surrogateescape").lower()  # type: ignore[attr-defined]
        elif kind is bytes:
            want = key.lower()  # type: ignore[attr-defined]
        else:
            return stock_contains(self, key)  # type: ignore[no-any-return]
        for k, _v in self.fields:
            if k.lower() == want:
                return True
        return False

    def getitem(self: http.Headers, key: str | bytes) -> str:
        kind = type(key)
        if kind is not str and kind is not bytes:
            return stock_getitem(self, key)  # type: ignore[no-any-return]
        values = get_all(self, key)
        if not values:
            raise KeyError(key)
        return ", ".join(values)

    def get(self: http.Headers, key: str | bytes, default: Any = None) -> Any:
        kind = type(key)
        if kind is not str and kind is not bytes:
            return stock_get(self, key, default)
        values = get_all(self, key)
        return ", ".join(values) if values else default

    cls.get_all = get_all  # type: ignore[method-assign]
    cls.__contains__ = contains  # type: ignore[method-assign,assignment]
    cls.__getitem__ = getitem  # type: ignore[method-assign,assignment]
    cls.get = get  # type: ignore[method-assign,assignment]
    cls._vaultproxy_fast = True  # type: ignore[attr-defined]
    return True
