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
import time
from collections.abc import Callable, Iterable
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



class Head:
    """What the last HTTP/1 response head read on this task held (``HeadWatch``).

    A slots class, not a dataclass: one is built per response, and its ``__init__`` costs
    ~0.9k instructions less (callgrind, once per response); no attribute beyond these two
    can be set on it (a NamedTuple costs more than the dataclass)."""

    __slots__ = ("folded", "status")

    def __init__(self, status: int = 0, folded: bool = False) -> None:
        self.status = status
        self.folded = folded

    def __repr__(self) -> str:
        return f"Head(status={self.status!r}, folded={self.folded!r})"

    def __eq__(self, other: object) -> bool:
        if type(other) is not Head:
            return NotImplemented
        return (self.status, self.folded) == (other.status, other.folded)

    __hash__ = None  # type: ignore[assignment]  # (as the dataclass: mutable, unhashable)


head_seen: ContextVar[Head | None] = ContextVar("head_seen", default=None)


class HeadScan:
    """What an HTTP/1 response head holds that a strict parser hides: h11 unfolds an
    obs-folded header line and refuses an unasked ``101`` only as a protocol error, where
    mitmproxy's reader lets the response gate refuse both (``502 upstream_protocol`` /
    ``upgrade_refused``). Fed the bytes read after a request went out; leaves what the
    head held in ``head_seen`` for the task that reads it (the pooled exchange)."""

    __slots__ = ("_head", "folded", "status")

    def __init__(self) -> None:
        self._head: bytes | None = None  # the response head being read; None: in a body
        self.folded = False
        self.status = 0

    def start(self) -> None:
        """A request went out: a response head comes next."""
        self._head, self.folded, self.status = b"", False, 0

    @property
    def active(self) -> bool:
        return self._head is not None

    def feed(self, data: bytes) -> None:
        if self._head is None or not data:
            return
        head = self._head + data
        while True:
            end = head.find(b"\r\n\r\n")
            part = head if end < 0 else head[: end + 2]
            if part.startswith(b"HTTP/") and len(part) >= 12 and part[9:12].isdigit():
                self.status = int(part[9:12])
            # (``find``: ``part`` is bytes -- ``_head`` is -- and ``bytes in bytes`` raises
            # and clears a TypeError inside CPython before it searches)
            if part.find(b"\r\n ") != -1 or part.find(b"\r\n\t") != -1:
                self.folded = True
            head_seen.set(Head(self.status, self.folded))
            if end < 0:
                self._head = head[-65536:]
                return
            head = head[end + 4:]
            if not (100 <= self.status < 200 and self.status != 101):
                self._head = None  # the final head: a body follows
                return


class TLSSessions:
    """The TLS sessions of one pool's connections, one per server name, so that the next dial
    to that name resumes (no certificate exchange, one round trip less for TLS 1.2) instead of
    a full handshake.

    It lives on the pool's own ``SSLContext`` (``resuming_context``): that context is built
    per service, tunnel host, trust file and ``insecure_tls`` flag and dropped with the pool
    on a reload, so a session verified under one service's trust for one name is never
    offered for another service, another name or another trust. A resumed connection
    carries the certificate verified by the full handshake it resumes; only the server that
    issued the session (its ticket key) can accept it."""

    def __init__(self) -> None:
        self._by_name: dict[str, ssl.SSLSession] = {}

    def get(self, name: str | None) -> ssl.SSLSession | None:
        return self._by_name.get(name.lower()) if name is not None else None

    def keep(self, name: str | None, ssl_object: Any) -> bool:
        """Keep ``ssl_object``'s session for ``name`` once it can be resumed: at once for TLS
        1.2, after the server's ticket (which follows the handshake) for TLS 1.3. Whether
        it was kept (the caller stops asking then)."""
        if name is None:
            return True
        session = ssl_object.session
        if session is None:
            return False
        if ssl_object.version() == "TLSv1.3" and not session.has_ticket:
            return False
        self._by_name[name.lower()] = session
        return True


class _ResumingObject(ssl.SSLObject):
    """``SSLContext.wrap_bio`` with the context's kept session for the server name offered.
    (Set as the context's ``sslobject_class``: the context stays a plain ``SSLContext``,
    which anyio wraps without a thread hop.)"""

    @classmethod
    def _create(cls, incoming: Any, outgoing: Any, server_side: bool = False,
                server_hostname: str | None = None, session: Any = None,
                context: Any = None) -> Any:
        sessions = getattr(context, "vaultproxy_sessions", None)
        if session is None and not server_side and isinstance(sessions, TLSSessions):
            session = sessions.get(server_hostname)
        create: Any = super()._create  # type: ignore[misc]  # (private: not in typeshed)
        return create(incoming, outgoing, server_side, server_hostname,
                      session=session, context=context)


def sessions_of(ssl_context: ssl.SSLContext) -> TLSSessions | None:
    found = getattr(ssl_context, "vaultproxy_sessions", None)
    return found if isinstance(found, TLSSessions) else None


def resuming_context(trust_file: Path, insecure: bool) -> ssl.SSLContext:
    """``tls_context`` whose client connections resume the last session kept for their
    server name (``TLSSessions``)."""
    ctx = tls_context(trust_file, insecure)
    ctx.sslobject_class = _ResumingObject
    ctx.vaultproxy_sessions = TLSSessions()  # type: ignore[attr-defined]
    return ctx


class HeadWatch(httpcore.AsyncNetworkStream):
    """One pooled upstream connection's stream, watching each HTTP/1 response head as it is
    read: httpcore (h11) unfolds an obs-folded header line and refuses an unasked ``101``
    only as a protocol error, where mitmproxy's reader lets the response gate refuse both
    (``502 upstream_protocol`` / ``upgrade_refused``). What the head held is left in
    ``head_seen`` for the task that reads it (the pooled exchange)."""

    def __init__(self, inner: httpcore.AsyncNetworkStream,
                 sessions: TLSSessions | None = None, name: str | None = None) -> None:
        self._inner = inner
        self._scan = HeadScan()
        # httpcore asks every idle connection "is_readable" on each request it assigns (and
        # drop_closed does for HTTP/2); anyio rebuilds its attribute tables, with a
        # getpeername call, for every question. The socket does not change: kept once.
        self._sock: Any = inner.get_extra_info("socket")
        ssl_object: Any = inner.get_extra_info("ssl_object")
        self._ssl_object = ssl_object
        alpn = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
        self._h1 = alpn != "h2"  # HTTP/2 frames are binary: nothing of this applies
        # where this connection's session is kept once resumable (None: kept, or no TLS)
        self._sessions = sessions if ssl_object is not None else None
        self._name = name
        self._asks = 0  # reads that found no resumable session yet (a server may send none)
        if self._sessions is not None and self._sessions.keep(name, ssl_object):
            self._sessions = None

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        data = await self._inner.read(max_bytes, timeout)
        if self._scan.active:
            self._scan.feed(data)
        if self._sessions is not None:
            self._asks += 1  # a TLS 1.3 ticket arrives before the first response, if ever
            if self._sessions.keep(self._name, self._ssl_object) or self._asks >= 8:
                self._sessions = None
        return data

    async def settle(self, seconds: float) -> bool:
        """Read what a TLS 1.3 server sends right after the handshake (its session tickets,
        one round trip later) before the connection waits idle: unread, they leave the
        socket readable, which the pool takes for a closed connection (``drop_closed``,
        httpcore's own check). True when nothing else came within ``seconds`` (no EOF, no
        unasked bytes): the connection is ready for a request."""
        obj = self._ssl_object
        if obj is None or obj.version() != "TLSv1.3":
            return True
        try:
            await self._inner.read(1, seconds)
        except httpcore.ReadTimeout:
            return True
        finally:
            if self._sessions is not None and self._sessions.keep(self._name, obj):
                self._sessions = None
        return False  # EOF, or bytes nobody asked for

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if self._h1:  # a request: a response head comes next
            self._scan.start()
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                        timeout: float | None = None) -> httpcore.AsyncNetworkStream:
        stream = await self._inner.start_tls(ssl_context, server_hostname, timeout)
        return HeadWatch(stream, sessions_of(ssl_context), server_hostname)

    def get_extra_info(self, info: str) -> object:
        if info == "is_readable":
            return readable(self._sock)
        return self._inner.get_extra_info(info)


def readable(sock: Any) -> bool:
    """httpcore's ``is_socket_readable``: data (or EOF) waiting to be read; a closed socket
    (no descriptor) counts as readable, as its next read would return the end."""
    fd = sock.fileno() if sock is not None else -1
    if fd < 0:
        return True
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


class _Dialer(httpcore.AsyncNetworkBackend):
    """httpcore's own backend, every stream wrapped in a HeadWatch."""

    def __init__(self, on_dial: Callable[[], None] | None = None) -> None:
        self._inner = httpcore.AnyIOBackend()
        self.on_dial = on_dial  # after each new connection (stages/pool.py's watcher)

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: Iterable[Any] | None = None,
                          ) -> httpcore.AsyncNetworkStream:
        stream = HeadWatch(await self._inner.connect_tcp(
            host, port, timeout, local_address, socket_options))
        if self.on_dial is not None:
            self.on_dial()
        return stream

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Iterable[Any] | None = None,
                                  ) -> httpcore.AsyncNetworkStream:
        raise OSError("a pooled upstream is never a unix socket")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def pool_context(key: UpstreamKey, *, http2: bool, resume: bool = True) -> ssl.SSLContext:
    """The TLS context of one service's warm pool: the trust of ``tls_context`` for ``key``,
    HTTP/2 offered when the proxy offers it, a new connection resuming the TLS session of an
    earlier one (``resume``; the context, hence its sessions, belongs to this pool alone,
    shared by its httpcore pool and its HTTP/1.1 connections, net/h1pool.py)."""
    ssl_context = (resuming_context(key.trust_file, key.insecure) if resume
                   else tls_context(key.trust_file, key.insecure))
    # (httpcore sets the same on each of its dials; the HTTP/1.1 client's dials offer it too)
    ssl_context.set_alpn_protocols(["http/1.1", "h2"] if http2 else ["http/1.1"])
    return ssl_context


def pool_transport(key: UpstreamKey, *, http2: bool, idle: float, resume: bool = True,
                   ssl_context: ssl.SSLContext | None = None,
                   on_dial: Callable[[], None] | None = None,
                   ) -> httpcore.AsyncConnectionPool:
    """The warm upstream pool of one service (stages/pool.py) on ``ssl_context``
    (``pool_context`` when None): HTTP/2 when the proxy offers it, idle connections kept
    ``idle`` seconds. The caller keys it by everything its connections were verified and
    dialled under, and sends the SNI (``sni_hostname``) and an IP literal it checked.
    ``on_dial``: called after each new connection's TCP connect."""
    if ssl_context is None:
        ssl_context = pool_context(key, http2=http2, resume=resume)
    return httpcore.AsyncConnectionPool(
        ssl_context=ssl_context,
        http1=True, http2=http2, max_connections=100, max_keepalive_connections=20,
        keepalive_expiry=idle, network_backend=_Dialer(on_dial),
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
        if isinstance(inner, httpcore.AsyncHTTP11Connection):
            continue  # httpcore checks these itself as it assigns the request
        stream = getattr(inner, "_network_stream", None)
        if stream is not None and stream.get_extra_info("is_readable"):
            await conn.aclose()
            closed += 1
    return closed


def _can_prewarm(pool: httpcore.AsyncConnectionPool) -> bool:
    return all(hasattr(pool, name) for name in (
        "create_connection", "_connections", "_optional_thread_lock", "_max_connections"))


async def prewarm(pool: httpcore.AsyncConnectionPool, url: httpcore.URL, sni: str,
                  connect_timeout: float, idle: float) -> str | None:
    """Open one connection of ``pool`` to ``url``'s origin (an IP literal the caller
    checked) with the pool's own dial: TCP, then TLS verified for ``sni`` under the pool's
    trust; left idle in the pool for the next request, closed after ``idle`` seconds unused
    like any other (``drop_expired``). No request is sent. httpcore opens a connection only
    for a request, so this builds its connection as ``AsyncHTTPConnection`` does (private
    names, checked: None when they are missing, and when the pool is full). The protocol
    the upstream chose: "h2" or "http/1.1"."""
    if not _can_prewarm(pool) or len(pool.connections) >= pool._max_connections:
        return None
    request = httpcore.Request(b"GET", url, extensions={
        "sni_hostname": sni, "timeout": {"connect": connect_timeout}})
    conn: Any = pool.create_connection(request.url.origin)
    if not hasattr(conn, "_connect") or not hasattr(conn, "_connection"):
        return None
    started = time.monotonic()
    stream = await conn._connect(request)
    # the tickets come one round trip after the handshake, which took about two
    wait = min(connect_timeout, 1.5 * (time.monotonic() - started) + 0.05)
    if isinstance(stream, HeadWatch) and not await stream.settle(wait):
        await stream.aclose()
        raise httpcore.RemoteProtocolError("the upstream sent unasked bytes or closed")
    ssl_object: Any = stream.get_extra_info("ssl_object")
    h2 = ssl_object is not None and ssl_object.selected_alpn_protocol() == "h2"
    if not adopt(pool, stream, url, idle, h2=h2, conn=conn):
        await stream.aclose()
        return None
    return "h2" if h2 else "http/1.1"


def adopt(pool: httpcore.AsyncConnectionPool, stream: httpcore.AsyncNetworkStream,
          url: httpcore.URL, idle: float, *, h2: bool, conn: Any = None) -> bool:
    """Put ``stream`` (a connection dialled and verified for ``url``'s origin, nothing sent
    on it yet) into ``pool`` as an idle connection, as ``prewarm`` leaves one; False when
    httpcore lacks the private names this needs or the pool is full (the caller closes
    the stream then)."""
    if not _can_prewarm(pool) or len(pool.connections) >= pool._max_connections:
        return False
    if conn is None:
        conn = pool.create_connection(url.origin)
        if not hasattr(conn, "_connection"):
            return False
    inner: Any
    if h2:
        from httpcore._async.http2 import AsyncHTTP2Connection
        inner = AsyncHTTP2Connection(origin=url.origin, stream=stream, keepalive_expiry=idle)
    else:
        from httpcore._async.http11 import AsyncHTTP11Connection
        inner = AsyncHTTP11Connection(origin=url.origin, stream=stream, keepalive_expiry=idle)
    inner._state = type(inner._state).IDLE  # ready: as after a response read to its end
    inner._expire_at = time.monotonic() + idle
    conn._connection = inner
    with pool._optional_thread_lock:
        pool._connections.append(conn)
    return True


async def drop_expired(pool: httpcore.AsyncConnectionPool) -> int:
    """Close every idle connection of ``pool`` past its keep-alive expiry. httpcore only
    looks when a request comes, so without this a connection nobody asks for again (a
    pre-warmed one, the last of a quiet service) would stay open past
    ``upstream_pool_idle``. How many were closed."""
    closed = 0
    for conn in pool.connections:
        if conn.is_idle() and not conn.is_closed() and conn.has_expired():
            await conn.aclose()
            closed += 1
    return closed
