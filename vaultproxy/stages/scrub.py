"""Scrub: nothing the upstream says reaches the agent with the service's secret in it.

Response headers are redacted and Set-Cookie dropped; bodies stream through the redactor
(decompressed first when encoded; an encoding we cannot decode is refused, never passed)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from mitmproxy import http

from vaultproxy.errors import UnscannableResponse
from vaultproxy.redact import Redactor, decoder_for, drop_set_cookie, redact_headers
from vaultproxy.stages import runtime
from vaultproxy.stages.guard import guarded
from vaultproxy.stages.inject import M_SERVICE

logger = logging.getLogger(__name__)

M_REDACTOR = "vaultproxy.redactor"


def _no_body(flow: http.HTTPFlow) -> bool:
    assert flow.response is not None
    code = flow.response.status_code
    return flow.request.method == "HEAD" or code < 200 or code in (204, 304)


def _stream(
    redactor: Redactor, decode: Callable[[bytes], bytes] | None
) -> Callable[[bytes], list[bytes]]:
    """The ``flow.response.stream`` callable: decode, redact, and never emit an empty chunk.

    mitmproxy sends every returned item as a chunk; on HTTP/1.1 an empty one is written as
    ``0\\r\\n\\r\\n``, the end of a chunked body, which would truncate the response while
    the redactor holds back a possible partial match. So return a list, empty when holding.
    """
    feed = redactor.stream()

    def step(chunk: bytes) -> bytes:
        if decode is not None:
            plain = decode(chunk)
            if chunk == b"":
                return feed(plain) + feed(b"") if plain else feed(b"")
            return feed(plain)
        return feed(chunk)

    def emit(chunk: bytes) -> list[bytes]:
        out = step(chunk)
        return [out] if out else []

    return emit


class Scrub:
    def load(self, loader: object) -> None:
        runtime.stage_loaded("Scrub")

    def done(self) -> None:
        runtime.stage_unloaded("Scrub")

    @guarded
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        service = flow.metadata.get(M_SERVICE)
        if service is None or flow.response is None or flow.metadata.get("vaultproxy.denied"):
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
        if redactor is None or flow.response is None:
            return
        if not flow.response.stream and flow.response.raw_content:
            flow.response.raw_content = redactor.redact(flow.response.raw_content)

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
