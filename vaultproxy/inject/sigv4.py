"""``auth = "aws_sigv4"``: the request is re-signed with the keystore's AWS key (SPEC §4.1).

The agent holds no AWS key; whatever it signed with is dropped: its ``Authorization`` (by
the common strip), the ``X-Amz-Date`` / ``X-Amz-Security-Token`` / ``X-Amz-Content-SHA256``
headers and a presigned URL's ``X-Amz-*`` query parameters (or SigV2's ``AWSAccessKeyId``,
``Signature``, ``Expires``). The proxy then signs the request
with botocore's own signer (``SigV4Auth``, ``S3SigV4Auth`` for S3, which does not normalise
the path) over what will actually be sent: the method, the Host, the request target and the
``host``, ``content-*`` and ``x-amz-*`` headers. Nothing here writes a canonical request.

The payload hash: S3 accepts ``UNSIGNED-PAYLOAD`` over TLS, so S3 bodies stream and are never
buffered; an agent's ``STREAMING-UNSIGNED-PAYLOAD-TRAILER`` upload (aws-chunked framing with
a trailing checksum, boto3's default for S3 uploads) keeps that mode. Other services need the
SHA-256 of the body: it is buffered (up to ``max_body_mb``, 413 above) and signed whole. A
chunk-signed upload (``STREAMING-AWS4-HMAC-SHA256-PAYLOAD``) carries a signature in every
chunk that only the agent's key could make: it is refused (400), never forwarded.

botocore is the ``aws`` extra (``pip install 'vaultproxy[aws]'``); it is imported on first
use. Its signer logs the canonical request (with a session token) at DEBUG: its logger is
pinned to WARNING here.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

from mitmproxy import http

from vaultproxy.config.models import Service
from vaultproxy.errors import ConfigError, InvalidRequest, SecretMissing
from vaultproxy.inject.query import param_name
from vaultproxy.inject.strategy import Draft, HeaderFields, need_field, need_option
from vaultproxy.secret import Secret

for _name in ("botocore", "botocore.auth"):
    logging.getLogger(_name).setLevel(logging.WARNING)

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
UNSIGNED = "UNSIGNED-PAYLOAD"
UNSIGNED_TRAILER = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
# Services that accept UNSIGNED-PAYLOAD (and so stream): S3 and its object lambda endpoints.
UNSIGNED_OK = frozenset({"s3", "s3-object-lambda"})

# The agent's signing headers (canonical spelling: lower case, "_" read as "-").
AGENT_AUTH_HEADERS = frozenset(
    {b"x-amz-date", b"x-amz-security-token", b"x-amz-content-sha256"}
)
# A presigned URL's signing parameters (compared case-insensitively).
PRESIGN_PARAMS = frozenset(
    {
        "x-amz-algorithm", "x-amz-credential", "x-amz-date", "x-amz-expires",
        "x-amz-signedheaders", "x-amz-signature", "x-amz-security-token",
    }
)
# A SigV2 presigned URL's (S3's global endpoint still hands these out): dropped when
# AWSAccessKeyId is present ("signature"/"expires" alone may be the API's own parameters).
SIGV2_PARAMS = frozenset({"awsaccesskeyid", "signature", "expires"})
# Besides host and x-amz-*, these are signed when present.
_SIGNED_PLAIN = frozenset({b"content-type", b"content-md5", b"content-encoding"})

Payload = Literal["unsigned", "trailer", "body"]


def _canonical(name: bytes) -> bytes:
    return name.lower().replace(b"_", b"-")


class SigV4:
    """Strips the agent's signature; :func:`sign_request` then signs (it needs the method,
    the Host and perhaps the body, which a Draft does not carry)."""

    auth: ClassVar[str] = "aws_sigv4"

    def placeholder_secret(
        self, service: Service, value: Secret | None, fields: Mapping[str, Secret]
    ) -> bytes:
        raise ConfigError([f"service.{service.name}.mode: auth = aws_sigv4 needs host_inject"])

    def inject(
        self, draft: Draft, service: Service, value: Secret | None, fields: Mapping[str, Secret]
    ) -> None:
        kept: HeaderFields = []
        for k, v in draft.headers:
            ck = _canonical(k)
            # X-Amz-Content-SHA256 stays until sign_request reads the agent's payload mode
            # and replaces it.
            if ck in AGENT_AUTH_HEADERS and ck != b"x-amz-content-sha256":
                draft.stripped.append(ck.decode("ascii", "replace"))
                continue
            kept.append((k, v))
        draft.headers = kept
        if draft.query:
            pairs = draft.query.split(b"&")
            names = {n for p in pairs for n in _names(p)}
            drop = PRESIGN_PARAMS | (SIGV2_PARAMS if "awsaccesskeyid" in names else set())
            kept_pairs = [p for p in pairs if not _names(p) & drop]
            if len(kept_pairs) != len(pairs):
                draft.query = b"&".join(kept_pairs) or None
                draft.stripped.append("query:presign")


def _names(pair: bytes) -> set[str]:
    """The decoded, lower-cased names in one query pair (``;`` separates too, for servers
    that honour it)."""
    return {param_name(part).lower().decode("latin-1") for part in pair.split(b";")}


def payload_mode(service: Service, headers: HeaderFields) -> Payload:
    """How the body is covered by the signature, from the service and what the agent sent."""
    agent = b""
    for k, v in headers:
        if _canonical(k) == b"x-amz-content-sha256":
            agent = v.strip()
    if agent == UNSIGNED_TRAILER.encode():
        return "trailer"
    if agent.startswith(b"STREAMING-"):
        raise InvalidRequest(
            f"service {service.name!r}: chunk-signed uploads cannot be re-signed by the proxy; "
            "configure the client for unsigned or whole-body payloads"
        )
    return "unsigned" if _aws_service(service) in UNSIGNED_OK else "body"


def has_body(req: http.Request) -> bool:
    """May the request carry a body? HTTP/1 says so in its framing headers; an HTTP/2 or /3
    request without ``content-length`` may still send DATA (so: maybe, and it is buffered)."""
    if "transfer-encoding" in req.headers:
        return True
    length = req.headers.get("content-length")
    if length is None:
        return not req.http_version.startswith("HTTP/1")
    length = length.strip()
    return not (length.isdigit() and int(length) == 0)


def sign_request(
    req: http.Request,
    service: Service,
    fields: Mapping[str, Secret],
    body: bytes | None,
) -> None:
    """Sign ``req`` in place. ``body`` None: the payload is unsigned (S3) or empty; else the
    whole body, whose SHA-256 botocore signs."""
    mode = payload_mode(service, list(req.headers.fields))
    literal = {"unsigned": UNSIGNED, "trailer": UNSIGNED_TRAILER}.get(mode)
    fields_out = sign(
        method=req.method,
        authority=req.host_header or req.pretty_host,
        target=req.data.path,
        headers=list(req.headers.fields),
        payload=literal if literal is not None else (body or b""),
        service=service,
        fields=fields,
    )
    names = {_canonical(k) for k, _ in fields_out} | {b"authorization", b"x-amz-content-sha256"}
    kept = [(k, v) for k, v in req.headers.fields if _canonical(k) not in names]
    req.headers.fields = tuple(kept + fields_out)


def sign(
    *,
    method: str,
    authority: str,
    target: bytes,
    headers: HeaderFields,
    payload: str | bytes,
    service: Service,
    fields: Mapping[str, Secret],
) -> HeaderFields:
    """The header fields that sign this request (Authorization, X-Amz-Date, ...), made by
    botocore's signer. ``payload``: the body (botocore hashes it) or an UNSIGNED literal,
    which is then sent as ``X-Amz-Content-SHA256``."""
    auth_cls = _signer_class(service, payload)
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    token = fields.get("session_token")
    creds = Credentials(
        _text(service, fields, "access_key_id"),
        _text(service, fields, "secret_access_key"),
        _text(service, fields, "session_token") if token is not None and token else None,
    )
    try:
        url = "https://" + authority + target.decode("ascii")
    except UnicodeDecodeError:
        raise InvalidRequest("the request target is not ASCII (percent-encode it)") from None
    signed: dict[str, str] = {"host": authority}
    for k, v in headers:
        ck = _canonical(k)
        if ck in _SIGNED_PLAIN or (ck.startswith(b"x-amz-") and ck not in AGENT_AUTH_HEADERS):
            name, value = ck.decode("ascii"), v.decode("latin-1")
            signed[name] = f"{signed[name]},{value}" if name in signed else value
    if isinstance(payload, str):
        signed["X-Amz-Content-SHA256"] = payload
    aws_req = AWSRequest(
        method=method, url=url, headers=signed,
        data=payload if isinstance(payload, bytes) else None,
    )
    auth_cls(creds, _aws_service(service), need_option(service, "region")).add_auth(aws_req)
    out: HeaderFields = []
    for name in ("Authorization", "X-Amz-Date", "X-Amz-Security-Token", "X-Amz-Content-SHA256"):
        value = aws_req.headers.get(name)
        if value is not None:
            out.append((name.encode("ascii"), value.encode("latin-1")))
    return out


def _signer_class(service: Service, payload: str | bytes) -> Any:
    """botocore's signer for the service; for S3 with a literal payload, one whose
    ``payload()`` is that literal (S3SigV4Auth would otherwise pick its own)."""
    try:
        from botocore.auth import S3SigV4Auth, SigV4Auth
    except ImportError:
        raise ConfigError([
            f"service.{service.name}.auth: aws_sigv4 needs botocore; "
            "install it with: pip install 'vaultproxy[aws]'"
        ]) from None
    if _aws_service(service) not in UNSIGNED_OK:
        return SigV4Auth
    if not isinstance(payload, str):
        return S3SigV4Auth
    return _literal_signer(S3SigV4Auth, payload)


@functools.cache
def _literal_signer(base: Any, literal: str) -> Any:
    class _Literal(base):  # type: ignore[misc, valid-type]
        def payload(self, request: Any) -> str:
            return literal

    return _Literal


def _aws_service(service: Service) -> str:
    return need_option(service, "aws_service")


def _text(service: Service, fields: Mapping[str, Secret], name: str) -> str:
    """A key field as text: printable ASCII (it is signed with and may go in a header);
    the error names the field, never a byte of it."""
    raw = need_field(service, fields, name)
    if not raw.isascii() or not raw.decode("ascii").isprintable():
        raise SecretMissing(
            f"service {service.name!r}: keystore field {name!r} is not printable ASCII "
            "(an AWS key never is anything else)"
        )
    return raw.decode("ascii")


def sign_at_head(req: http.Request, service: Service, fields: Mapping[str, Secret]) -> bool:
    """Sign now if the body need not be hashed (S3's unsigned payload, or no body) and
    return True; False: the caller buffers the body and calls :func:`sign_request` with it."""
    if payload_mode(service, list(req.headers.fields)) != "body" or not has_body(req):
        sign_request(req, service, fields, None)
        return True
    return False
