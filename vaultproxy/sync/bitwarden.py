"""A Bitwarden / Vaultwarden client (SPEC §9), read-only: log in, sync, decrypt one folder.

The flow is the one Bitwarden's own clients use against a self-hosted server
(``<url>/identity`` and ``<url>/api``):

1. ``POST /identity/accounts/prelogin`` -> the account's KDF (PBKDF2-SHA256 or Argon2id),
   checked against Bitwarden's bounds before any work is done;
2. the master key from the master password (vaultproxy/sync/bwcrypto.py), in a thread;
3. ``POST /identity/connect/token``: ``grant_type=password`` with the master password *hash*
   (the password itself never leaves), or ``grant_type=client_credentials`` with a personal
   API key (``client_id`` / ``client_secret``; the master password still decrypts);
4. ``GET /api/sync``: the user key (wrapped by the stretched master key), the RSA private
   key (wrapped by the user key), organisation keys (RSA-OAEP to the user), folders, items;
5. only the items in the source's ``folder`` are decrypted (their names to match a ref, then
   the wanted items' fields), every cipher string MAC-verified before it is decrypted.

Fields of an item: ``username``, ``password``, ``notes``, ``totp`` (the stored seed, marked
as one in ``Fetched.totp``: a service gets the code valid when its request is made,
vaultproxy/keystore/totp.py), and every custom field by its name (a custom field never shadows
a built-in one).

The transport is the proxy's own (vaultproxy/net/outbound.py), as for openbao.py: the egress
policy judges the resolved address, TLS is verified against the source's trust file, plain
``http://`` only to loopback. Errors name the source, the step and the HTTP status, never a
credential, a value, a cipher string or a response body.
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from cryptography.hazmat.primitives.asymmetric import rsa

from vaultproxy.net.egress import AddressContext
from vaultproxy.net.outbound import UpstreamClients
from vaultproxy.secret import Secret
from vaultproxy.sync import bwcrypto
from vaultproxy.sync.base import (
    Fetched,
    Ref,
    SourceError,
    SourceSpec,
    call_source,
    need,
    source_entry,
)
from vaultproxy.sync.bwcrypto import CryptoError, Kdf, SymmetricKey

__all__ = ["BitwardenItem", "BitwardenSource", "SourceError"]

MAX_RESPONSE = 32 * 1024 * 1024  # a whole vault's sync; larger is refused
BUILTIN_FIELDS = ("username", "password", "notes", "totp")
DEVICE_TYPE = "25"  # Bitwarden's DeviceType.LinuxCLI
CLIENT_ID = "cli"  # the client id Bitwarden's servers know for a command-line client
CIPHER_TYPES = (1, 2)  # login items and secure notes


@dataclass(frozen=True)
class BitwardenItem:
    """One decrypted item: its fields (secret values) and revision date."""

    id: str
    fields: dict[str, Secret]
    revision: str

    def __repr__(self) -> str:
        return f"BitwardenItem(id={self.id!r}, fields={sorted(self.fields)})"


def _get(obj: object, name: str) -> Any:
    """A property of a server object, whatever its casing (Bitwarden: Pascal or camel)."""
    if not isinstance(obj, dict):
        return None
    if name in obj:
        return obj[name]
    lower = name.lower()
    for key, value in obj.items():
        if isinstance(key, str) and key.lower() == lower:
            return value
    return None


def _list(obj: object, name: str) -> list[Any]:
    value = _get(obj, name)
    return value if isinstance(value, list) else []


def _str(obj: object, name: str) -> str | None:
    value = _get(obj, name)
    return value if isinstance(value, str) and value else None


def _int(obj: object, name: str) -> int | None:
    value = _get(obj, name)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class BitwardenSource:
    name: str
    url: str  # https://host[:port][/prefix]: /identity and /api below it (Vaultwarden layout)
    folder: str | None  # only items in this folder; None: every item
    trust_file: Path  # system CAs + the source's ca_cert
    address: AddressContext  # the source's allow_private / allow_loopback
    auth: str = "password"  # password | apikey: which fields of source.<name> log in

    @classmethod
    def from_spec(cls, spec: SourceSpec) -> BitwardenSource:
        if spec.auth not in ("password", "apikey"):
            raise SourceError(
                f'source {spec.name}: bitwarden auth is "password" or "apikey", not '
                f"{spec.auth!r}"
            )
        return cls(spec.name, spec.url, spec.folder, spec.trust_file, spec.address, spec.auth)

    # ---- the source as a whole -------------------------------------------------------

    async def fetch(
        self, clients: UpstreamClients, creds: Mapping[str, Secret], refs: Sequence[Ref]
    ) -> dict[Ref, Fetched]:
        """The source interface (sync/base.py): one login and one sync for every ref; a ref
        is an item's name in the folder; an item the folder lacks is left out."""
        items = await self.read_items(clients, creds, sorted({ref.path for ref in refs}))
        return {
            ref: Fetched(dict(items[ref.path].fields), items[ref.path].revision,
                         frozenset({"totp"}) & items[ref.path].fields.keys())
            for ref in refs if ref.path in items
        }  # fmt: skip

    async def read_items(
        self, clients: UpstreamClients, creds: Mapping[str, Secret], names: Sequence[str]
    ) -> dict[str, BitwardenItem]:
        """Log in, sync and decrypt the items ``names`` (by item name) in the folder; a name
        the folder does not hold is left out. SourceError for anything else."""
        if self.auth == "apikey":
            client_id, client_secret, password = need(
                self.name, creds, "client_id", "client_secret", "password"
            )
            token = await self._login_apikey(clients, client_id, client_secret)
            vault = await self._sync(clients, token)
            email = _str(_get(vault, "Profile"), "Email")
            if email is None:
                raise SourceError(f"source {self.name}: the sync names no account e-mail")
            kdf = await self._prelogin(clients, email)
            master = await self._master_key(password, email, kdf)
        else:
            email_secret, password = need(self.name, creds, "email", "password")
            email = email_secret.reveal_str()
            kdf = await self._prelogin(clients, email)
            master = await self._master_key(password, email, kdf)
            password_hash = Secret(bwcrypto.master_password_hash(master, password.reveal()))
            token = await self._login_password(clients, email, password_hash)
            vault = await self._sync(clients, token)
        return self._decrypt(vault, master, names)

    async def _master_key(self, password: Secret, email: str, kdf: Kdf) -> bytes:
        try:
            kdf.check()
        except CryptoError as e:
            raise SourceError(f"source {self.name}: the server's KDF settings: {e}") from None
        # PBKDF2 600k / Argon2id take a noticeable time: not on the event loop.
        return await asyncio.to_thread(bwcrypto.master_key, password.reveal(), email, kdf)

    # ---- login ----------------------------------------------------------------------

    async def _prelogin(self, clients: UpstreamClients, email: str) -> Kdf:
        body = json.dumps({"email": email.strip().lower()}).encode()
        status, data = await self._call(
            clients, "POST", "/identity/accounts/prelogin", body=body, ok=(200, 404)
        )
        if status == 404:  # newer Bitwarden servers moved it
            _, data = await self._call(
                clients, "POST", "/identity/accounts/prelogin/password", body=body
            )
        kind, iterations = _int(data, "Kdf"), _int(data, "KdfIterations")
        if kind is None or iterations is None:
            raise SourceError(f"source {self.name}: prelogin named no KDF")
        return Kdf(kind, iterations, _int(data, "KdfMemory"), _int(data, "KdfParallelism"))

    def _device(self) -> dict[str, str]:
        # A stable device per source, so a server does not see a new device on every sync.
        ident = uuid.uuid5(uuid.NAMESPACE_URL, f"vaultproxy:{self.name}:{self.url}")
        return {"deviceType": DEVICE_TYPE, "deviceIdentifier": str(ident),
                "deviceName": "vaultproxy"}

    async def _login_password(
        self, clients: UpstreamClients, email: str, password_hash: Secret
    ) -> Secret:
        form = {"grant_type": "password", "username": email.strip().lower(),
                "password": password_hash.reveal_str(), "scope": "api offline_access",
                "client_id": CLIENT_ID, **self._device()}
        auth_email = base64.urlsafe_b64encode(email.strip().lower().encode()).rstrip(b"=")
        return await self._token(clients, form, {"Auth-Email": auth_email.decode()})

    async def _login_apikey(
        self, clients: UpstreamClients, client_id: Secret, client_secret: Secret
    ) -> Secret:
        form = {"grant_type": "client_credentials", "scope": "api",
                "client_id": client_id.reveal_str(), "client_secret": client_secret.reveal_str(),
                **self._device()}
        return await self._token(clients, form, {})

    async def _token(
        self, clients: UpstreamClients, form: dict[str, str], headers: dict[str, str]
    ) -> Secret:
        body = urlencode(form).encode()
        status, data = await self._call(
            clients, "POST", "/identity/connect/token", body=body, form=True,
            headers=headers, ok=(200, 400),
        )  # fmt: skip
        if status == 400:
            if _get(data, "TwoFactorProviders") or _get(data, "TwoFactorProviders2"):
                raise SourceError(
                    f"source {self.name}: the account asks for two-step login; use a personal "
                    'API key (auth = "apikey", fields client_id + client_secret + password)'
                )
            what = ("the API key (client_id / client_secret)" if self.auth == "apikey"
                    else "the e-mail or master password")
            raise SourceError(f"source {self.name}: the login was refused; check {what}")
        token = _str(data, "access_token")
        if token is None:
            raise SourceError(f"source {self.name}: the login returned no access token")
        return Secret(token)

    async def _sync(self, clients: UpstreamClients, token: Secret) -> dict[str, Any]:
        _, data = await self._call(
            clients, "GET", "/api/sync?excludeDomains=true",
            headers={"Authorization": f"Bearer {token.reveal_str()}"},
        )  # fmt: skip
        return data

    # ---- decryption -----------------------------------------------------------------

    def _decrypt(
        self, vault: dict[str, Any], master: bytes, names: Sequence[str]
    ) -> dict[str, BitwardenItem]:
        profile = _get(vault, "Profile")
        wrapped = _str(profile, "Key")
        if wrapped is None:
            raise SourceError(f"source {self.name}: the sync holds no account key")
        try:
            raw = bwcrypto.decrypt_sym(wrapped, bwcrypto.stretch(master))
        except CryptoError:
            raise SourceError(
                f"source {self.name}: the master password does not decrypt the account key "
                f"(wrong password in keystore entry {source_entry(self.name)}?)"
            ) from None
        try:
            user_key = SymmetricKey.from_bytes(raw)
        except CryptoError as e:  # e.g. a "V2" (COSE) account key
            raise SourceError(f"source {self.name}: unsupported account key: {e}") from None
        keys = self._org_keys(profile, user_key)
        folder_ids = self._folder_ids(vault, user_key)
        wanted = set(names)
        found: dict[str, tuple[dict[str, Any], SymmetricKey]] = {}
        for cipher in _list(vault, "Ciphers"):
            if _get(cipher, "DeletedDate") or _int(cipher, "Type") not in CIPHER_TYPES:
                continue
            if folder_ids is not None and _get(cipher, "FolderId") not in folder_ids:
                continue
            org_id = _str(cipher, "OrganizationId")
            if org_id is not None and org_id not in keys:
                continue  # an organisation this account is not (or no longer) a member of
            key = self._item_key(cipher, user_key, keys)
            name = self._field(cipher, "name", _str(cipher, "Name"), key)
            if name is None or name not in wanted:
                continue
            if name in found:
                where = f"folder {self.folder!r}" if self.folder else "the vault"
                raise SourceError(
                    f"source {self.name}: two items named {name!r} in {where}; rename one"
                )
            found[name] = (cipher, key)
        return {name: self._item(cipher, key) for name, (cipher, key) in found.items()}

    def _org_keys(self, profile: object, user_key: SymmetricKey) -> dict[str, SymmetricKey]:
        orgs = [o for o in _list(profile, "Organizations") if _str(o, "Key")]
        if not orgs:
            return {}
        account_keys = _get(_get(profile, "AccountKeys"), "publicKeyEncryptionKeyPair")
        wrapped = _str(account_keys, "wrappedPrivateKey") or _str(profile, "PrivateKey")
        if wrapped is None:
            raise SourceError(f"source {self.name}: the sync holds no private key")
        try:
            private: rsa.RSAPrivateKey = bwcrypto.load_private_key(wrapped, user_key)
        except CryptoError as e:
            raise SourceError(f"source {self.name}: the account's private key: {e}") from None
        keys: dict[str, SymmetricKey] = {}
        for org in orgs:
            org_id = _str(org, "Id")
            try:
                raw = bwcrypto.decrypt_rsa(_str(org, "Key") or "", private)
                key = SymmetricKey.from_bytes(raw)
            except CryptoError as e:
                raise SourceError(f"source {self.name}: organisation {org_id}: {e}") from None
            if org_id:
                keys[org_id] = key
        return keys

    def _folder_ids(self, vault: dict[str, Any], user_key: SymmetricKey) -> set[str] | None:
        if self.folder is None:
            return None
        ids: set[str] = set()
        for folder in _list(vault, "Folders"):
            folder_id = _str(folder, "Id")
            wrapped = _str(folder, "Name")
            if folder_id is None or wrapped is None:
                continue
            try:
                name = bwcrypto.decrypt_str(wrapped, user_key)
            except CryptoError as e:
                raise SourceError(f"source {self.name}: folder {folder_id}: {e}") from None
            if name == self.folder:
                ids.add(folder_id)
        return ids

    def _item_key(
        self, cipher: object, user_key: SymmetricKey, org_keys: dict[str, SymmetricKey]
    ) -> SymmetricKey:
        cipher_id = _str(cipher, "Id")
        org_id = _str(cipher, "OrganizationId")
        key = user_key if org_id is None else org_keys[org_id]
        own = _str(cipher, "Key")  # a per-item key (Bitwarden's "cipher key encryption")
        if own is None:
            return key
        try:
            return SymmetricKey.from_bytes(bwcrypto.decrypt_sym(own, key))
        except CryptoError as e:
            raise SourceError(f"source {self.name}: item {cipher_id} key: {e}") from None

    def _field(
        self, cipher: object, what: str, wrapped: str | None, key: SymmetricKey
    ) -> str | None:
        if wrapped is None:
            return None
        try:
            return bwcrypto.decrypt_str(wrapped, key)
        except CryptoError as e:
            cipher_id = _str(cipher, "Id")
            raise SourceError(f"source {self.name}: item {cipher_id} {what}: {e}") from None

    def _item(self, cipher: dict[str, Any], key: SymmetricKey) -> BitwardenItem:
        login = _get(cipher, "Login")
        fields: dict[str, Secret] = {}
        for name, wrapped in (
            ("username", _str(login, "Username")),
            ("password", _str(login, "Password")),
            ("totp", _str(login, "Totp")),
            ("notes", _str(cipher, "Notes")),
        ):
            value = self._field(cipher, name, wrapped, key)
            if value is not None:
                fields[name] = Secret(value)
        for index, custom in enumerate(_list(cipher, "Fields")):
            label = self._field(cipher, f"custom field {index} name", _str(custom, "Name"), key)
            value = self._field(cipher, f"custom field {index}", _str(custom, "Value"), key)
            if label is None or value is None or label in BUILTIN_FIELDS or label in fields:
                continue  # linked fields hold no value; built-in fields are not shadowed
            fields[label] = Secret(value)
        return BitwardenItem(_str(cipher, "Id") or "", fields, _str(cipher, "RevisionDate") or "")

    # ---- transport ------------------------------------------------------------------

    async def _call(
        self, clients: UpstreamClients, method: str, api: str, *, body: bytes | None = None,
        form: bool = False, headers: dict[str, str] | None = None, ok: tuple[int, ...] = (200,),
    ) -> tuple[int, dict[str, Any]]:
        sent = {"Device-Type": DEVICE_TYPE, "Bitwarden-Client-Name": "cli", **(headers or {})}
        if body is not None:
            sent["Content-Type"] = ("application/x-www-form-urlencoded; charset=utf-8" if form
                                    else "application/json")
        response = await call_source(
            clients, name=self.name, url=self.url, address=self.address,
            trust_file=self.trust_file, method=method, api=api, headers=sent, body=body,
            limit=MAX_RESPONSE, decoded=True,  # decoded: the limit is on the JSON
        )
        raw, what = response.body, f"{method} {api.split('?', 1)[0]}"
        status = response.status
        if status not in ok:
            raise SourceError(f"source {self.name}: {what} answered {status}")
        try:
            data = json.loads(raw) if raw else {}
        except ValueError:
            if status != 200:
                return status, {}
            raise SourceError(f"source {self.name}: {what}: the response is not JSON") from None
        if not isinstance(data, dict):
            raise SourceError(f"source {self.name}: {what}: the response is not a JSON object")
        return status, data
