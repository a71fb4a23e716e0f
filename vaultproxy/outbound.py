"""The only place an httpx client is built: the admin ``POST /proxy`` upstream connection.

Every client dials an address the policy already checked (an IP literal in the URL), sends
the service's host as ``Host`` and as TLS SNI, and verifies the certificate against the
service's trust file (system CAs + its ``ca_cert``) for that host name. It never reads the
environment (no ``HTTPS_PROXY``, no ``SSL_CERT_FILE``) and never follows redirects.

One client per (service, SNI, trust file, insecure) so a pooled connection verified for one
name is never reused for another. Third-party errors are translated here, at the seam.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass
from pathlib import Path

import httpx

from vaultproxy.errors import UpstreamTLS, UpstreamUnreachable

# httpx logs full URLs (query strings, i.e. possibly credentials) at INFO.
for _name in ("httpx", "httpcore"):
    logging.getLogger(_name).setLevel(logging.WARNING)

CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 120.0


@dataclass(frozen=True)
class UpstreamKey:
    service: str
    sni: str
    trust_file: Path
    insecure: bool


def tls_context(trust_file: Path, insecure: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(trust_file))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])
    if insecure:  # the service's own, loudly logged, insecure_tls = true
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def build_client(key: UpstreamKey) -> httpx.AsyncClient:  # noqa: TID251
    return httpx.AsyncClient(  # noqa: TID251
        verify=tls_context(key.trust_file, key.insecure),
        trust_env=False,
        follow_redirects=False,
        http2=False,
        timeout=httpx.Timeout(READ_TIMEOUT, connect=CONNECT_TIMEOUT),
        limits=httpx.Limits(max_connections=20, max_keepalive_connections=5),
    )


class UpstreamClients:
    """A small cache of clients, one per UpstreamKey; ``aclose()`` at shutdown."""

    def __init__(self) -> None:
        self._clients: dict[UpstreamKey, httpx.AsyncClient] = {}  # noqa: TID251

    def get(self, key: UpstreamKey) -> httpx.AsyncClient:  # noqa: TID251
        client = self._clients.get(key)
        if client is None:
            client = self._clients[key] = build_client(key)
        return client

    async def send(self, key: UpstreamKey, request: httpx.Request) -> httpx.Response:
        """Send with the body streamed back; httpx/ssl errors become our upstream errors."""
        request.extensions["sni_hostname"] = key.sni
        try:
            return await self.get(key).send(request, stream=True)
        except httpx.ConnectError as e:
            if _is_tls_failure(e):
                raise UpstreamTLS(f"upstream TLS for {key.sni} was not trusted") from None
            raise UpstreamUnreachable(
                f"could not connect to the upstream of {key.service}"
            ) from None
        except httpx.TimeoutException:
            raise UpstreamUnreachable(f"the upstream of {key.service} timed out") from None
        except httpx.HTTPError:
            raise UpstreamUnreachable(f"the upstream of {key.service} failed") from None

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()


def _is_tls_failure(err: BaseException) -> bool:
    seen: BaseException | None = err
    for _ in range(6):
        if seen is None:
            return False
        if isinstance(seen, ssl.SSLError | ssl.CertificateError):
            return True
        seen = seen.__cause__ or seen.__context__
    return "CERTIFICATE_VERIFY_FAILED" in str(err)


def admin_client(timeout: httpx.Timeout) -> httpx.AsyncClient:  # noqa: TID251
    """A client for our own admin listener on loopback (the reserved MCP host's relay):
    plain HTTP, no proxies from the environment."""
    return httpx.AsyncClient(timeout=timeout, trust_env=False)  # noqa: TID251


def pool_client(
    key: UpstreamKey, *, http2: bool, idle: float, connect: float, response: float
) -> httpx.AsyncClient:  # noqa: TID251
    """The warm upstream pool of one service (stages/pool.py): like ``build_client``, with
    HTTP/2 when the proxy offers it and idle connections kept ``idle`` seconds. The caller
    keys it by everything its connections were verified and dialled under."""
    return httpx.AsyncClient(  # noqa: TID251
        verify=tls_context(key.trust_file, key.insecure),
        trust_env=False,
        follow_redirects=False,
        http2=http2,
        timeout=httpx.Timeout(response, connect=connect, pool=connect),
        limits=httpx.Limits(max_connections=100, max_keepalive_connections=20,
                            keepalive_expiry=idle),
    )


def pool_error_text(err: BaseException) -> str:
    """mitmproxy's wording for a pooled exchange that failed (seam/engine_errors.py reads
    it into the code the unpooled path answers); never any of the upstream's bytes."""
    if isinstance(err, httpx.TimeoutException | TimeoutError):
        return "vaultproxy: upstream timeout"
    if isinstance(err, httpx.ConnectError):
        if _is_tls_failure(err):
            return "TLS handshake with the upstream failed"
        return "could not connect to the upstream"
    if isinstance(err, httpx.RemoteProtocolError | httpx.LocalProtocolError
                  | httpx.DecodingError):
        return "HTTP/1 protocol error: the upstream's response is malformed"
    return "server closed connection"
