"""How a token endpoint is dialled: under the service's own egress policy (SPEC §4.1).

The URL's host is resolved once and every answer judged by the service's ``allow_*`` rules
(net/resolve.py); the checked address is the one dialled; TLS is verified against the service's
trust file (system CAs + its ``ca_cert``) with the URL's host as SNI; the client comes from
net/outbound.py (no environment, no redirects). A URL on one of the service's own hosts is
dialled where the service is (``connect_to``). Plain ``http://`` only to a loopback literal.

What the endpoint answers is read up to ``MAX_RESPONSE`` and handed to the minter; errors
name the service and the reason, never a body or a credential.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from urllib.parse import urlsplit

import httpx

from vaultproxy.config.models import Service
from vaultproxy.errors import VaultproxyError
from vaultproxy.loaded.snapshot import Snapshot
from vaultproxy.mint.base import MintFailed, Post, TokenResponse
from vaultproxy.net.egress import parse_ip
from vaultproxy.net.hostnames import normal_host, split_authority
from vaultproxy.net.outbound import UpstreamClients, UpstreamKey
from vaultproxy.net.resolve import Resolver, resolve_checked, system_resolver

logger = logging.getLogger(__name__)

MAX_RESPONSE = 256 * 1024  # a token or login answer larger than this is refused


def endpoint_url(service: Service, url: str) -> str:
    """``url`` made absolute: a path (``/api/login``) is on the service's first host."""
    if url.startswith("/"):
        host = next((h for h in service.hosts if "*" not in h), None)
        if host is None:
            raise MintFailed(service.name, None, "a path-only URL needs a non-wildcard host")
        return f"https://{host}{url}"
    return url


def _dial(snapshot: Snapshot, service: Service, host: str, port: int) -> tuple[str, int]:
    """Where to dial ``host:port``: the service's ``connect_to`` if it is one of its hosts."""
    if service.connect_to and _same(snapshot.registry.lookup(normal_host(host), port), service):
        h, p = split_authority(service.connect_to)
        return h, p if p and p > 0 else port
    return host, port


def post_for(snapshot: Snapshot, clients: UpstreamClients, service: Service,
             resolver: Resolver = system_resolver) -> Post:
    """The egress-checked ``post(url, headers, body)`` a minter of ``service`` uses."""

    async def post(url: str, headers: Mapping[str, str], body: bytes) -> TokenResponse:
        parts = urlsplit(endpoint_url(service, url))
        scheme, host = parts.scheme, parts.hostname or ""
        port = parts.port or (443 if scheme == "https" else 80)
        try:
            ip, dial_port = await resolve_checked(
                *_dial(snapshot, service, host, port), snapshot.address_context(service),
                resolver,
            )
        except VaultproxyError as e:  # denied by the egress policy, or no address
            raise MintFailed(service.name, None, f"token endpoint {host}: {e}") from None
        if scheme != "https":
            literal = parse_ip(ip)
            if scheme != "http" or literal is None or not literal.is_loopback:
                raise MintFailed(service.name, None, "token endpoint must use https://")
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        target = httpx.URL(scheme=scheme, host=ip, port=dial_port, raw_path=path.encode())
        sent = {"Host": parts.netloc.rsplit("@", 1)[-1], **headers}
        key = UpstreamKey(f"mint.{service.name}", host, snapshot.trust_file(service),
                          service.insecure_tls)
        request = httpx.Request("POST", target, headers=sent, content=body)
        try:
            response = await clients.send(key, request)
        except VaultproxyError as e:
            raise MintFailed(service.name, None, f"token endpoint {host}: {e}") from None
        try:
            raw = bytearray()
            async for chunk in response.aiter_bytes():
                raw += chunk
                if len(raw) > MAX_RESPONSE:
                    raise MintFailed(service.name, response.status_code,
                                     "the answer is larger than 256 KiB")
        except httpx.HTTPError:
            raise MintFailed(service.name, None, f"token endpoint {host} broke off") from None
        finally:
            await response.aclose()
        return TokenResponse(response.status_code, _headers(response.headers), bytes(raw))

    return post


def _headers(headers: httpx.Headers) -> dict[str, str]:
    """Lower-case names; repeated fields (``set-cookie``) joined by a newline, which no
    header value can contain."""
    out: dict[str, str] = {}
    for name, value in headers.multi_items():
        key = name.lower()
        out[key] = f"{out[key]}\n{value}" if key in out else value
    return out


def _same(found: Service | None, service: Service) -> bool:
    return found is not None and found.name == service.name
