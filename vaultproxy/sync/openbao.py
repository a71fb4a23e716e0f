"""An OpenBao / HashiCorp Vault KV v2 client (SPEC §9): log in, read one secret's fields.

The transport is the proxy's own (vaultproxy/net/outbound.py): the source's host is resolved
and every answer judged by the egress policy (``allow_private``/``allow_loopback`` of the
source), the checked address is the one dialled, TLS is verified against the source's trust
file with the URL's host as SNI, the environment is never read and redirects are never
followed. Plain ``http://`` is accepted only for a loopback address (a dev server).

What a source answers never reaches an error message: errors name the source, the path and
the HTTP status, never a token, a value or a response body.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from vaultproxy.net.egress import AddressContext
from vaultproxy.net.outbound import UpstreamClients
from vaultproxy.secret import Secret
from vaultproxy.sync.base import (
    Fetched,
    Ref,
    SourceError,
    SourceSpec,
    call_source,
    need,
)

__all__ = ["KvSecret", "NotFound", "OpenBaoSource", "SourceError"]

MAX_RESPONSE = 1024 * 1024  # a KV response larger than this is refused


_HINTS = {
    401: " (the token is missing or invalid)",
    403: " (the token is invalid or expired, or its policy does not allow read here)",
    503: " (sealed or in standby?)",
}


class NotFound(SourceError):
    """The path (or that version of it) does not exist, or its latest version is deleted."""


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
    auth: str = "token"  # token | approle: which fields of source.<name> log in

    @classmethod
    def from_spec(cls, spec: SourceSpec) -> OpenBaoSource:
        namespace = spec.extra.get("namespace")
        return cls(spec.name, spec.url, spec.mount, spec.trust_file, spec.address,
                   namespace if isinstance(namespace, str) and namespace else None, spec.auth)

    async def fetch(
        self, clients: UpstreamClients, creds: Mapping[str, Secret], refs: Sequence[Ref]
    ) -> dict[Ref, Fetched]:
        """The source interface (sync/base.py): one login, then one read per item; a path
        that does not exist (or whose latest version is deleted) is left out."""
        if self.auth == "approle":
            role_id, secret_id = need(self.name, creds, "role_id", "secret_id")
            token = await self.login(clients, {"role_id": role_id, "secret_id": secret_id})
        else:
            (token,) = need(self.name, creds, "token")
        out: dict[Ref, Fetched] = {}
        for ref in refs:
            try:
                kv = await self.read(clients, token, ref.path, ref.version)
            except NotFound:
                continue
            out[ref] = Fetched(kv.fields, kv.version)
        return out

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
        if any(part in (".", "..") for part in path.split("/")):
            raise SourceError(f"source {self.name}: a KV path must not hold . or .. segments")
        api = f"/v1/{quote(self.mount, safe='')}/data/{quote(path.strip('/'), safe='/')}"
        if version is not None:
            api += f"?version={int(version)}"
        data = await self._call(clients, "GET", api, token, None)
        inner = data.get("data")
        fields = inner.get("data") if isinstance(inner, dict) else None
        meta = inner.get("metadata") if isinstance(inner, dict) else None
        if not isinstance(fields, dict):
            raise NotFound(f"source {self.name}: {path} holds no data (deleted or destroyed?)")
        version = meta.get("version") if isinstance(meta, dict) else None
        out = {
            str(k): Secret(v if isinstance(v, str) else json.dumps(v)) for k, v in fields.items()
        }
        return KvSecret(out, version if isinstance(version, int) else 0)

    async def _call(
        self, clients: UpstreamClients, method: str, api: str, token: Secret | None,
        body: bytes | None,
    ) -> dict[str, object]:
        headers: dict[str, str] = {}
        if token is not None:
            headers["X-Vault-Token"] = token.reveal_str()
        if self.namespace:
            headers["X-Vault-Namespace"] = self.namespace
        if body is not None:
            headers["Content-Type"] = "application/json"
        response = await call_source(
            clients, name=self.name, url=self.url, address=self.address,
            trust_file=self.trust_file, method=method, api=api, headers=headers, body=body,
            limit=MAX_RESPONSE,
        )
        raw = response.body
        if response.status != 200:
            what = api.split("?", 1)[0]
            status = response.status
            kind = NotFound if status == 404 and method == "GET" else SourceError
            hint = _HINTS.get(status, "")
            if "approle/login" in what and status == 400:
                hint = " (wrong role_id or secret_id in the keystore entry?)"
            raise kind(f"source {self.name}: {method} {what} answered {status}{hint}")
        try:
            data = json.loads(raw)
        except ValueError:
            raise SourceError(f"source {self.name}: the response is not JSON") from None
        if not isinstance(data, dict):
            raise SourceError(f"source {self.name}: the response is not a JSON object")
        return data
