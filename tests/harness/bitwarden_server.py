"""A minimal Bitwarden-compatible server (what the official ``bw`` CLI needs), on loopback TLS.

It implements only what the CLI calls to log in, sync and create folders and items, plus
what vaultproxy's client calls (prelogin, password and API-key login, sync). It stores what
it is sent, as sent: every value in it was encrypted by the client that sent it.

Accounts are registered the way Bitwarden's web vault does it (its whitepaper's "Account
keys"), in :func:`make_account`: a random 64-byte user key wrapped by the stretched master
key, an RSA-2048 key pair whose private half is wrapped by the user key. That code is the
test's own, deliberately separate from vaultproxy/sync/bwcrypto.py; the official CLI logging
in and decrypting the user key is what proves it right. Organisations are made the way the
server does when a member is confirmed: a random 64-byte org key, RSA-OAEP(SHA-1) to the
member's public key.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import os
import secrets
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import trustme
import uvicorn
from argon2.low_level import Type, hash_secret_raw
from cryptography.hazmat.primitives import hashes, hmac, padding, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.padding import MGF1, OAEP
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

PBKDF2 = {"kdf": 0, "iterations": 600_000, "memory": None, "parallelism": None}
ARGON2ID = {"kdf": 1, "iterations": 3, "memory": 64, "parallelism": 4}


# ---- the web vault's registration, in the test's own words ---------------------------


def _web_master_key(password: str, email: str, kdf: dict[str, Any]) -> bytes:
    salt = email.strip().lower().encode()
    if kdf["kdf"] == 0:
        return PBKDF2HMAC(hashes.SHA256(), 32, salt, kdf["iterations"]).derive(password.encode())
    return hash_secret_raw(password.encode(), hashlib.sha256(salt).digest(),
                           time_cost=kdf["iterations"], memory_cost=kdf["memory"] * 1024,
                           parallelism=kdf["parallelism"], hash_len=32, type=Type.ID)


def enc_type2(plain: bytes, key64: bytes) -> str:
    """Bitwarden's type 2 cipher string: AES-256-CBC, then HMAC-SHA256 over iv||ct."""
    iv = os.urandom(16)
    padder = padding.PKCS7(128).padder()
    enc = Cipher(algorithms.AES(key64[:32]), modes.CBC(iv)).encryptor()
    ct = enc.update(padder.update(plain) + padder.finalize()) + enc.finalize()
    mac = hmac.HMAC(key64[32:], hashes.SHA256())
    mac.update(iv + ct)
    b = base64.b64encode
    return f"2.{b(iv).decode()}|{b(ct).decode()}|{b(mac.finalize()).decode()}"


@dataclass
class Account:
    email: str
    kdf: dict[str, Any]
    password_hash: str  # what a login must send (the master password hash)
    key: str  # the user key, wrapped by the stretched master key
    private_key: str  # PKCS#8, wrapped by the user key
    public_key: str  # SPKI DER, base64
    public: rsa.RSAPublicKey
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    client_id: str = ""
    client_secret: str = ""
    security_stamp: str = field(default_factory=lambda: str(uuid.uuid4()))
    user_key: bytes = field(default=b"", repr=False)  # for tests that write items themselves


def make_account(email: str, password: str, kdf: dict[str, Any]) -> Account:
    master = _web_master_key(password, email, kdf)
    stretched = (HKDFExpand(hashes.SHA256(), 32, b"enc").derive(master)
                 + HKDFExpand(hashes.SHA256(), 32, b"mac").derive(master))
    user_key = os.urandom(64)
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pkcs8 = private.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption())
    spki = private.public_key().public_bytes(serialization.Encoding.DER,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)
    pw_hash = PBKDF2HMAC(hashes.SHA256(), 32, password.encode(), 1).derive(master)
    account = Account(
        email=email.strip().lower(), kdf=kdf, password_hash=base64.b64encode(pw_hash).decode(),
        key=enc_type2(user_key, stretched), private_key=enc_type2(pkcs8, user_key),
        public_key=base64.b64encode(spki).decode(), public=private.public_key(),
    )
    account.user_key = user_key
    account.client_id = f"user.{account.id}"
    account.client_secret = secrets.token_urlsafe(24)
    return account


@dataclass
class Organization:
    id: str
    name: str
    key: bytes  # the org key (64 bytes); members get it RSA-OAEP(SHA-1) wrapped
    collection_id: str
    collection_name: str  # encrypted with the org key


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _jwt(claims: dict[str, Any]) -> str:
    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    # The clients decode the access token, they do not verify it (only the server does).
    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}.{part({'sig': 'none'})}"


class BitwardenServer:
    """Serves on https://127.0.0.1:<port> (a trustme certificate; ``ca_file`` trusts it)."""

    def __init__(self, base: Path, features: dict[str, bool] | None = None) -> None:
        self.dir = base
        self.features = dict(features or {})  # /api/config featureStates (the clients' flags)
        self.ca = trustme.CA()
        cert = self.ca.issue_cert("127.0.0.1", "localhost")
        self.cert_file, self.key_file = base / "bw-cert.pem", base / "bw-key.pem"
        cert.cert_chain_pems[0].write_to_path(str(self.cert_file))
        cert.private_key_pem.write_to_path(str(self.key_file))
        self.ca_file = base / "bw-ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self.accounts: dict[str, Account] = {}
        self.tokens: dict[str, str] = {}  # access/refresh token -> account e-mail
        self.folders: dict[str, list[dict[str, Any]]] = {}
        self.ciphers: list[dict[str, Any]] = []
        self.orgs: dict[str, list[Organization]] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request
        self.unknown: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        # Knobs a test turns: which prelogin paths exist (Bitwarden moved it to .../password;
        # Vaultwarden has the old one), and a hostile prelogin answer.
        self.prelogin_paths = {"/identity/accounts/prelogin",
                               "/identity/accounts/prelogin/password"}
        self.prelogin_override: dict[str, Any] | None = None
        # bound here and handed to uvicorn: a port picked by ``free_port()`` and bound later
        # could be taken in between by another xdist worker's server
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.port = int(self._sock.getsockname()[1])
        self.url = f"https://127.0.0.1:{self.port}"
        self.app = self._build()
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=self.port, ssl_certfile=str(self.cert_file),
            ssl_keyfile=str(self.key_file), log_level="warning", access_log=False,
            lifespan="off",
        )  # fmt: skip
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, args=([self._sock],),
                                       daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise AssertionError("the Bitwarden test server did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)

    # ---- test-side set-up -----------------------------------------------------------

    def register(self, email: str, password: str, kdf: dict[str, Any]) -> Account:
        account = make_account(email, password, kdf)
        with self.lock:
            self.accounts[account.email] = account
            self.folders[account.email] = []
            self.orgs[account.email] = []
        return account

    def add_organization(self, account: Account, name: str, collection: str) -> Organization:
        key = os.urandom(64)
        org = Organization(str(uuid.uuid4()), name, key, str(uuid.uuid4()),
                           enc_type2(collection.encode(), key))
        with self.lock:
            self.orgs[account.email].append(org)
        return org

    @contextmanager
    def tampered(self, match: str) -> Iterator[None]:
        """Flip one bit of the MAC of the cipher string ``match`` (e.g. ``login.password``)
        in every stored item, as a hostile server (or bit rot) would; restored afterwards."""
        outer, _, inner = match.partition(".")
        with self.lock:
            saved = copy.deepcopy(self.ciphers)
            for cipher in self.ciphers:
                holder = cipher.get(outer) if inner else cipher
                name = inner or outer
                if not isinstance(holder, dict) or not isinstance(holder.get(name), str):
                    continue
                head, _, mac_b64 = holder[name].rpartition("|")
                mac = bytearray(base64.b64decode(mac_b64))
                mac[0] ^= 0x01
                holder[name] = f"{head}|{base64.b64encode(bytes(mac)).decode()}"
        try:
            yield
        finally:
            with self.lock:
                self.ciphers[:] = saved

    # ---- the HTTP API ---------------------------------------------------------------

    def _account(self, request: Request) -> Account | None:
        auth = request.headers.get("authorization", "")
        email = self.tokens.get(auth.removeprefix("Bearer ").strip())
        return self.accounts.get(email) if email else None

    def _profile_org(self, account: Account, org: Organization) -> dict[str, Any]:
        wrapped = account.public.encrypt(org.key, OAEP(MGF1(hashes.SHA1()), hashes.SHA1(), None))
        return {
            "object": "profileOrganization", "id": org.id, "name": org.name,
            "key": "4." + base64.b64encode(wrapped).decode(), "status": 2, "type": 0,
            "enabled": True, "useTotp": True, "usePolicies": False, "useGroups": False,
            "useDirectory": False, "useEvents": False, "use2fa": False, "useApi": False,
            "useSso": False, "useResetPassword": False, "selfHost": True,
            "usersGetPremium": True, "seats": 10, "maxCollections": 10, "maxStorageGb": 1,
            "hasPublicAndPrivateKeys": False, "permissions": {}, "identifier": None,
            "userId": account.id, "organizationUserId": str(uuid.uuid5(uuid.NAMESPACE_OID,
                                                                       org.id + account.id)),
            "usePasswordManager": True, "useSecretsManager": False, "accessSecretsManager": False,
            "limitCollectionCreation": False, "limitCollectionDeletion": False,
            "limitItemDeletion": False, "allowAdminAccessToAllCollectionItems": True,
            "productTierType": 3, "keyConnectorEnabled": False,
        }  # fmt: skip

    def _account_keys(self, account: Account) -> dict[str, Any]:
        return {"object": "privateKeys", "publicKeyEncryptionKeyPair": {
            "object": "publicKeyEncryptionKeyPair", "wrappedPrivateKey": account.private_key,
            "publicKey": account.public_key}, "signatureKeyPair": None, "securityState": None}

    def _kdf_fields(self, account: Account) -> dict[str, Any]:
        kdf = account.kdf
        return {"kdf": kdf["kdf"], "kdfIterations": kdf["iterations"],
                "kdfMemory": kdf["memory"], "kdfParallelism": kdf["parallelism"]}

    def _profile(self, account: Account) -> dict[str, Any]:
        return {
            "object": "profile", "id": account.id, "name": account.email.split("@")[0],
            "email": account.email, "emailVerified": True, "premium": True,
            "premiumFromOrganization": False, "culture": "en-US", "twoFactorEnabled": False,
            "key": account.key, "privateKey": account.private_key,
            "accountKeys": self._account_keys(account), "securityStamp": account.security_stamp,
            "forcePasswordReset": False, "usesKeyConnector": False, "avatarColor": None,
            "creationDate": "2026-01-01T00:00:00.000Z", "verifyDevices": False,
            "organizations": [self._profile_org(account, o) for o in self.orgs[account.email]],
            "providers": [], "providerOrganizations": [],
        }  # fmt: skip

    def _token_response(self, account: Account, refresh: bool) -> dict[str, Any]:
        access = secrets.token_urlsafe(24)
        claims = {"sub": account.id, "email": account.email, "name": account.email,
                  "email_verified": True, "premium": True, "nbf": int(time.time()) - 60,
                  "exp": int(time.time()) + 3600, "iss": self.url + "|login",
                  "amr": ["Application"], "client_id": "cli", "sstamp": account.security_stamp,
                  "jti": access}
        token = _jwt(claims)
        refresh_token = secrets.token_urlsafe(24)
        with self.lock:
            self.tokens[token] = account.email
            self.tokens["refresh:" + refresh_token] = account.email
        kdf = account.kdf
        return {
            "access_token": token, "expires_in": 3600, "token_type": "Bearer",
            "refresh_token": refresh_token if refresh else None, "scope": "api offline_access",
            "Key": account.key, "PrivateKey": account.private_key,
            "AccountKeys": self._account_keys(account),
            "Kdf": kdf["kdf"], "KdfIterations": kdf["iterations"], "KdfMemory": kdf["memory"],
            "KdfParallelism": kdf["parallelism"], "ResetMasterPassword": False,
            "ForcePasswordReset": False, "ApiUseKeyConnector": False,
            "MasterPasswordPolicy": {"Object": "masterPasswordPolicy"},
            "UserDecryptionOptions": {
                "HasMasterPassword": True, "Object": "userDecryptionOptions",
                "MasterPasswordUnlock": {
                    "Kdf": {"KdfType": kdf["kdf"], "Iterations": kdf["iterations"],
                            "Memory": kdf["memory"], "Parallelism": kdf["parallelism"]},
                    "MasterKeyEncryptedUserKey": account.key, "Salt": account.email,
                },
            },
        }  # fmt: skip

    def _cipher_out(self, cipher: dict[str, Any]) -> dict[str, Any]:
        return {**cipher, "object": "cipherDetails"}

    def _build(self) -> FastAPI:  # noqa: C901 - one small handler per endpoint
        app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

        @app.middleware("http")
        async def record(request: Request, call_next: Any) -> Response:
            self.requests.append((request.method, request.url.path))
            response: Response = await call_next(request)
            return response

        @app.get("/api/config")
        async def config() -> dict[str, Any]:
            return {"object": "config", "version": "2026.6.0", "gitHash": "test",
                    "server": {"name": "vaultproxy-test", "url": self.url},
                    "environment": {"cloudRegion": None, "vault": self.url,
                                    "api": self.url + "/api",
                                    "identity": self.url + "/identity", "notifications": None,
                                    "sso": ""},
                    "featureStates": self.features, "push": {"pushTechnology": 0},
                    "settings": {"disableUserRegistration": True}}

        @app.post("/identity/accounts/prelogin")
        @app.post("/identity/accounts/prelogin/password")
        async def prelogin(request: Request) -> Any:
            if request.url.path not in self.prelogin_paths:
                return JSONResponse({"message": "not found"}, status_code=404)
            if self.prelogin_override is not None:
                return self.prelogin_override
            body = await request.json()
            email = str(body.get("email") or body.get("Email") or "").strip().lower()
            account = self.accounts.get(email)
            if account is None:  # Bitwarden answers defaults for an unknown e-mail
                return {"kdf": 0, "kdfIterations": 600_000, "kdfMemory": None,
                        "kdfParallelism": None}
            return self._kdf_fields(account)

        @app.post("/identity/connect/token")
        async def token(request: Request) -> JSONResponse:
            # (parsed here: FastAPI's form parsing needs python-multipart, not a dependency)
            form = {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}
            grant = form.get("grant_type")
            account: Account | None = None
            if grant == "password":
                candidate = self.accounts.get(str(form.get("username", "")).lower())
                if candidate and secrets.compare_digest(str(form.get("password", "")),
                                                        candidate.password_hash):
                    account = candidate
            elif grant == "client_credentials":
                for candidate in self.accounts.values():
                    if (form.get("client_id") == candidate.client_id and secrets.compare_digest(
                            str(form.get("client_secret", "")), candidate.client_secret)):
                        account = candidate
            elif grant == "refresh_token":
                email = self.tokens.get("refresh:" + str(form.get("refresh_token", "")))
                account = self.accounts.get(email) if email else None
            if account is None:
                return JSONResponse({"error": "invalid_grant", "error_description":
                                     "invalid_username_or_password", "ErrorModel": {
                                         "Message": "Username or password is incorrect. Try "
                                         "again.", "Object": "error"}}, status_code=400)
            return JSONResponse(self._token_response(account, grant != "client_credentials"))

        @app.get("/api/accounts/revision-date")
        async def revision_date(request: Request) -> Response:
            if self._account(request) is None:
                return Response(status_code=401)
            return JSONResponse(int(time.time() * 1000))

        @app.get("/api/accounts/profile")
        async def profile(request: Request) -> Response:
            account = self._account(request)
            if account is None:
                return Response(status_code=401)
            return JSONResponse(self._profile(account))

        @app.get("/api/sync")
        async def sync(request: Request) -> Response:
            account = self._account(request)
            if account is None:
                return Response(status_code=401)
            orgs = self.orgs[account.email]
            org_ids = {o.id for o in orgs}
            ciphers = [self._cipher_out(c) for c in self.ciphers
                       if c.get("_owner") == account.email or c.get("organizationId") in org_ids]
            collections = [{"object": "collectionDetails", "id": o.collection_id,
                            "organizationId": o.id, "name": o.collection_name,
                            "externalId": None, "readOnly": False, "hidePasswords": False,
                            "manage": True, "type": 0} for o in orgs]
            return JSONResponse({
                "object": "sync", "profile": self._profile(account),
                "folders": self.folders[account.email], "collections": collections,
                "ciphers": [{k: v for k, v in c.items() if not k.startswith("_")}
                            for c in ciphers],
                "domains": None, "policies": [], "sends": [],
            })  # fmt: skip

        @app.post("/api/folders")
        async def create_folder(request: Request) -> Response:
            account = self._account(request)
            if account is None:
                return Response(status_code=401)
            body = await request.json()
            folder = {"object": "folder", "id": str(uuid.uuid4()), "name": body.get("name"),
                      "revisionDate": _now()}
            with self.lock:
                self.folders[account.email].append(folder)
            return JSONResponse(folder)

        def store(account: Account, body: dict[str, Any], collections: list[str]) -> Response:
            now = _now()
            cipher = {**body, "id": str(uuid.uuid4()), "revisionDate": now,
                      "creationDate": now, "deletedDate": None, "archivedDate": None,
                      "edit": True, "viewPassword": True, "organizationUseTotp": True,
                      "permissions": {"delete": True, "restore": True},
                      "collectionIds": collections, "attachments": None,
                      "_owner": account.email}
            cipher.pop("encryptedFor", None)
            cipher.pop("lastKnownRevisionDate", None)
            with self.lock:
                self.ciphers.append(cipher)
            out = self._cipher_out(cipher)
            return JSONResponse({k: v for k, v in out.items() if not k.startswith("_")})

        @app.post("/api/ciphers")
        async def create_cipher(request: Request) -> Response:
            account = self._account(request)
            if account is None:
                return Response(status_code=401)
            return store(account, await request.json(), [])

        @app.post("/api/ciphers/create")
        async def create_org_cipher(request: Request) -> Response:
            account = self._account(request)
            if account is None:
                return Response(status_code=401)
            body = await request.json()
            return store(account, body["cipher"], list(body.get("collectionIds") or []))

        @app.api_route("/{rest:path}", methods=["GET", "POST", "PUT", "DELETE"])
        async def unknown(request: Request, rest: str) -> Response:
            self.unknown.append((request.method, request.url.path))
            return JSONResponse({"message": "not implemented by the test server"},
                                status_code=404)

        return app
