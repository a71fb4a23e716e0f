"""The header lookups seam/headers.py installs answer exactly as mitmproxy's own do."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from mitmproxy import http

from vaultproxy.seam import headers as fast

FIELDS = (
    (b"Host", b"example.com"),
    (b"Accept", b"text/html"),
    (b"accept", b"application/xml"),
    (b"X-Odd", b"caf\xc3\xa9 \xff"),
    (b"Content-Length", b"12"),
    (b"\xffWeird", b"v"),
    (b"Empty", b""),
)
KEYS: list[Any] = [
    "host", "HOST", b"host", "accept", b"ACCEPT", "x-odd", "content-length", "missing",
    b"missing", "", b"", "\udcffweird", b"\xffweird", b"\xffWEIRD", "empty", "caf\u00e9",
    None, 3,
]
def _deleted(h: http.Headers, key: Any) -> tuple[tuple[bytes, bytes], ...]:
    del h[key]
    return h.fields


LOOKUPS: list[tuple[str, Callable[[http.Headers, Any], Any]]] = [
    ("get_all", lambda h, k: h.get_all(k)),
    ("in", lambda h, k: k in h),
    ("[]", lambda h, k: h[k]),
    ("get", lambda h, k: h.get(k)),
    ("get default", lambda h, k: h.get(k, "d")),
    ("get keywords", lambda h, k: h.get(key=k, default="d")),  # type: ignore[call-overload]
    ("pop", lambda h, k: (h.pop(k, "d"), h.fields)),
    ("del", lambda h, k: _deleted(h, k)),
]


def _outcome(call: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return "ok", call()
    except Exception as e:  # noqa: BLE001 - the exception is what is compared
        return "raise", type(e)


@pytest.fixture(scope="module", autouse=True)
def _installed() -> None:
    assert fast.install()
    assert set(fast.STOCK) == {"get_all", "__contains__", "__getitem__", "get"}


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize(("what", "lookup"), LOOKUPS, ids=[n for n, _ in LOOKUPS])
def test_lookups_match_mitmproxy(what: str, lookup: Any, key: Any) -> None:
    got = _outcome(lambda: lookup(http.Headers(list(FIELDS)), key))
    with pytest.MonkeyPatch.context() as mp:
        for name, stock in fast.STOCK.items():
            mp.setattr(http.Headers, name, stock)
        want = _outcome(lambda: lookup(http.Headers(list(FIELDS)), key))
    assert got == want


def test_the_patch_is_installed() -> None:
    """Twin: the comparisons above run the patched methods, not mitmproxy's."""
    for name, stock in fast.STOCK.items():
        assert getattr(http.Headers, name) is not stock, name
        assert getattr(http.Headers, name).__module__ == fast.__name__


def test_writes_are_seen() -> None:
    h = http.Headers(list(FIELDS))
    h["accept"] = "x/y"
    h.add("Set-Cookie", "a=1")
    h.add("set-cookie", "b=2")
    assert h["Accept"] == "x/y"
    assert h.get_all("SET-COOKIE") == ["a=1", "b=2"]
    assert h.pop("host") == "example.com" and "host" not in h
    del h["content-length"]
    assert h.get("content-length") is None and h.get("content-length", 0) == 0
