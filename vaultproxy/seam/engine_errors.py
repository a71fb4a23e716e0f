"""Errors mitmproxy detects itself, read from its own wording: which of our codes each is.

mitmproxy says what went wrong only as text; the prefixes below are its phrasing (checked
against the pinned release by the security suite), so reading them belongs to the seam.
Nothing of the message is ever echoed: what follows a prefix may quote upstream bytes.
"""

from __future__ import annotations

from mitmproxy.connection import ConnectionState
from mitmproxy.http import HTTPFlow

from vaultproxy.errors import (
    BodyTooLarge,
    InvalidRequest,
    UpstreamProtocol,
    UpstreamTimeout,
    UpstreamTLS,
    UpstreamUnreachable,
)

# Prefixes of mitmproxy's messages for a response it could not read (its own wording; what
# follows may quote the upstream, so only the start is looked at and nothing is echoed).
_PROTOCOL_PREFIXES = (
    "cannot parse http response",
    "unexpected server response",
    "http/1 protocol error",
    "http/2 protocol error",
    "server closed connection",
    "received ",  # "Received <invalid header> from server, refusing ..."
    "response body exceeds",
)
_TLS_WORDS = ("tls", "ssl", "certificate", "handshake")


def classify_engine_error(status: int, message: str) -> tuple[int, str, str]:
    """(status, code, public message) for an error mitmproxy itself detected.

    Never returns any part of ``message``: it may quote upstream bytes.
    """
    if status == 413:
        return BodyTooLarge.status, BodyTooLarge.code, BodyTooLarge.public
    if status < 500:
        return InvalidRequest.status, InvalidRequest.code, InvalidRequest.public
    head = message.lstrip().lower()
    if "vaultproxy: upstream timeout" in head[:160]:  # seam/deadlines.py ended it
        return UpstreamTimeout.status, UpstreamTimeout.code, UpstreamTimeout.public
    if head.startswith(_PROTOCOL_PREFIXES):
        return UpstreamProtocol.status, UpstreamProtocol.code, UpstreamProtocol.public
    if any(w in head[:120] for w in _TLS_WORDS):
        return UpstreamTLS.status, UpstreamTLS.code, UpstreamTLS.public
    return UpstreamUnreachable.status, UpstreamUnreachable.code, UpstreamUnreachable.public


def client_gone(flow: HTTPFlow) -> bool:
    """Whether the client (not the upstream) ended a failed flow.

    * Its connection ended (FIN, reset, close): mitmproxy clears ``CAN_READ`` as the close
      arrives, before the error it causes reaches the flow's hooks, while an upstream
      failure reaches them with the client still connected (mitmproxy takes a client's FIN
      as "no longer interested", a disconnect).
    * HTTP/2: it reset the stream (an SDK cancelling a call), its connection still open.
      mitmproxy words a stream reset the same for either side ("stream reset by client"),
      so it counts only when the upstream does not speak HTTP/2: then only the client's
      connection can carry one. Ambiguous cases stay the upstream's.
    """
    if not (flow.client_conn.state & ConnectionState.CAN_READ):
        return True
    message = flow.error.msg.lower() if flow.error is not None else ""
    return message.startswith("stream reset by client") and flow.server_conn.alpn != b"h2"
