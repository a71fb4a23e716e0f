"""Token endpoints that verify what a minter signs, with the verifiers the real services'
libraries use: google-auth's ``google.auth.jwt.decode`` against the key's public
certificate (Google's token endpoint), pyjwt against the App's public key (GitHub's
installation-token endpoint). Each is an ``Upstream`` handler (real TLS, trustme CA).

The endpoints hand out canary tokens, so a token that reaches the agent fails the run.
"""

from __future__ import annotations

import datetime
import json
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import parse_qs

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from tests.canary import make_canary
from tests.harness.upstream import Received, Reply

JSON = [(b"content-type", b"application/json")]


def _reply(status: int, data: object) -> Reply:
    return status, JSON, [json.dumps(data).encode()]


@dataclass(frozen=True)
class RsaKey:
    private_pem: str
    public_pem: str
    cert_pem: str  # a self-signed certificate for the key, as Google publishes them

    @classmethod
    def make(cls, subject: str = "vaultproxy-test") -> RsaKey:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256())
        )
        return cls(
            private_pem=key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ).decode(),
            public_pem=key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ).decode(),
            cert_pem=cert.public_bytes(serialization.Encoding.PEM).decode(),
        )


def google_key_file(key: RsaKey, token_uri: str, email: str, key_id: str = "k1") -> str:
    """A service-account key file as Google issues it (only the fields that matter)."""
    return json.dumps({
        "type": "service_account",
        "project_id": "vaultproxy-test",
        "private_key_id": key_id,
        "private_key": key.private_pem,
        "client_email": email,
        "client_id": "1234567890",
        "token_uri": token_uri,
    })


@dataclass
class GoogleTokenEndpoint:
    """``POST /token`` with the JWT-bearer grant, verified by google-auth; then the
    service's API routes accept only ``Authorization: Bearer <a token it issued>``."""

    key: RsaKey
    token_uri: str
    email: str
    scopes: tuple[str, ...]
    issued: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # why each refused assertion failed
    echo_errors: bool = False  # a careless endpoint: its error body quotes the assertion
    also_audiences: tuple[str, ...] = ()  # the same endpoint reached under other names
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def handler(self, rec: Received) -> Reply:
        if rec.path == "/token":
            return self._token(rec)
        return self._api(rec)

    def _token(self, rec: Received) -> Reply:
        from google.auth import jwt as gjwt

        form = {k: v[0] for k, v in parse_qs(rec.body.decode()).items()}
        assertion = form.get("assertion", "")
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return self._refuse("grant_type", assertion)
        try:
            claims = gjwt.decode(assertion, certs={"k1": self.key.cert_pem},
                                 audience=[self.token_uri, *self.also_audiences])
        except ValueError as e:
            return self._refuse(f"verify: {type(e).__name__}", assertion)
        if claims.get("iss") != self.email or claims.get("scope") != " ".join(self.scopes):
            return self._refuse("claims", assertion)
        if int(claims["exp"]) - int(claims["iat"]) > 3600:
            return self._refuse("lifetime", assertion)
        token = "ya29." + make_canary()
        with self._lock:
            self.issued.append(token)
        return _reply(200, {"access_token": token, "expires_in": 3599, "token_type": "Bearer"})

    def _refuse(self, why: str, assertion: str) -> Reply:
        self.refused.append(why)
        body: dict[str, object] = {"error": "invalid_grant"}
        if self.echo_errors:
            body["error_description"] = f"bad assertion {assertion}"
        return _reply(400, body)

    def _api(self, rec: Received) -> Reply:
        auth = rec.header("authorization") or ""
        with self._lock:
            good = auth.startswith("Bearer ") and auth[7:] in self.issued
        if not good:
            return _reply(401, {"error": "unauthenticated"})
        return _reply(200, {"ok": True, "path": rec.path})


@dataclass
class GitHubAppEndpoint:
    """``POST /app/installations/<id>/access_tokens`` with the App JWT, verified by pyjwt
    against the App's public key; other routes accept only ``Authorization: token <a token
    it issued>`` (as api.github.com does with installation tokens)."""

    key: RsaKey
    app_id: str
    installation_id: str
    lifetime: int = 3600
    issued: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def tokens_path(self) -> str:
        return f"/app/installations/{self.installation_id}/access_tokens"

    def handler(self, rec: Received) -> Reply:
        if rec.path.startswith("/app/"):
            return self._token(rec)
        auth = rec.header("authorization") or ""
        with self._lock:
            good = auth.startswith("token ") and auth[6:] in self.issued
        if not good:
            return _reply(401, {"message": "Bad credentials"})
        return _reply(200, {"ok": True, "path": rec.path})

    def _token(self, rec: Received) -> Reply:
        import jwt

        if rec.method != "POST" or rec.path != self.tokens_path:
            self.refused.append("route")
            return _reply(404, {"message": "Not Found"})
        auth = rec.header("authorization") or ""
        if not auth.startswith("Bearer "):
            self.refused.append("no bearer")
            return _reply(401, {"message": "A JSON web token could not be decoded"})
        try:
            claims = jwt.decode(
                auth[7:], self.key.public_pem, algorithms=["RS256"], issuer=self.app_id,
                options={"require": ["iss", "iat", "exp"]},
            )
        except jwt.PyJWTError as e:
            self.refused.append(f"verify: {type(e).__name__}")
            return _reply(401, {"message": "A JSON web token could not be decoded"})
        if int(claims["exp"]) - int(claims["iat"]) > 600:
            self.refused.append("lifetime")
            return _reply(401, {"message": "'Expiration time' claim ('exp') is too far"})
        token = "ghs_" + make_canary()
        expires = datetime.datetime.fromtimestamp(time.time() + self.lifetime, datetime.UTC)
        with self._lock:
            self.issued.append(token)
        return _reply(201, {"token": token,
                            "expires_at": expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
                            "permissions": {"contents": "read"}})
