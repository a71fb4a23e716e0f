"""A real OAuth 2.0 authorization server and resource API on loopback TLS: authlib's server
components (``AuthorizationServer``, ``RefreshTokenGrant``, ``ClientCredentialsGrant``,
``ResourceProtector``) behind Flask, served by werkzeug with a trustme certificate.

It enforces refresh-token rotation: every refresh answers a new refresh token and revokes
the one used, so a reused refresh token is rejected (``invalid_grant``). Every token it
issues is a canary (``vpcanary_<hex>``), so the session-wide leak check covers them.

Routes: ``POST /token`` (refresh_token and client_credentials grants), ``GET|POST|PUT|DELETE
/api/<anything>`` (needs a valid, unexpired, unrevoked access token, else 401),
``GET /api/slow`` (answers after ``slow_seconds``), ``GET /api/echo`` (reflects the
``Authorization`` it received, in the body and in ``X-Echo``).
"""

from __future__ import annotations

import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trustme
from authlib.integrations.flask_oauth2 import AuthorizationServer, ResourceProtector
from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749 import ClientMixin, TokenMixin, grants
from authlib.oauth2.rfc6750 import BearerTokenValidator
from flask import Flask, jsonify, request
from werkzeug.serving import WSGIRequestHandler, make_server

from tests.canary import make_canary


class _Quiet(WSGIRequestHandler):
    def log(self, type: str, message: str, *args: Any) -> None:
        pass


@dataclass
class Client(ClientMixin):  # type: ignore[misc]
    client_id: str
    client_secret: str
    scope: str = "read write"

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str:
        return "https://client.test/cb"

    def get_allowed_scope(self, scope: str) -> str:
        if not scope:
            return ""
        allowed = set(self.scope.split())
        return " ".join(s for s in scope.split() if s in allowed)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return False

    def check_client_secret(self, client_secret: str) -> bool:
        return client_secret == self.client_secret

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method in ("client_secret_basic", "client_secret_post")

    def check_response_type(self, response_type: str) -> bool:
        return False

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in ("refresh_token", "client_credentials")


@dataclass
class Token(TokenMixin):  # type: ignore[misc]
    client_id: str
    access_token: str
    refresh_token: str | None
    scope: str
    issued_at: float
    expires_in: int
    revoked: bool = False  # the access token
    refresh_used: bool = False  # the refresh token was exchanged (rotation)
    params: dict[str, str] = field(default_factory=dict)

    def check_client(self, client: Client) -> bool:
        return self.client_id == client.client_id

    def get_scope(self) -> str:
        return self.scope

    def get_expires_in(self) -> int:
        return self.expires_in

    def is_expired(self) -> bool:
        return time.time() >= self.issued_at + self.expires_in

    def is_revoked(self) -> bool:
        return self.revoked


class OAuthServer:
    """``start()`` it; ``seed_refresh_token()`` makes the grant a client starts from."""

    def __init__(self, dir: Path, *, expires_in: int = 3600, client_id: str = "vp-client",
                 client_secret: str | None = None) -> None:
        self.dir = dir
        self.ca = trustme.CA()
        cert = self.ca.issue_cert("oauth.api.test", "*.oauth.api.test", "127.0.0.1")
        self.cert_file = dir / "oauth-cert.pem"
        self.ca_file = dir / "oauth-ca.pem"
        cert.private_key_and_cert_chain_pem.write_to_path(str(self.cert_file))
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self.client = Client(client_id, client_secret or make_canary())
        self.tokens: list[Token] = []
        self.exchanges: Counter[str] = Counter()  # grant type -> answered token requests
        self.refused: Counter[str] = Counter()  # grant type -> refused token requests
        self.api_seen: list[Token] = []  # the token of every accepted API request
        self.api_refused = 0
        self.expires_in = expires_in
        self.slow_seconds = 0.0
        self.on_api: Callable[[Token], None] | None = None  # runs before an API answer
        self.last_form: dict[str, str] = {}
        # Hold token requests: ``token_entered`` is set when one arrives, which then waits
        # for ``token_release`` (when set to an Event) before it is answered.
        self.token_entered = threading.Event()
        self.token_release: threading.Event | None = None
        self.last_auth_header: str | None = None
        self._lock = threading.Lock()
        self.port = 0
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.app = self._build()

    # -- the grant store ------------------------------------------------------------------
    def seed_refresh_token(self, scope: str = "read") -> str:
        tok = Token(self.client.client_id, make_canary(), make_canary(), scope, time.time(), 0)
        tok.revoked = True  # only its refresh token is of use
        self.tokens.append(tok)
        assert tok.refresh_token is not None
        return tok.refresh_token

    def by_access(self, value: str) -> Token | None:
        return next((t for t in self.tokens if t.access_token == value), None)

    def by_refresh(self, value: str) -> Token | None:
        return next((t for t in self.tokens if t.refresh_token == value), None)

    def revoke_all_access(self) -> None:
        for t in self.tokens:
            t.revoked = True

    # -- the Flask app with authlib's server ----------------------------------------------
    def _build(self) -> Flask:
        app = Flask("oauth-test-server")
        app.config["OAUTH2_TOKEN_EXPIRES_IN"] = {
            "refresh_token": self.expires_in, "client_credentials": self.expires_in,
        }
        app.config["OAUTH2_ACCESS_TOKEN_GENERATOR"] = lambda **kw: make_canary()
        app.config["OAUTH2_REFRESH_TOKEN_GENERATOR"] = lambda **kw: make_canary()
        outer = self

        def query_client(client_id: str) -> Client | None:
            return outer.client if client_id == outer.client.client_id else None

        def save_token(token: dict[str, Any], req: Any) -> None:
            outer.tokens.append(Token(
                outer.client.client_id, token["access_token"], token.get("refresh_token"),
                token.get("scope", ""), time.time(), int(token["expires_in"]),
                params=dict(request.form),
            ))

        class RefreshGrant(grants.RefreshTokenGrant):  # type: ignore[misc]
            INCLUDE_NEW_REFRESH_TOKEN = True
            TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]

            def authenticate_refresh_token(self, refresh_token: str) -> Token | None:
                tok = outer.by_refresh(refresh_token)
                return tok if tok is not None and not tok.refresh_used else None

            def authenticate_user(self, refresh_token: Token) -> object:
                return {"id": 1}

            def revoke_old_credential(self, refresh_token: Token) -> None:
                refresh_token.refresh_used = True
                refresh_token.revoked = True

        class ClientGrant(grants.ClientCredentialsGrant):  # type: ignore[misc]
            TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]

        server = AuthorizationServer(app, query_client=query_client, save_token=save_token)
        server.register_grant(RefreshGrant)
        server.register_grant(ClientGrant)

        class Validator(BearerTokenValidator):  # type: ignore[misc]
            def authenticate_token(self, token_string: str) -> Token | None:
                return outer.by_access(token_string)

        protect = ResourceProtector()
        protect.register_token_validator(Validator())

        @app.post("/token")
        def token() -> Any:
            grant = request.form.get("grant_type", "")
            outer.token_entered.set()
            if outer.token_release is not None:
                outer.token_release.wait(30)
            with outer._lock:
                outer.last_form = dict(request.form)
                outer.last_auth_header = request.headers.get("Authorization")
                response = server.create_token_response()
                (outer.exchanges if response.status_code == 200 else outer.refused)[grant] += 1
            return response

        @app.route("/api/<path:rest>", methods=["GET", "HEAD", "POST", "PUT", "DELETE"])
        def api(rest: str) -> Any:
            # authlib's ResourceProtector decides: missing, unknown, expired or revoked
            # access token -> 401 invalid_token.
            try:
                tok = protect.acquire_token()
            except OAuth2Error as e:
                outer.api_refused += 1
                protect.raise_error_response(e)
            outer.api_seen.append(tok)
            if outer.on_api is not None:
                outer.on_api(tok)
            if rest == "slow":
                time.sleep(outer.slow_seconds)
            if rest == "echo":  # an upstream that reflects the credential it was sent
                auth = request.headers.get("Authorization", "")
                reply = jsonify(ok=True, saw=auth, token=auth[7:])
                reply.headers["X-Echo"] = auth
                return reply
            return jsonify(ok=True, path=rest, method=request.method)

        return app

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> OAuthServer:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(str(self.cert_file))
        self._server = make_server("127.0.0.1", 0, self.app, threaded=True, ssl_context=ctx,
                                   request_handler=_Quiet)
        self.port = int(self._server.server_port)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
        if self._thread is not None:
            self._thread.join(5)
