"""Content codings: streaming decoders for what the response gate must read (``gzip``,
``deflate``, ``br``, ``zstd`` and lists of them), with a size cap; and the request side,
which offers the upstream only codings a decoder here reads.

A body that does not decode as its ``Content-Encoding`` says is ``UpstreamProtocol``
(``502 upstream_protocol``), never an internal error: a corrupt stream, one that ends early,
and bytes after the end of a complete stream (trailing garbage after a gzip member, a zlib or
raw deflate stream, a brotli or zstd frame). Those bytes would otherwise pass unread by the
redactor, or not at all, depending on the client's decoder."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any

from mitmproxy import http

from vaultproxy.errors import BodyTooLarge, UpstreamProtocol

Decoder = Callable[[bytes], bytes]


class Undecodable(UpstreamProtocol):
    public = "the upstream response body does not decode as its Content-Encoding says"


class _Limit:
    def __init__(self, limit: int | None) -> None:
        self.left = limit

    def take(self, data: bytes) -> bytes:
        if self.left is not None:
            self.left -= len(data)
            if self.left < 0:
                raise BodyTooLarge("the decompressed response body exceeds the limit")
        return data

    def max_length(self) -> int:
        return 0 if self.left is None else self.left + 1


class _Zlib:
    """gzip (multi-member) and zlib/raw deflate. ``wbits=None``: sniff zlib vs raw deflate."""

    def __init__(self, wbits: int | None, limit: _Limit) -> None:
        self._wbits = wbits
        self._limit = limit
        self._pending = b""
        self._d: Any = zlib.decompressobj(wbits) if wbits is not None else None
        self._fed = False

    def _sniff(self, data: bytes) -> None:
        cmf, flg = data[0], data[1]
        is_zlib = cmf & 0x0F == 8 and (cmf << 8 | flg) % 31 == 0
        self._wbits = zlib.MAX_WBITS if is_zlib else -zlib.MAX_WBITS
        self._d = zlib.decompressobj(self._wbits)

    def __call__(self, chunk: bytes) -> bytes:
        final = not chunk
        if self._d is None:
            self._pending += chunk
            if len(self._pending) < 2:
                return b""
            self._sniff(self._pending)
            chunk, self._pending = self._pending, b""
        if chunk:
            self._fed = True
        out = self._feed(chunk) if chunk else b""
        if final:
            out += self._limit.take(self._d.flush())
            if self._fed and not self._d.eof:
                raise Undecodable("the compressed response body ends before its stream does")
        return out

    def _feed(self, chunk: bytes) -> bytes:
        if self._d.eof:  # bytes after a complete stream (a new gzip member is handled below)
            raise Undecodable("the upstream sent bytes after the end of the compressed body")
        out = [self._limit.take(self._d.decompress(chunk, self._limit.max_length()))]
        while True:
            if self._d.unconsumed_tail:
                tail = self._d.unconsumed_tail
                out.append(self._limit.take(self._d.decompress(tail, self._limit.max_length())))
            elif self._d.eof and self._d.unused_data and self._wbits == 16 + zlib.MAX_WBITS:
                rest = self._d.unused_data  # another gzip member follows
                self._d = zlib.decompressobj(self._wbits)
                out.append(self._limit.take(self._d.decompress(rest, self._limit.max_length())))
            elif self._d.eof and self._d.unused_data:
                raise Undecodable("the upstream sent bytes after the end of the compressed body")
            else:
                return b"".join(out)


class _Brotli:
    def __init__(self, limit: _Limit) -> None:
        import brotli  # type: ignore[import-untyped]  # shipped with mitmproxy

        self._d = brotli.Decompressor()
        self._limit = limit
        self._fed = False

    def __call__(self, chunk: bytes) -> bytes:
        if not chunk:
            if self._fed and not self._d.is_finished():
                raise Undecodable("the compressed response body ends before its stream does")
            return b""
        self._fed = True
        if self._d.is_finished():
            raise Undecodable("the upstream sent bytes after the end of the compressed body")
        return self._limit.take(self._d.process(chunk))


class _Zstd:
    def __init__(self, limit: _Limit) -> None:
        import zstandard

        self._d = zstandard.ZstdDecompressor().decompressobj(read_across_frames=True)
        self._limit = limit

    def __call__(self, chunk: bytes) -> bytes:
        return self._limit.take(self._d.decompress(chunk)) if chunk else b""


def _one(coding: str, limit: _Limit) -> Decoder | None:
    if coding in ("gzip", "x-gzip"):
        return _Zlib(16 + zlib.MAX_WBITS, limit)
    if coding == "deflate":
        return _Zlib(None, limit)
    if coding == "br":
        return _Brotli(limit)
    if coding == "zstd":
        return _Zstd(limit)
    return None


def decoder_for(content_encoding: str, limit: int | None = None) -> Decoder | None:
    """A streaming decoder for a ``Content-Encoding`` value, or None if we cannot decode it.

    Handles ``gzip``, ``deflate`` (zlib-wrapped or raw, sniffed), ``br``, ``zstd``,
    ``identity`` and lists such as ``gzip, br`` (undone right to left). Call it per chunk and
    a final time with ``b""``. ``limit`` caps the total decoded size (BodyTooLarge beyond it).
    """
    codings = [c.strip().lower() for c in content_encoding.split(",")]
    codings = [c for c in codings if c and c != "identity"]
    chain: list[Decoder] = []
    for coding in reversed(codings):
        dec = _one(coding, _Limit(limit))  # each stage capped; the last one is the output
        if dec is None:
            return None
        chain.append(dec)
    if not chain:
        identity = _Limit(limit)
        return identity.take

    def run(chunk: bytes) -> bytes:
        data = chunk
        try:
            for dec in chain:
                if chunk:
                    data = dec(data) if data else b""
                else:
                    data = (dec(data) if data else b"") + dec(b"")
        except (UpstreamProtocol, BodyTooLarge):
            raise
        except Exception:  # zlib.error, brotli.error, zstandard.ZstdError: corrupt input
            raise Undecodable() from None
        return data

    return run


# Encodings the response gate can decode for scanning; others are not offered upstream.
DECODABLE = ("gzip", "deflate", "br", "zstd", "identity")
_limited: dict[str, str] = {}


def limit_accept_encoding(headers: http.Headers, offered: str | None = None) -> None:
    """Offer the upstream only content codings the response gate can decode. ``offered``:
    ``headers.get("accept-encoding")`` when the caller has read it already."""
    if offered is None:
        offered = headers.get("accept-encoding")
    if offered is None:
        return
    limited = _limited.get(offered)
    if limited is None:
        keep = [
            part.strip()
            for part in offered.split(",")
            if part.split(";")[0].strip().lower() in DECODABLE
        ]
        limited = ", ".join(keep) if keep else "identity"
        if len(_limited) >= 256:  # an agent sends the same value on every request
            _limited.clear()
        _limited[offered] = limited
    if limited != offered:
        headers["accept-encoding"] = limited
