"""The ``webhook`` sink: ``POST webhook_url`` with a JSON array of records (each exactly as in
``audit.jsonl``), signed: ``X-Vaultproxy-Signature: sha256=<hex HMAC-SHA256 of the body>``
with the key in the keystore entry ``audit``, field ``webhook`` (``audit.webhook``). A
receiver recomputes the HMAC over the raw body and compares in constant time
(``hmac.compare_digest``); see docs/operator/AUDIT.md.

Any 2xx is delivery; anything else (and no key: locked keystore, missing entry) is a
failure that the sender retries with backoff. The URL is dialled like an upstream: its host
resolved once and judged by the egress policy (``[audit] allow_*``), the checked address
dialled, TLS verified against the system CAs plus ``[audit] ca_cert`` (vaultproxy/net/outbound.py).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from vaultproxy.errors import VaultproxyError
from vaultproxy.net.egress import AddressContext
from vaultproxy.net.outbound import UpstreamClients, UpstreamKey
from vaultproxy.net.resolve import resolve_checked
from vaultproxy.secret import Secret
from vaultproxy.sinks.record import Record
from vaultproxy.sinks.sender import SinkFailed

SIGNATURE_HEADER = "X-Vaultproxy-Signature"
KEY_ENTRY, KEY_FIELD = "audit", "webhook"
TIMEOUT = httpx.Timeout(10.0, connect=5.0)

KeySource = Callable[[], Secret]
"""Returns the signing key, or raises SinkFailed saying why there is none."""


def body_of(batch: Sequence[Record]) -> bytes:
    """The JSON array of the records, byte for byte as written to ``audit.jsonl``."""
    return ("[" + ",".join(r.line for r in batch) + "]").encode("utf-8")


def signature(key: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


class WebhookSink:
    def __init__(self, url: str, ctx: AddressContext, trust_file: Path, key: KeySource) -> None:
        parts = urlsplit(url)
        self.scheme = parts.scheme
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if self.scheme == "https" else 80)
        self.target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.authority = parts.netloc
        self.ctx = ctx
        self.key = key
        self.upstream = UpstreamKey("audit.webhook", self.host, trust_file, False)
        self.clients = UpstreamClients()

    async def send(self, batch: Sequence[Record]) -> None:
        body = body_of(batch)
        key = self.key()
        try:
            signed = signature(key.reveal(), body)
        finally:
            del key
        try:
            ip, port = await resolve_checked(self.host, self.port, self.ctx)
        except VaultproxyError as e:
            raise SinkFailed(f"webhook {self.host}: {e}") from None
        request = httpx.Request(
            "POST", httpx.URL(scheme=self.scheme, host=ip, port=port,
                              raw_path=self.target.encode()),
            headers={"Host": self.authority, "Content-Type": "application/json",
                     "User-Agent": "vaultproxy", SIGNATURE_HEADER: signed},
            content=body, extensions={"timeout": TIMEOUT.as_dict()},
        )
        try:
            response = await self.clients.send(self.upstream, request)
        except VaultproxyError as e:
            raise SinkFailed(f"webhook {self.host}: {e}") from None
        try:
            await response.aread()
        except httpx.HTTPError:
            raise SinkFailed(f"webhook {self.host}: the answer broke off") from None
        finally:
            await response.aclose()
        if not 200 <= response.status_code < 300:
            raise SinkFailed(f"webhook {self.host} answered {response.status_code}")

    async def close(self) -> None:
        await self.clients.aclose()
