"""The egress policy for the OTLP exporter's HTTP session (``requests``, which dials by name
itself): every request's URL is judged before it is sent, by the same rules as a service
(vaultproxy/net/egress.py with ``[audit] allow_loopback`` / ``allow_private``), and plain
``http://`` is only allowed to a loopback IP literal. A refused URL raises
:class:`EgressDenied`, which the exporter reports as a failed export (the sender retries).

The webhook and syslog sinks dial the checked address themselves (vaultproxy/net/resolve.py);
here the name is resolved for the check and again by ``requests`` to connect, so a DNS
answer that changes in between is not caught (a loopback or IP endpoint has no such gap).
"""

from __future__ import annotations

import socket
from typing import Any
from urllib.parse import urlsplit

import requests

from vaultproxy.net.egress import AddressContext, check_name, judge, parse_ip, with_article


class EgressDenied(Exception):
    """The OTLP endpoint is refused by the egress policy (message: why, never a header)."""


def check_url(url: str, ctx: AddressContext) -> None:
    """Raise EgressDenied unless ``url`` may be dialled under ``ctx``."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise EgressDenied("the OTLP endpoint has an invalid port") from None
    literal = parse_ip(host)
    if parts.scheme == "http":
        if literal is None or not literal.is_loopback:
            raise EgressDenied("plain http:// is only allowed to a loopback IP "
                               "(http://127.0.0.1:4318); use https://")
    elif parts.scheme != "https":
        raise EgressDenied("the OTLP endpoint must be an https:// URL")
    if literal is not None:
        _judge([host], port, ctx, host)
        return
    refused = check_name(host)
    if refused is not None:
        raise EgressDenied(f"OTLP endpoint denied: {refused.reason}")
    try:
        answers = [str(i[4][0]) for i in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]
    except (OSError, UnicodeError):
        raise EgressDenied(f"could not resolve the OTLP endpoint {host}") from None
    _judge(answers, port, ctx, host)


def _judge(answers: list[str], port: int, ctx: AddressContext, host: str) -> None:
    for text in answers:
        ip = parse_ip(text)
        if ip is None:
            raise EgressDenied(f"{host} resolved to a non-numeric answer")
        verdict = judge(ip, port, ctx)
        if not verdict.allowed:
            hint = ("; set [audit] allow_loopback = true" if verdict.reason.startswith("loopback")
                    else "")
            raise EgressDenied(
                f"OTLP endpoint denied: {host} is {with_article(verdict.reason)}{hint}")


class CheckedSession(requests.Session):
    """A ``requests`` session that never reads the environment's proxies or CA variables
    and judges every URL by the egress policy before it is dialled."""

    def __init__(self, ctx: AddressContext) -> None:
        super().__init__()
        self.trust_env = False
        self.ctx = ctx

    def request(self, method: str | bytes, url: str | bytes, *args: Any,  # type: ignore[override]
                **kwargs: Any) -> requests.Response:
        text = url.decode() if isinstance(url, bytes) else url
        check_url(text, self.ctx)
        kwargs["allow_redirects"] = False
        verb = method.decode() if isinstance(method, bytes) else method
        return super().request(verb, text, *args, **kwargs)
