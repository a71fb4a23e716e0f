"""ResponseGate: the one place every byte from an intercepted upstream passes on its way to
the agent. What cannot pass through it is refused, never forwarded.

What reaches the agent, and where this gate handles it:

========================  ================================================================
status line               ``responseheaders``: the reason phrase is replaced by the
                          standard one for the code (the upstream's own text is dropped)
headers                   ``responseheaders``: every field redacted, ``Set-Cookie`` dropped;
                          a folded (obs-fold) field is ``502 upstream_protocol``
1xx (not 101)             dropped by the engine seam before mitmproxy parses them
101                       ``responseheaders``: only a WebSocket upgrade the agent asked for;
                          anything else is ``502 upgrade_refused`` (and raw TCP is off)
transfer coding           ``responseheaders``: HTTP/1 ``chunked`` only, else
                          ``502 upstream_protocol``
body                      decoded (``Content-Encoding``; an unknown one is refused) and
                          redacted, whole (``response``) or streamed (``stream_filter``);
                          one that does not decode is ``502 upstream_protocol``, or, once
                          a streamed head went out, the connection is cut
trailers                  ``response``: redacted (HTTP/2); HTTP/1 trailers are dropped by the
                          seam, and trailers for an HTTP/1 agent are dropped here
WebSocket messages        ``websocket_message``: redacted
WebSocket ping/pong/close ``ws_control`` via the seam: payloads and close reasons redacted
proxy-made errors         the seam renders mitmproxy's own error pages as our JSON
                          (``classify_engine_error``); CONNECT errors in
                          ``http_connect_error``
========================  ================================================================

A body with a known length of at most ``SMALL_BODY`` bytes is buffered by mitmproxy and
redacted whole (decoded first, ``Content-Length`` set to the result); any other body streams
through the redactor and is re-framed (chunked on HTTP/1.1). A decoded body is always sent
without ``Content-Encoding``.
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Callable

import wsproto.events
from mitmproxy import http
from mitmproxy.net.http import status_codes
from mitmproxy.net.http.http1 import expected_http_body_size

from vaultproxy.errors import (
    UnscannableResponse,
    UpgradeRefused,
    UpstreamProtocol,
    VaultproxyError,
)
from vaultproxy.net.decoding import decoder_for
from vaultproxy.net.h1pool import UPSTREAM_HEAD, ResponseHead
from vaultproxy.seam.engine_errors import classify_engine_error
from vaultproxy.seam.objects import HEAD_NOTE
from vaultproxy.stages.flowrecord import KEY, FlowRecord, handed, record_of
from vaultproxy.stages.guard import deny, error_reply, guarded
from vaultproxy.stages.runtime import Runtime, Stage
from vaultproxy.values.redact import (
    Redactor,
    drop_set_cookie,
    gate_head,
    gate_wire_head,
    redact_headers,
    refuse_folded,
    stream_filter,
)

logger = logging.getLogger(__name__)

# Bodies up to this many (encoded) bytes, with a known length, are redacted whole: cheaper
# per request than streaming, and the agent gets a Content-Length.
SMALL_BODY = 128 * 1024

# WebSocket control frames carry at most 125 bytes (RFC 6455 §5.5); a close reason 123.
_WS_CONTROL_MAX = 125
_WS_REASON_MAX = 123

# Server connection id -> the redactor of the WebSocket flow on it (see _ws_control).
_ws_redactors: dict[str, Redactor] = {}


def _no_body(flow: http.HTTPFlow) -> bool:
    """A response without a body: to HEAD, or 1xx, 204, 304. (``Request.method`` is the
    decoded method upper-cased; no character outside ASCII upper-cases to letters of
    ``HEAD``, so its bytes upper-cased say the same without the decode.)"""
    resp = flow.response
    assert resp is not None
    code = resp.data.status_code
    return flow.request.data.method.upper() == b"HEAD" or code < 200 or code in (204, 304)


def _known_small(flow: http.HTTPFlow) -> bool:
    """Is the body's length known from its headers and at most SMALL_BODY?

    mitmproxy then reads exactly that many bytes (HTTP/1) or fails the stream if the
    upstream sends more (HTTP/2), so the buffer never grows past it. A response mitmproxy
    already decided to stream (``stream_large_bodies``) is not small.
    """
    resp = flow.response
    assert resp is not None
    if resp.stream:
        return False
    names = {k.lower() for k, _ in resp.headers.fields}  # one pass, as Headers compares
    if b"transfer-encoding" in names or b"content-length" not in names:
        return False
    try:
        size = expected_http_body_size(flow.request, resp)
    except ValueError:
        return False
    return size is not None and 0 <= size <= SMALL_BODY


def _redact_whole(
    flow: http.HTTPFlow, redactor: Redactor, encoding: str, limit: int
) -> None:
    """Decode (at most ``max_body_mb``), redact and re-measure a buffered body."""
    resp = flow.response
    assert resp is not None
    if resp.stream:  # pragma: no cover - _known_small rules this out
        raise UnscannableResponse("the response was streamed before it could be scanned")
    body = resp.raw_content or b""
    if encoding:
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


def _cutter(flow: http.HTTPFlow, service: str) -> Callable[[VaultproxyError], None]:
    """A streamed body that stops decoding after its head went out: the status cannot change
    any more, so the connection is cut (``deny`` kills a streaming flow) and audited."""

    def cut(err: VaultproxyError) -> None:
        logger.warning("service %s: the response body stopped decoding mid-stream (%s); "
                       "connection cut", service, err.code)
        deny(flow, err)

    return cut


def _check_upgrade(flow: http.HTTPFlow) -> None:
    """A 101 passes only as the WebSocket upgrade the agent asked for."""
    req, resp = flow.request, flow.response
    assert resp is not None
    asked = req.headers.get("upgrade", "").strip().lower() == "websocket"
    given = resp.headers.get("upgrade", "").strip().lower() == "websocket"
    if not (asked and given):
        # mitmproxy's HTTP/1 client turns its connection into a pipe after a 101; make it
        # see a final response that closes the connection instead, so nothing the upstream
        # sends after the 101 is read at all.
        resp.status_code = 502
        resp.headers["connection"] = "close"
        raise UpgradeRefused()


def _check_framing(resp: http.Response) -> None:
    """HTTP/1 bodies must be framed by Content-Length or plain ``chunked``: any other
    transfer coding (``gzip, chunked``...) would carry bytes the redactor cannot read."""
    te = resp.headers.get_all("transfer-encoding")
    if te and (len(te) > 1 or te[0].strip().lower() != "chunked"):
        raise UpstreamProtocol("the upstream used a transfer coding vaultproxy cannot scan")


# The reason phrase each status code is given (as bytes, as ``Response.reason`` stores it).
_REASONS: dict[int, bytes] = {
    code: text.encode("ISO-8859-1") for code, text in status_codes.RESPONSES.items()
}
# Header names the common head is checked for (lower case).
_FRAMING_NAMES = frozenset((b"content-length", b"transfer-encoding", b"content-encoding",
                            b"set-cookie", b"connection"))


_NAME = operator.itemgetter(0)
# Methods as sent that are neither HEAD nor CONNECT in any case (``upper()`` is not needed
# to tell): the common ones, looked up by their (bytes) hash
_OTHER_METHODS = frozenset((b"GET", b"POST", b"PUT", b"PATCH", b"DELETE", b"OPTIONS"))
# What ``_plain_small_head``'s names tell, per set of names (as sent: the same objects again
# and again from net/h1pool.py's ``parse_known``, their hashes kept): the index of the one
# Content-Length, whether a Set-Cookie is among them, the index of the one Connection field
# (-1: none; -2: more than one), and the fields' wire form with a ``%b`` for each value
# (each name's ``%`` doubled: ``b"\r\n".join([b": ".join(f) for f in fields])`` by one
# ``%``; None until kept). Names only, never a value; filled only once a head with those
# names passed the one-pass path; at most ``_SHAPES_MAX`` sets (then emptied), each
# within ``_SHAPE_NAMES_MAX`` names and ``_SHAPE_NAME_BYTES_MAX`` bytes of names.
# tests/unit/test_speed_response_names.py compares it with the per-field loop it replaces.
_Shape = tuple[int, bool, int, bytes | None]
_SHAPES: dict[tuple[bytes, ...], _Shape] = {}
_SHAPES_MAX = 64
_SHAPE_NAMES_MAX = 64
_SHAPE_NAME_BYTES_MAX = 2048


def _names_shape(names: tuple[bytes, ...]) -> _Shape | None:
    """What the names tell the one-pass path (see ``_SHAPES``); None for a head it does not
    take: no Content-Length, a second one, a transfer or content coding."""
    length = -1
    cookie = False
    connection = -1
    for i, name in enumerate(names):
        lower = name.lower()
        if lower in _FRAMING_NAMES:
            if lower == b"content-length" and length < 0:
                length = i
            elif lower == b"set-cookie":
                cookie = True
            elif lower == b"connection":
                connection = i if connection == -1 else -2
            else:  # a transfer or content coding, or a second length
                return None
    if length < 0:
        return None
    return length, cookie, connection, None


def _remember(names: tuple[bytes, ...], shape: _Shape) -> None:
    if len(names) <= _SHAPE_NAMES_MAX and sum(map(len, names)) <= _SHAPE_NAME_BYTES_MAX:
        if len(_SHAPES) >= _SHAPES_MAX:
            _SHAPES.clear()
        _SHAPES[names] = shape[:3] + (
            b"\r\n".join([name.replace(b"%", b"%%") + b": %b" for name in names]),)


def _known_gate(names: tuple[bytes, ...]) -> _Shape | bool:
    """What ``_plain_small_head`` reads of a ``_Known``'s names (net/h1pool.py; kept on it
    as ``gate``): ``_names_shape``'s answer with the wire form's ``%`` template filled (as
    ``_remember`` fills it), or False for names it does not take. Names only."""
    shape = _names_shape(names)
    if shape is None:
        return False
    return shape[:3] + (b"\r\n".join([name.replace(b"%", b"%%") + b": %b" for name in names]),)


def _plain_small_head(
    flow: http.HTTPFlow, resp: http.Response, redactor: Redactor, service: str
) -> bool:
    """The common response head, told in one pass over its fields: HTTP/1, a final status
    with a body, no ``Transfer-Encoding`` or ``Content-Encoding``, one valid
    ``Content-Length`` of at most ``SMALL_BODY``. Applies exactly what ``_gate_head`` does to
    such a head (reason phrase; ``gate_head``: a folded field refused, ``Set-Cookie``
    dropped, every field redacted; the body buffered) and returns True (or raises as it
    would); returns False, having changed nothing, for any other head (``_gate_head`` then
    handles it). A head it leaves as it was is noted for the lean layer's send
    (seam/objects.py ``HEAD_NOTE``).
    tests/unit/test_speed_response_head.py compares the two on varied heads;
    tests/unit/test_speed_response_out.py the note with what it stands for."""
    data = resp.data
    code = data.status_code
    method = flow.request.data.method
    if (data.http_version not in (b"HTTP/1.1", b"HTTP/1.0") or code < 200 or code in (204, 304)
            or resp.stream or (method not in _OTHER_METHODS
                               and method.upper() in (b"HEAD", b"CONNECT"))):
        return False
    fields = data.headers.fields
    head: ResponseHead | None = flow.metadata.pop(UPSTREAM_HEAD, None)
    if head is not None and head.headers is fields:
        # A head net/h1pool.py ``parse_known`` read, unchanged since the pool stage made the
        # response of it (``UPSTREAM_HEAD``): its names are ``head.known``'s, and what they
        # tell is read once per ``_Known`` (``_known_gate``; the gate's own memo is not
        # used). Each name is a token and each value in ``_KNOWN_VALUE``'s class (no CR, LF
        # or NUL: ``gate_wire_head``'s fold test passes); the Content-Length's value is 1
        # to 18 ASCII digits (``_KNOWN_LENGTH``) and ``head.length`` its ``int``.
        # tests/unit/test_speed_response_known.py compares it with the gate as it was.
        known = head.known
        assert known is not None and head.values is not None  # (set with ``known``)
        kept = known.gate
        if kept is None:
            kept = known.gate = _known_gate(known.names)
        if kept is False:
            return False
        at, cookie, connection, wire = kept
        values = head.values
        length = values[at]
        if (length[0] == 48 and length != b"0") or head.length > SMALL_BODY:
            return False
        data.reason = _REASONS.get(code, b"")
        block = wire % values
        # (``gate_wire_head`` without its fold test: see above)
        headers = data.headers
        if cookie:
            drop_set_cookie(headers)
            redactor.redact_headers(headers, block if headers.fields is fields else None)
        elif redactor.may_match(block):  # (``redact_headers``' own pre-check, first)
            redactor.redact_headers(headers, block)
        fresh: _Shape | None = None
    else:
        names = tuple(map(_NAME, fields))
        shape = _SHAPES.get(names)
        fresh = None
        if shape is None:
            shape = fresh = _names_shape(names)
            if shape is None:
                return False
        at, cookie, connection, wire = shape
        length = fields[at][1]
        # mitmproxy's validate, the whole value ``(?:0|[1-9][0-9]*)``: ASCII digits
        # (``bytes.isdigit``), no leading zero but "0" itself; no regular expression call
        # (~2k instructions; tests/unit/test_speed_stages4.py compares them)
        if (not length.isdigit() or (length[0] == 48 and length != b"0")
                or int(length) > SMALL_BODY):
            return False
        data.reason = _REASONS.get(code, b"")
        # No coding: it only checks, (drops) and redacts (``gate_head``), over the fields'
        # wire form (seam/objects.py ``wire_block``, inline; by the names' ``%`` once they
        # are kept), which the agent gets if none changes
        block = (b"\r\n".join([b": ".join(field) for field in fields]) if wire is None
                 else wire % tuple([value for _, value in fields]))
        gate_wire_head(redactor, data.headers, block, cookie)
    if data.headers.fields is not fields:  # a field dropped or redacted: look at them again
        _gate_body(flow, resp, redactor, service, None)
    else:
        resp.stream = False  # buffered: ``response`` redacts it whole
        # for the lean layer's send (seam/lean.py): the head's block, and what its names
        # tell ``closes`` (no Connection field, or one "keep-alive": none says close)
        flow.metadata[HEAD_NOTE] = (fields, block, connection == -1 or (
            connection >= 0 and fields[connection][1] == b"keep-alive"))
    if fresh is not None:  # (a head with these names passed: the next one's loop is a look-up)
        _remember(names, fresh)
    return True


def _gate_head(flow: http.HTTPFlow, resp: http.Response, redactor: Redactor, service: str) -> None:
    """The response head's rules in full (any head ``_plain_small_head`` does not take)."""
    resp.reason = status_codes.RESPONSES.get(resp.status_code, "")
    refuse_folded(resp.headers)
    if resp.status_code == 101:
        _check_upgrade(flow)
    if resp.http_version in ("HTTP/1.0", "HTTP/1.1"):
        _check_framing(resp)
    if _no_body(flow) or resp.status_code == 101:
        drop_set_cookie(resp.headers)
        redact_headers(redactor, resp.headers)
        return
    _encoding, decode = gate_head(redactor, resp.headers)
    _gate_body(flow, resp, redactor, service, decode)


def _gate_body(
    flow: http.HTTPFlow, resp: http.Response, redactor: Redactor, service: str,
    decode: Callable[[bytes], bytes] | None,
) -> None:
    """How the body goes: buffered whole when small, else streamed through the redactor."""
    if _known_small(flow):
        resp.stream = False  # buffered: ``response`` decodes and redacts it whole
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
    resp.stream = stream_filter(redactor, decode, _cutter(flow, service))


def ws_control(conn_id: str, event: object) -> object:
    """Redact what a server's ping, pong or close frame carries (the seam calls it:
    ``seam.defences.Hooks``)."""
    redactor = _ws_redactors.get(conn_id)
    if redactor is None:
        return event
    if isinstance(event, wsproto.events.Ping | wsproto.events.Pong):
        payload = redactor.redact(bytes(event.payload))[:_WS_CONTROL_MAX]
        return type(event)(payload=payload)
    if isinstance(event, wsproto.events.CloseConnection) and event.reason:
        reason = redactor.redact(event.reason.encode("utf-8", "surrogateescape"))
        text = reason[:_WS_REASON_MAX].decode("utf-8", "ignore")
        return wsproto.events.CloseConnection(code=event.code, reason=text)
    return event


class ResponseGate(Stage):
    @guarded
    @handed
    def responseheaders(self, flow: http.HTTPFlow, rec: FlowRecord | None = None) -> None:
        if rec is None:  # (handed on by the dispatch: seam/dispatch.py ``RECORD``)
            rec = flow.metadata.get(KEY) or record_of(flow)
        decision = rec.decision
        service = decision.service if decision is not None else None
        if service is None or flow.response is None or rec.refusal is not None:
            return
        if rec.retried:  # the Mint stage's resend after a 401 stands in for the 401
            _gate_resent(self.rt, flow, rec)
            return
        resp = flow.response
        # The redactor the request was injected under (stages/ahead.py): a lock or reload
        # while it was in flight does not leave its response unscanned or hanging.
        redactor = rec.redactor or self.rt.state().session.redactor_for(service)
        if redactor is None:
            raise UnscannableResponse("the keystore was locked while the request was in flight")
        rec.redactor = redactor
        if _plain_small_head(flow, resp, redactor, service.name):
            rec.plain_fields = resp.data.headers.fields  # no content coding: see response
        else:
            _gate_head(flow, resp, redactor, service.name)

    @guarded
    @handed
    def response(self, flow: http.HTTPFlow, rec: FlowRecord | None = None) -> None:
        if rec is None:  # (handed on by the dispatch: seam/dispatch.py ``RECORD``)
            rec = flow.metadata.get(KEY) or record_of(flow)
        refusal = rec.refusal
        if refusal is not None and refusal.reply is not None:
            # Refused after the upstream's head arrived: mitmproxy put the upstream's body
            # into our reply meanwhile; send ours as it was made.
            if flow.response is not refusal.reply:
                flow.response = refusal.reply
            return
        resp = flow.response
        if rec.retried and resp is not None and isinstance(resp.stream, _Resent):
            _resent_body(resp, resp.stream)
            return
        redactor = rec.redactor
        if redactor is None or resp is None:
            return
        trailers = resp.data.trailers  # (``resp.trailers``)
        if trailers:
            if flow.request.http_version.startswith("HTTP/1"):
                resp.trailers = None  # mitmproxy cannot send trailers to an HTTP/1 agent
            else:
                refuse_folded(trailers)
                redactor.redact_headers(trailers)
        if resp.stream:
            return  # streamed through the redactor
        data = resp.data
        plain = rec.plain_fields
        if plain is not None and data.headers.fields is plain and refusal is None:
            # the head the one-pass path took, unchanged since: no coding (``_redact_whole``
            # without an encoding, inline). ``redact``'s pre-check first: a body in which
            # no form may be is left as it is whatever the checks below would say (they
            # only decide whether it is scanned), so they are made only for one that may.
            # tests/unit/test_speed_response_body.py compares it with the order it had.
            body = data.content  # (``resp.raw_content``)
            if body and redactor.may_match(body):
                code = data.status_code  # ``_no_body(flow)``, inline
                if (flow.request.data.method.upper() == b"HEAD" or code < 200
                        or code in (204, 304)):
                    return  # nothing to scan
                out = redactor.redact(body)
                if out is not body:
                    resp.raw_content = out
                    resp.headers["content-length"] = str(len(out))
            return
        code = data.status_code  # ``_no_body(flow)``, inline: every request
        if flow.request.data.method.upper() == b"HEAD" or code < 200 or code in (204, 304):
            return  # nothing to scan
        if refusal is None:  # buffered by responseheaders (``_known_small``)
            encoding = resp.headers.get("content-encoding", "").strip().lower()
            encoding = "" if encoding == "identity" else encoding  # as gate_head read it
            limit = self.rt.state().registry.config.proxy.max_body_mb * 1024 * 1024 \
                if encoding else 0  # only a decoder needs it
            _redact_whole(flow, redactor, encoding, limit)
        elif resp.raw_content:
            resp.raw_content = redactor.redact(resp.raw_content)

    @guarded
    def http_connect_error(self, flow: http.HTTPFlow) -> None:
        """A CONNECT mitmproxy itself refused (e.g. the eager dial failed): answer with ours."""
        resp = flow.response
        if resp is not None and "x-vaultproxy-error" not in resp.headers:
            why = str(flow.server_conn.error or "cannot connect")  # never echoed
            status, code, public = classify_engine_error(resp.status_code, why)
            flow.response = error_reply(_Engine(status, code, public))

    @guarded
    def websocket_start(self, flow: http.HTTPFlow) -> None:
        redactor = record_of(flow).redactor
        if redactor is not None:
            _ws_redactors[flow.server_conn.id] = redactor

    @guarded
    def websocket_end(self, flow: http.HTTPFlow) -> None:
        _ws_redactors.pop(flow.server_conn.id, None)

    @guarded
    def websocket_message(self, flow: http.HTTPFlow) -> None:
        ws = flow.websocket
        if ws is None or not ws.messages:
            return
        message = ws.messages[-1]
        redactor = record_of(flow).redactor
        if redactor is not None and not message.from_client:
            message.content = redactor.redact(message.content)
        # Do not retain messages for the connection's life (mitmproxy #6620).
        del ws.messages[:-1]


def _gate_resent(rt: Runtime, flow: http.HTTPFlow, rec: FlowRecord) -> None:
    """The response the Mint stage got by resending after a 401 (stages/mint.py), in place
    of the 401: the same header rules as any response; its body (read whole, at most
    ``max_body_mb``) decoded and redacted here. The 401's own body is still to come from
    the upstream: every chunk of it is dropped, and the resend's body sent at its end."""
    resp, decision = flow.response, rec.decision
    service = decision.service if decision is not None else None
    assert resp is not None and service is not None
    st = rt.state()
    redactor = st.session.redactor_for(service)  # it knows the token minted for the resend
    if redactor is None:
        raise UnscannableResponse("the keystore was locked while the request was in flight")
    rec.redactor = redactor
    resp.reason = status_codes.RESPONSES.get(resp.status_code, "")
    refuse_folded(resp.headers)
    body, out = resp.raw_content or b"", b""
    if _no_body(flow):
        drop_set_cookie(resp.headers)
        redact_headers(redactor, resp.headers)
    else:
        encoding, _decode = gate_head(redactor, resp.headers)
        plain = body
        if encoding:
            decode = decoder_for(encoding, st.registry.config.proxy.max_body_mb * 1024 * 1024)
            if decode is None:  # pragma: no cover - gate_head refused it
                raise UnscannableResponse()
            plain = decode(body) + decode(b"")
            del resp.headers["content-encoding"]
        out = redactor.redact(plain)
        resp.headers["content-length"] = str(len(out))
    resp.raw_content = b""
    resp.stream = _Resent(out)


class _Resent:
    """The stream of a resent flow: every chunk of the 401's body goes nowhere, and the
    resend's (already redacted) body goes out at its end, once."""

    def __init__(self, body: bytes) -> None:
        self.pending: bytes | None = body

    def __call__(self, chunk: bytes) -> list[bytes]:
        if chunk:
            return []
        pending, self.pending = self.pending, None
        return [pending] if pending else []


def _resent_body(resp: http.Response, stream: _Resent) -> None:
    """``response`` of a resent flow: when the 401 had no body nothing was streamed, so the
    resend's body goes out as the response's content."""
    resp.trailers = None  # the 401's, if any
    pending, stream.pending = stream.pending, None
    if pending:
        resp.raw_content = pending


class _Engine(VaultproxyError):
    """An error mitmproxy detected, carried as ours (status and code from the classifier)."""

    def __init__(self, status: int, code: str, public: str) -> None:
        self.status, self.code, self.public = status, code, public
        super().__init__(public)
