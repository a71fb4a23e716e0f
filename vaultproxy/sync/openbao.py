"""An OpenBao / HashiCorp Vault KV v2 client (SPEC §9): log in, read one secret's fields.

The transport is the proxy's own (vaultproxy/outbound.py): the source's host is resolved
and every answer judged by the egress policy (``allow_private``/``allow_loopback`` of the
source), the checked address is the one dialled, TLS is verified against the source's trust
file with the URL's host as SNI, the environment is never read and redirects are never
followed. Plain ``http://`` is accepted only for a loopback address (a dev server).

What a source answers never reaches an error message: errors name the source, the path and
the HTTP status, never a token, a value or a response body.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit

import httpx

from vaultproxy.errors import VaultproxyError
from vaultproxy.outbound import UpstreamClients, UpstreamKey
from vaultproxy.policy import AddressContext, parse_ip
from vaultproxy.resolve import resolve_checked
from vaultproxy.secret import Secret

MAX_RESPONSE = 1024 * 1024  # a KV response larger than this is refused


class SourceError(VaultproxyError):
    """A source could not be read; the message names the source and the reason only."""

    status, code, public = 502, "source_unavailable", "the external secret source failed"


@dataclass(frozen=True)
class KvSecret:
    """One KV v2 secret: its fields (secret values) and the version they belong to."""

    fields: dict[str, Secret]
    version: int

    def __repr__(self) -> str:
        return f"KvSecret(fields={sorted(self.fields)}, version={self.version})"


@dataclass(frozen=True)
class OpenBaoSource:
    name: str
    url: str  # https://host:port (or http:// on loopback)
    mount: str  # the KV v2 mount, e.g. "secret"
    trust_file: Path  # system CAs + the source's ca_cert
    address: AddressContext  # the source's allow_private / allow_loopback
    namespace: str | None = None  # X-Vault-Namespace (Vault Enterprise / OpenBao namespaces)

    async def login(self, clients: UpstreamClients, creds: Mapping[str, Secret]) -> Secret:
        """A client token: ``token`` as is, or an AppRole login with ``role_id``+``secret_id``."""
        if "token" in creds:
            return creds["token"]
        if "role_id" not in creds or "secret_id" not in creds:
            raise SourceError(
                f"source {self.name}: keystore entry source.{self.name} needs field `token`, "
                "or fields `role_id` and `secret_id` (AppRole)"
            )
        body = json.dumps(
            {"role_id": creds["role_id"].reveal_str(), "secret_id": creds["secret_id"].reveal_str()}
        ).encode()
        data = await self._call(clients, "POST", "/v1/auth/approle/login", None, body)
        auth = data.get("auth")
        token = auth.get("client_token") if isinstance(auth, dict) else None
        if not isinstance(token, str) or not token:
            raise SourceError(f"source {self.name}: the AppRole login returned no token")
        return Secret(token)

    async def read(
        self, clients: UpstreamClients, token: Secret, path: str, version: int | None = None
    ) -> KvSecret:
        """Fields of ``<mount>/data/<path>`` (the latest version, or ``version``)."""
        api = f"/v1/{quote(self.mount, safe='')}/data/{quote(path.strip('/'), safe='/')}"
        if version is not None:
            api += f"?version={int(version)}"
        data = await self._call(clients, "GET", api, token, None)
        inner = data.get("data")
        fields = inner.get("data") if isinstance(inner, dict) else None
        meta = inner.get("metadata") if isinstance(inner, dict) else None
        if not isinstance(fields, dict):
            raise SourceError(f"source {self.name}: {path} holds no data (deleted or destroyed?)")
        version = meta.get("version") if isinstance(meta, dict) else None
        out = {
            str(k): Secret(v if isinstance(v, str) else json.dumps(v)) for k, v in fields.items()
        }
        return KvSecret(out, version if isinstance(version, int) else 0)

    async def _call(
        self, clients: UpstreamClients, method: str, api: str, token: Secret | None,
        body: bytes | None,
    ) -> dict[str, object]:
        parts = urlsplit(self.url)
        host, scheme = parts.hostname or "", parts.scheme
        port = parts.port or (443 if scheme == "https" else 80)
        try:
            ip, port = await resolve_checked(host, port, self.address)
        except VaultproxyError as e:  # denied by the egress policy, or no address
            raise SourceError(f"source {self.name}: {e}") from None
        if scheme != "https":
            literal = parse_ip(ip)
            if scheme != "http" or literal is None or not literal.is_loopback:
                raise SourceError(
                    f"source {self.name}: plain HTTP is allowed only to a loopback address; "
                    "use https://"
                )
        headers = {"Host": parts.netloc, "Accept": "application/json"}
        if token is not None:
            headers["X-Vault-Token"] = token.reveal_str()
        if self.namespace:
            headers["X-Vault-Namespace"] = self.namespace
        if body is not None:
            headers["Content-Type"] = "application/json"
        url = httpx.URL(scheme=scheme, host=ip, port=port, raw_path=api.encode())
        key = UpstreamKey(f"source.{self.name}", host, self.trust_file, False)
        request = httpx.Request(method, url, headers=headers, content=body or b"")
        try:
            response = await clients.send(key, request)
        except VaultproxyError as e:
            raise SourceError(f"source {self.name}: {e}") from None
        try:
            raw = b""
            async for chunk in response.aiter_raw():
                raw += chunk
                if len(raw) > MAX_RESPONSE:
                    raise SourceError(f"source {self.name}: the response is over 1 MiB")
        finally:
            await response.aclose()
        if response.status_code != 200:
            what = api.split("?", 1)[0]
            status = response.status_code
            raise SourceError(f"source {self.name}: {method} {what} answered {status}")
        try:
            data = json.loads(raw)
        except ValueError:
            raise SourceError(f"source {self.name}: the response is not JSON") from None
        if not isinstance(data, dict):
            raise SourceError(f"source {self.name}: the response is not a JSON object")
        return data
