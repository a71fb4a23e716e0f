"""Breached-password check over the HIBP range API, with k-anonymity.

For each value: SHA-1, upper-case hex; only the first 5 hex characters are sent
(``GET <hibp_url>/range/ABCDE``, one request per distinct prefix); the answer lists the
35-character suffixes with that prefix (``SUFFIX:COUNT`` lines, padded with ``:0`` decoys when
asked with ``Add-Padding: true``); a value is breached when its own suffix is listed with a
count above 0. The comparison happens here; no full hash or value ever leaves the process.

The server is dialled like an upstream: the name resolved once and checked by the egress
policy ([health] allow_loopback / allow_private), TLS verified against the system CAs plus
[health] ca_cert, through the client built in vaultproxy/net/outbound.py.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from pathlib import Path

import httpx

from vaultproxy.ca import trust_with
from vaultproxy.config.health import HealthSettings
from vaultproxy.errors import VaultproxyError
from vaultproxy.files.home import Home
from vaultproxy.net.egress import AddressContext
from vaultproxy.net.outbound import UpstreamClients, UpstreamKey
from vaultproxy.net.resolve import Resolver, resolve_checked, system_resolver
from vaultproxy.secret import Secret

logger = logging.getLogger(__name__)
PREFIX_LEN = 5
MAX_RESPONSE = 4 * 1024 * 1024  # a real range answer is ~30-40 KiB (padded: ~50 KiB)


class BreachCheckFailed(VaultproxyError):
    """The range server could not be asked or answered badly; no verdict for anyone."""


def split_hash(value: bytes) -> tuple[str, str]:
    """(the 5-character prefix that is sent, the 35-character suffix that never is)."""
    digest = hashlib.sha1(value, usedforsecurity=False).hexdigest().upper()
    return digest[:PREFIX_LEN], digest[PREFIX_LEN:]


def listed(body: str, suffix: str) -> bool:
    """True if ``suffix`` appears in a range answer with a count above 0."""
    for line in body.splitlines():
        found, _, count = line.strip().partition(":")
        if found.upper() == suffix and count.strip().isdigit() and int(count) > 0:
            return True
    return False


def trust_file(home: Home, settings: HealthSettings) -> Path:
    """System CAs, plus [health] ca_cert if set."""
    return trust_with(home, settings.ca_cert, "health")


class RangeClient:
    """Asks one range server for prefixes; ``aclose()`` when done."""

    def __init__(self, home: Home, settings: HealthSettings,
                 resolver: Resolver = system_resolver) -> None:
        url = httpx.URL(settings.hibp_url)
        self.host = url.host
        self.port = url.port or 443
        self.base_path = url.path.rstrip("/")
        self.context = AddressContext(allow_private=settings.allow_private,
                                      allow_loopback=settings.allow_loopback)
        self.key = UpstreamKey("health", self.host, trust_file(home, settings), False)
        self.clients = UpstreamClients()
        self.resolver = resolver

    async def range(self, prefix: str) -> str:
        if len(prefix) != PREFIX_LEN or any(c not in "0123456789ABCDEF" for c in prefix):
            raise ValueError("a range prefix is exactly 5 upper-case hex characters")
        ip, port = await resolve_checked(self.host, self.port, self.context, self.resolver)
        host_header = self.host if self.port == 443 else f"{self.host}:{self.port}"
        request = httpx.Request(
            "GET", httpx.URL(scheme="https", host=ip, port=port,
                             path=f"{self.base_path}/range/{prefix}"),
            headers={"Host": host_header, "Add-Padding": "true", "User-Agent": "vaultproxy"})
        response = await self.clients.send(self.key, request)
        try:
            if response.status_code != 200:
                raise BreachCheckFailed(f"the range server {self.host} answered "
                                        f"{response.status_code}")
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_RESPONSE:
                    raise BreachCheckFailed(f"the range server {self.host} sent too much")
        finally:
            await response.aclose()
        return body.decode("ascii", "replace")

    async def aclose(self) -> None:
        await self.clients.aclose()


async def check(client: RangeClient, values: Mapping[str, Secret]) -> dict[str, bool]:
    """label -> breached, for every label in ``values``; BreachCheckFailed if any prefix
    could not be asked (a partial answer would read as "not breached")."""
    wanted: dict[str, list[tuple[str, str]]] = {}
    for label, value in values.items():
        prefix, suffix = split_hash(value.reveal())
        wanted.setdefault(prefix, []).append((label, suffix))
    out: dict[str, bool] = {}
    for prefix, members in sorted(wanted.items()):
        body = await client.range(prefix)
        for label, suffix in members:
            out[label] = listed(body, suffix)
    return out
