"""Copy bytes between two asyncio streams until both directions reach EOF.

Used by the two ends of the sandbox bridge: the proxy's ``proxy.sock`` listener (Unix ->
the proxy's TCP port) and the forwarder inside the sandbox (TCP -> ``proxy.sock``).
"""

from __future__ import annotations

import asyncio

CHUNK = 65536


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until EOF, then half-close the other side (TLS and HTTP/1.0 need the EOF)."""
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.close()


async def splice(
    a: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    b: tuple[asyncio.StreamReader, asyncio.StreamWriter],
) -> None:
    """Both directions at once; both writers are closed when done."""
    try:
        await asyncio.gather(pipe(a[0], b[1]), pipe(b[0], a[1]))
    finally:
        a[1].close()
        b[1].close()
