"""scrub._known_small: which responses are buffered and redacted whole (the rest stream).

Only a body whose length the headers fix (and mitmproxy will hold to) is small; anything
mitmproxy already streams, chunked, close-delimited or oddly framed is not.
"""

from __future__ import annotations

import pytest
from mitmproxy import http
from mitmproxy.test import tflow

from vaultproxy.stages.response_gate import SMALL_BODY, _known_small


def _flow(
    headers: list[tuple[bytes, bytes]], *, method: str = "GET", status: int = 200
) -> http.HTTPFlow:
    f = tflow.tflow(resp=True)
    f.request.method = method
    assert f.response is not None
    f.response.status_code = status
    f.response.headers = http.Headers(headers)
    return f


@pytest.mark.parametrize(
    ("headers", "small"),
    [
        ([(b"content-length", b"1024")], True),
        ([(b"content-length", b"0")], True),
        ([(b"content-length", str(SMALL_BODY).encode())], True),
        ([(b"content-length", str(SMALL_BODY + 1).encode())], False),
        ([], False),  # close-delimited (HTTP/1.0) or unknown (HTTP/2 without a length)
        ([(b"transfer-encoding", b"chunked")], False),
        ([(b"transfer-encoding", b"chunked"), (b"content-length", b"10")], False),
        ([(b"content-length", b"10"), (b"content-length", b"11")], False),
        ([(b"content-length", b"-1")], False),
        ([(b"content-length", b"ten")], False),
    ],
)
def test_known_small(headers: list[tuple[bytes, bytes]], small: bool) -> None:
    assert _known_small(_flow(headers)) is small


def test_already_streamed_by_mitmproxy_is_not_small() -> None:
    """stream_large_bodies made mitmproxy stream it: buffering would let the late size
    check switch to raw streaming, unredacted."""
    f = _flow([(b"content-length", b"10")])
    assert f.response is not None
    f.response.stream = True
    assert not _known_small(f)
