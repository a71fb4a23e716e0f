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
import select
import ssl
from collections.abc import Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpcore
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



@dataclass
class Head:
    """What the last HTTP/1 response head read on this task held (``HeadWatch``)."""

    status: int = 0
    folded: bool = False


head_seen: ContextVar[Head | None] = ContextVar("head_seen", default=None)


class HeadWatch(httpcore.AsyncNetworkStream):
    """One pooled upstream connection's stream, watching each HTTP/1 response head as it is
    read: httpcore (h11) unfolds an obs-folded header line and refuses an unasked ``101``
    only as a protocol error, where mitmproxy's reader lets the response gate refuse both
    (``502 upstream_protocol`` / ``upgrade_refused``). What the head held is left in
    ``head_seen`` for the task that reads it (the pooled exchange)."""

    def __init__(self, inner: httpcore.AsyncNetworkStream) -> None:
        self._inner = inner
        self._head: bytes | None = None  # the response head being read; None: in a body
        self.folded = False
        self.status = 0
        ssl_object: Any = inner.get_extra_info("ssl_object")
        alpn = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
        self._h1 = alpn != "h2"  # HTTP/2 frames are binary: nothing of this applies
        self._raw: Any = inner.get_extra_info("socket")  # the TCP socket (under any TLS)

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        data = await self._inner.read(max_bytes, timeout)
        if self._head is not None and data:
            self._watch(data)
        return data

    def _watch(self, data: bytes) -> None:
        head = (self._head or b"") + data
        while True:
            end = head.find(b"\r\n\r\n")
            part = head if end < 0 else head[: end + 2]
            if part.startswith(b"HTTP/") and len(part) >= 12 and part[9:12].isdigit():
                self.status = int(part[9:12])
            if b"\r\n " in part or b"\r\n\t" in part:
                self.folded = True
            head_seen.set(Head(self.status, self.folded))
            if end < 0:
                self._head = head[-65536:]
                return
            head = head[end + 4:]
            if not (100 <= self.status < 200 and self.status != 101):
                self._head = None  # the final head: a body follows
                return

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if self._h1:  # a request: a response head comes next
            self._head, self.folded, self.status = b"", False, 0
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                        timeout: float | None = None) -> httpcore.AsyncNetworkStream:
        return HeadWatch(await self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> object:
        if info == "is_readable" and self._raw is not None:
            # httpcore asks this of every pooled connection each time it assigns a request
            # (has_expired: did the upstream close it while idle?); through anyio each ask
            # rebuilds the stream's attribute tables. The same poll, on the socket found once.
            fd = self._raw.fileno()
            if fd < 0:
                return True  # closed: as httpcore, "readable" (the next read sees the end)
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            return bool(poller.poll(0))
        return self._inner.get_extra_info(info)


class _Dialer(httpcore.AsyncNetworkBackend):
    """httpcore's own backend, every stream wrapped in a HeadWatch."""

    def __init__(self) -> None:
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: Iterable[Any] | None = None,
                          ) -> httpcore.AsyncNetworkStream:
        return HeadWatch(await self._inner.connect_tcp(
            host, port, timeout, local_address, socket_options))

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Iterable[Any] | None = None,
                                  ) -> httpcore.AsyncNetworkStream:
        raise OSError("a pooled upstream is never a unix socket")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def pool_transport(key: UpstreamKey, *, http2: bool, idle: float
                   ) -> httpcore.AsyncConnectionPool:
    """The warm upstream pool of one service (stages/pool.py): the trust of ``tls_context``
    for ``key``, HTTP/2 when the proxy offers it, idle connections kept ``idle`` seconds.
    The caller keys it by everything its connections were verified and dialled under, and
    sends the SNI (``sni_hostname``) and an IP literal it checked."""
    return httpcore.AsyncConnectionPool(
        ssl_context=tls_context(key.trust_file, key.insecure),
        http1=True, http2=http2, max_connections=100, max_keepalive_connections=20,
        keepalive_expiry=idle, network_backend=_Dialer(),
    )


def pool_error_text(err: BaseException) -> str:
    """mitmproxy's wording for a pooled exchange that failed (seam/engine_errors.py reads
    it into the code the unpooled path answers); never any of the upstream's bytes."""
    if isinstance(err, httpcore.TimeoutException | TimeoutError):
        return "vaultproxy: upstream timeout"
    if isinstance(err, httpcore.ConnectError):
        if _is_tls_failure(err):
            return "TLS handshake with the upstream failed"
        return "could not connect to the upstream"
    if isinstance(err, httpcore.ProtocolError):
        return "HTTP/1 protocol error: the upstream's response is malformed"
    return "server closed connection"


async def drop_closed(pool: httpcore.AsyncConnectionPool) -> int:
    """Close every idle connection of ``pool`` whose socket is readable: the upstream closed
    it (EOF, an HTTP/2 GOAWAY) or sent what nobody asked for. httpcore checks this for
    HTTP/1.1 but not for HTTP/2, where reusing such a connection fails the request with
    "Server disconnected" (a server's keep-alive timeout, e.g. 5 s for hypercorn, uvicorn and
    Node, is shorter than ``upstream_pool_idle``). A request is never resent for this:
    it goes out on a live connection instead. How many were closed."""
    closed = 0
    for conn in pool.connections:
        if not conn.is_idle() or conn.is_closed():
            continue
        inner = getattr(conn, "_connection", None)  # httpcore's HTTP/1.1 or HTTP/2 state
        stream = getattr(inner, "_network_stream", None)
        if stream is not None and stream.get_extra_info("is_readable"):
            await conn.aclose()
            closed += 1
    return closed
