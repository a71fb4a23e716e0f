"""Scrub: nothing the upstream says reaches the agent with the service's secret in it.

Response headers (and trailers) are redacted and Set-Cookie dropped. A body with a known
length of at most ``SMALL_BODY`` bytes is buffered by mitmproxy and redacted whole in the
``response`` hook (decoded first, ``Content-Length`` set to the result); any other body
streams through the redactor and is re-framed (chunked on HTTP/1.1). An encoding we cannot
decode is refused, never passed; a decoded body is always sent without ``Content-Encoding``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from mitmproxy import http
from mitmproxy.net.http.http1 import expected_http_body_size

from vaultproxy.errors import UnscannableResponse
from vaultproxy.redact import Redactor, decoder_for, drop_set_cookie, redact_headers
from vaultproxy.stages import runtime
from vaultproxy.stages.guard import M_DENIED, guarded
from vaultproxy.stages.inject import M_SERVICE

logger = logging.getLogger(__name__)

M_REDACTOR = "vaultproxy.redactor"
M_WHOLE = "vaultproxy.scrub_whole"  # the Content-Encoding of a body redacted whole

# Bodies up to this many (encoded) bytes, with a known length, are redacted whole: cheaper
# per request than streaming, and the agent gets a Content-Length.
SMALL_BODY = 128 * 1024


def _no_body(flow: http.HTTPFlow) -> bool:
    assert flow.response is not None
    code = flow.response.status_code
    return flow.request.method == "HEAD" or code < 200 or code in (204, 304)


def _known_small(flow: http.HTTPFlow) -> bool:
    """Is the body's length known from its headers and at most SMALL_BODY?

    mitmproxy then reads exactly that many bytes (HTTP/1) or fails the stream if the
    upstream sends more (HTTP/2), so the buffer never grows past it. A response mitmproxy
    already decided to stream (``stream_large_bodies``) is not small.
    """
    resp = flow.response
    assert resp is not None
    if resp.stream or "transfer-encoding" in resp.headers or "content-length" not in resp.headers:
        return False
    try:
        size = expected_http_body_size(flow.request, resp)
    except ValueError:
        return False
    return size is not None and 0 <= size <= SMALL_BODY


def _stream(
    redactor: Redactor, decode: Callable[[bytes], bytes] | None
) -> Callable[[bytes], list[bytes]]:
    """The ``flow.response.stream`` callable: decode, redact, and never emit an empty chunk.

    mitmproxy sends every returned item as a chunk; on HTTP/1.1 an empty one is written as
    ``0\\r\\n\\r\\n``, the end of a chunked body, which would truncate the response while
    the redactor holds back a possible partial match. So return a list, empty when holding.
    """
    feed = redactor.stream()

    if decode is None:

        def plain(chunk: bytes) -> list[bytes]:
            out = feed(chunk)
            return [out] if out else []

        return plain

    def decoded(chunk: bytes) -> list[bytes]:
        data = decode(chunk)
        if chunk:
            out = feed(data) if data else b""
        else:
            out = feed(data) + feed(b"") if data else feed(b"")
        return [out] if out else []

    return decoded


def _redact_whole(flow: http.HTTPFlow, redactor: Redactor, encoding: str) -> None:
    """Decode (at most ``max_body_mb``), redact and re-measure a buffered body."""
    resp = flow.response
    assert resp is not None
    if resp.stream:  # pragma: no cover - _known_small rules this out
        raise UnscannableResponse("the response was streamed before it could be scanned")
    body = resp.raw_content or b""
    if encoding:
        limit = runtime.state().registry.config.proxy.max_body_mb * 1024 * 1024
        decode = decoder_for(encoding, limit)
        if decode is None:  # pragma: no cover - checked in responseheaders
            raise UnscannableResponse()
        plain = decode(body) + decode(b"") if body else decode(b"")  # b"": the final flush
        del resp.headers["content-encoding"]
    else:
        plain = body
    out = redactor.redact(plain)
    if out is not body:
        resp.raw_content = out
        resp.headers["content-length"] = str(len(out))


class Scrub:
    def load(self, loader: object) -> None:
        runtime.stage_loaded("Scrub")

    def done(self) -> None:
        runtime.stage_unloaded("Scrub")

    @guarded
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        service = flow.metadata.get(M_SERVICE)
        if service is None or flow.response is None or flow.metadata.get(M_DENIED):
            return
        st = runtime.state()
        resp = flow.response
        drop_set_cookie(resp.headers)
        redactor = st.redactor_for(service)
        if redactor is None:
            raise UnscannableResponse("the keystore was locked while the request was in flight")
        redact_headers(redactor, resp.headers)
        flow.metadata[M_REDACTOR] = redactor
        if _no_body(flow) or resp.status_code == 101:
            return
        encoding = resp.headers.get("content-encoding", "identity").strip().lower()
        decode = None
        if encoding not in ("", "identity"):
            decode = decoder_for(encoding)
            if decode is None:
                raise UnscannableResponse()
        else:
            encoding = ""
        if _known_small(flow):
            resp.stream = False
            flow.metadata[M_WHOLE] = encoding
            return
        if decode is not None:
            del resp.headers["content-encoding"]
        resp.headers.pop("content-length", None)
        http1 = resp.http_version in ("HTTP/1.0", "HTTP/1.1")
        if http1 and flow.request.http_version == "HTTP/1.1":
            # Redaction changes the length: frame the body with chunks. An HTTP/1.0 upstream
            # reply is upgraded so the agent is not left with a close-delimited body.
            resp.http_version = "HTTP/1.1"
            resp.headers["transfer-encoding"] = "chunked"
        resp.stream = _stream(redactor, decode)

    @guarded
    def response(self, flow: http.HTTPFlow) -> None:
        redactor = flow.metadata.get(M_REDACTOR)
        resp = flow.response
        if redactor is None or resp is None:
            return
        if resp.trailers:
            redactor.redact_headers(resp.trailers)
        encoding = flow.metadata.pop(M_WHOLE, None)
        if encoding is not None and not flow.metadata.get(M_DENIED):
            _redact_whole(flow, redactor, encoding)
        elif not resp.stream and resp.raw_content:
            resp.raw_content = redactor.redact(resp.raw_content)

    @guarded
    def websocket_message(self, flow: http.HTTPFlow) -> None:
        ws = flow.websocket
        if ws is None or not ws.messages:
            return
        message = ws.messages[-1]
        redactor = flow.metadata.get(M_REDACTOR)
        if redactor is not None and not message.from_client:
            message.content = redactor.redact(message.content)
        # Do not retain messages for the connection's life (mitmproxy #6620).
        del ws.messages[:-1]
