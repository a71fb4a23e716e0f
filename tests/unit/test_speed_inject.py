"""The per-request shortcuts of the inject path give the same answers as the long way."""

from __future__ import annotations

import base64

import pytest
from mitmproxy.test import tutils

from vaultproxy.errors import PlaceholderMisdirected, PlaceholderUnknown
from vaultproxy.net.decoding import limit_accept_encoding
from vaultproxy.values.placeholders import PlaceholderIndex, decoded_views

INDEX = PlaceholderIndex({"__vault.a__": "a", "__vault.b__": "b", "CUSTOM-C": "c"})


def _reference_scan(data: bytes, service: str) -> None:
    for view in decoded_views(data):
        for m in INDEX._any_re.finditer(view):
            INDEX._check(m.group(), service)


def _outcome(fn: object, data: bytes, service: str) -> str:
    try:
        fn(data, service)  # type: ignore[operator]
    except (PlaceholderMisdirected, PlaceholderUnknown) as e:
        return type(e).__name__
    return "ok"


SAMPLES = [
    b"",
    b"plain value",
    b"Bearer __vault.a__",
    b"Bearer __vault.b__",
    b"Bearer __vault.zz__",
    b"x CUSTOM-C y",
    b"__vault.c__",
    b"%5F%5Fvault.b%5F%5F",
    b"__vault%2Eb__",
    b"a+b __vault.a__",
    b'{"k":"\\u005f_vault.b__"}',
    b"Basic " + base64.b64encode(b"user:__vault.b__"),
    b"basic   " + base64.b64encode(b"__vault.a__:x"),
    b"Basic " + base64.b64encode(b"user:%5F%5Fvault.b%5F%5F"),
    b"Basic " + base64.b64encode(b"user:pass"),
    b"Basic not-base64!",
    b"gzip, deflate, br",
]


@pytest.mark.parametrize("data", SAMPLES)
@pytest.mark.parametrize("service", ["a", "b", "c"])
def test_scan_fast_path_matches_all_decoded_views(data: bytes, service: str) -> None:
    assert _outcome(INDEX.scan, data, service) == _outcome(_reference_scan, data, service)


@pytest.mark.parametrize(
    ("offered", "sent"),
    [
        ("gzip, deflate, br, zstd", "gzip, deflate, br, zstd"),
        ("gzip,deflate", "gzip, deflate"),
        ("gzip;q=1.0, sdch, lzma", "gzip;q=1.0"),
        ("sdch", "identity"),
        ("", "identity"),
        ("BR, Identity;q=0.1", "BR, Identity;q=0.1"),
    ],
)
def test_accept_encoding_limit_cached(offered: str, sent: str) -> None:
    for _ in range(2):  # the second time comes from the cache
        req = tutils.treq()
        req.headers["accept-encoding"] = offered
        limit_accept_encoding(req.headers)
        assert req.headers["accept-encoding"] == sent


def test_accept_encoding_absent_stays_absent() -> None:
    req = tutils.treq()
    req.headers.pop("accept-encoding", None)
    limit_accept_encoding(req.headers)
    assert "accept-encoding" not in req.headers
