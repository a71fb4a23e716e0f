"""A keep-alive load client without spare connections: exactly ``-c N`` connections, each
through the proxy's CONNECT (or straight to the target without ``-x``), TLS to the target,
then HTTP/1.1 requests back to back on it, counting statuses.

    python bench/keepalive.py -c 10 -n 4000 -x http://127.0.0.1:8080 https://127.0.0.1:8443/1k

Why not ``hey``: Go's transport sometimes dials a spare connection per request (it sends
CONNECT and drops it before TLS, a client-side race), which costs the proxy CPU that is not
the keep-alive request's and made half of bench/lean.py's runs not comparable. Here a
connection is opened only at the start (and again only if the peer closes one: counted in
``conns_opened``). It runs in its own process (bench/load.py ``run_keepalive``) on uvloop
when installed; the proxy's CPU is read from /proc, so this process's own CPU is not in it,
but on a small machine it competes with the proxy for the cores (as hey does).

Each request is what ``hey -disable-compression -host NAME`` sends: ``GET`` with ``Host:
NAME`` (no port), ``User-Agent: hey/0.0.1``, ``Content-Type: text/html``, plus any ``-H``;
so the proxy does the same work per request as under hey. Responses are read by
``Content-Length`` or chunked framing (a response without either ends with its connection).
Certificates are not verified (every proxy here mints its own). Prints one JSON object:
statuses, errors, total_s, rps, p50_ms, p99_ms, conns_opened."""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import ssl
import sys
import time
from urllib.parse import unquote, urlsplit


class Load:
    def __init__(self, count: int | None, deadline: float | None) -> None:
        self.left = count
        self.deadline = deadline
        self.statuses: dict[int, int] = {}
        self.errors: dict[str, int] = {}
        self.times: list[float] = []
        self.opened = 0

    def another(self) -> bool:
        if self.deadline is not None:
            return time.perf_counter() < self.deadline
        assert self.left is not None
        if self.left <= 0:
            return False
        self.left -= 1
        return True


class Via:
    """The proxy: its address and the CONNECT request's extra header (proxy credentials)."""

    def __init__(self, url: str) -> None:
        p = urlsplit(url)
        self.address = (p.hostname or "127.0.0.1", p.port or 8080)
        self.auth = ""
        if p.username is not None:
            pair = f"{unquote(p.username)}:{unquote(p.password or '')}".encode()
            self.auth = f"Proxy-Authorization: Basic {base64.b64encode(pair).decode()}\r\n"


async def _open(target: tuple[str, int], proxy: Via | None, ctx: ssl.SSLContext,
                sni: str | None) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = target
    if proxy is None:
        return await asyncio.open_connection(host, port, ssl=ctx, server_hostname=sni)
    reader, writer = await asyncio.open_connection(*proxy.address)
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    writer.write(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n{proxy.auth}\r\n"
                 .encode())
    head = await reader.readuntil(b"\r\n\r\n")
    status = head.split(b" ", 2)[1] if head.count(b" ") >= 1 else b""
    if not status.startswith(b"2"):
        writer.close()
        raise ConnectionError(f"CONNECT answered {head.splitlines()[0]!r}")
    await writer.start_tls(ctx, server_hostname=sni)
    return reader, writer


async def _body(reader: asyncio.StreamReader, head: bytes) -> bool:
    """Read the body; False if the connection ends with it (no length, or close)."""
    length = None
    chunked = False
    close = False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value.strip())
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
        elif name == b"connection" and b"close" in value.lower():
            close = True
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0].strip(), 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass  # trailers
                break
            await reader.readexactly(size + 2)
    elif length is not None:
        await reader.readexactly(length)
    else:
        await reader.read()
        return False
    return not close


async def _connection(load: Load, target: tuple[str, int], proxy: Via | None,
                      ctx: ssl.SSLContext, sni: str | None, request: bytes) -> None:
    writer: asyncio.StreamWriter | None = None
    reader: asyncio.StreamReader | None = None
    try:
        while load.another():
            if writer is None:
                load.opened += 1
                reader, writer = await _open(target, proxy, ctx, sni)
            assert reader is not None
            t0 = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            keep = await _body(reader, head)
            load.times.append(time.perf_counter() - t0)
            status = int(head.split(b" ", 2)[1])
            load.statuses[status] = load.statuses.get(status, 0) + 1
            if not keep:
                writer.close()
                writer = reader = None
    except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
            ssl.SSLError, ConnectionError) as e:
        key = f"{type(e).__name__}: {e}"[:200]
        load.errors[key] = load.errors.get(key, 0) + 1
    finally:
        if writer is not None:
            writer.close()


async def run(url: str, proxy: str | None, conns: int, count: int | None,
              duration: float | None, headers: list[str]) -> dict[str, object]:
    parts = urlsplit(url)
    if parts.scheme != "https" or parts.hostname is None:
        raise SystemExit("an https:// URL")
    host, port = parts.hostname, parts.port or 443
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}", "User-Agent: hey/0.0.1",
             "Content-Type: text/html", *headers]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode()
    via = Via(proxy) if proxy else None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    sni = None if _is_ip(host) else host
    t0 = time.perf_counter()
    load = Load(count, t0 + duration if duration is not None else None)
    await asyncio.gather(*(_connection(load, (host, port), via, ctx, sni, request)
                           for _ in range(conns)))
    total = time.perf_counter() - t0
    times = sorted(load.times)
    n = len(times)
    return {
        "statuses": load.statuses,
        "errors": [f"[{k}] {v} times" for k, v in load.errors.items()],
        "total_s": total,
        "rps": n / total if total else 0.0,
        "p50_ms": times[n // 2] * 1000 if n else None,
        "p99_ms": times[min(n - 1, int(n * 0.99))] * 1000 if n else None,
        "conns_opened": load.opened,
    }


def _is_ip(host: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    ap.add_argument("url")
    ap.add_argument("-c", type=int, default=10, help="connections")
    ap.add_argument("-n", type=int, help="requests in all")
    ap.add_argument("-z", type=float, help="seconds to run (instead of -n)")
    ap.add_argument("-x", help="HTTP proxy URL (CONNECT)")
    ap.add_argument("-H", action="append", default=[], help="another header, 'Name: value'")
    args = ap.parse_args()
    if (args.n is None) == (args.z is None):
        ap.error("one of -n and -z")
    coro = run(args.url, args.x, args.c, args.n, args.z, args.H)
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(coro)
    else:
        result = asyncio.run(coro, loop_factory=uvloop.new_event_loop)
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
