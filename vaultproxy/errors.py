"""One error hierarchy; one function maps each proxy-facing error to (status, code, message).

Messages carry identifiers (service names, field paths), never values.
"""

from __future__ import annotations

import json


class VaultproxyError(Exception):
    """Base of every error vaultproxy raises on purpose."""

    status = 500
    code = "internal"
    public = "internal proxy error"
    #: Response headers the proxy adds to its error reply (Retry-After, the approval id).
    extra_headers: tuple[tuple[str, str], ...] = ()

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.public)


class UsageError(VaultproxyError):
    """Bad command-line use; the CLI exits 2."""


class ConfigError(VaultproxyError):
    """services.toml is invalid; ``problems`` holds ``path: message`` lines."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems) or "invalid configuration")


class KeystoreError(VaultproxyError):
    """The keystore cannot be opened or written (wrong password, damaged file...)."""


class PermissionProblem(VaultproxyError):
    """A file or directory has unsafe permissions; the message names the chmod fix."""


class CAError(VaultproxyError):
    """The MITM CA is missing, unreadable or unsafe."""


class LockedError(VaultproxyError):
    status, code, public = (
        503,
        "locked",
        "the vaultproxy keystore is locked; the operator unlocks it with `vaultproxy unlock` "
        "(or POST /v1/unlock on the admin API)",
    )


class SecretMissing(VaultproxyError):
    status, code, public = 502, "secret_missing", "the secret for this service is missing"


class TokenUnavailable(VaultproxyError):
    """A minted credential (SPEC §4.1) could not be obtained: nothing is forwarded."""

    status, code, public = 502, "token_unavailable", (
        "vaultproxy could not obtain a token for this service (see the proxy log)"
    )


class UpstreamUnreachable(VaultproxyError):
    status, code, public = 502, "upstream_unreachable", "the upstream could not be reached"


class ClientDisconnected(VaultproxyError):
    """The client (agent) went away before the exchange ended: it cut its request body or
    closed before the answer. Audit only (nobody is left to answer); 499 is nginx's "client
    closed request", so the record never blames the upstream."""

    status, code, public = 499, "client_disconnected", (
        "the client closed the connection before the exchange completed"
    )


class UpstreamTLS(VaultproxyError):
    status, code, public = 502, "upstream_tls", (
        "the TLS connection to the upstream failed (untrusted certificate or handshake error)"
    )


class DestinationDenied(VaultproxyError):
    status, code, public = 403, "destination_denied", "destination denied by vaultproxy policy"


class EgressBlocked(VaultproxyError):
    status, code, public = 403, "egress_blocked", "this host is not registered with vaultproxy"


class PlaceholderMisdirected(VaultproxyError):
    status, code, public = (
        403,
        "placeholder_misdirected",
        "a placeholder of another service was sent to this host",
    )


class PlaceholderUnknown(VaultproxyError):
    status, code, public = 403, "placeholder_unknown", "a placeholder names no known service"


class HostMismatch(VaultproxyError):
    status, code, public = (
        421,
        "host_mismatch",
        "the request names a different host than the tunnel target",
    )


class UpstreamProtocol(VaultproxyError):
    status, code, public = 502, "upstream_protocol", "the upstream response was malformed"


class UnscannableResponse(UpstreamProtocol):
    public = "the upstream used a content-encoding vaultproxy cannot scan"


class UpgradeRefused(VaultproxyError):
    status, code, public = (
        502,
        "upgrade_refused",
        "the upstream switched to a protocol other than the WebSocket the agent asked for",
    )


class InvalidRequest(VaultproxyError):
    status, code, public = 400, "invalid_request", "the request is malformed"


class BodyTooLarge(VaultproxyError):
    status, code, public = 413, "body_too_large", "the request body exceeds max_body_mb"


class AgentAuthRequired(VaultproxyError):
    status, code, public = 407, "agent_auth_required", "agent credentials are required"


class AgentScope(VaultproxyError):
    status, code, public = 403, "agent_scope", "this agent may not use this service"


class RateLimited(VaultproxyError):
    status, code, public = 429, "rate_limited", "too many requests"


def error_response(err: BaseException) -> tuple[int, str, str]:
    """Map any exception to (status, code, public message). Unknown errors are opaque 500s."""
    if isinstance(err, VaultproxyError) and err.status != 500:
        return err.status, err.code, str(err) if str(err) else err.public
    return 500, "internal", "internal proxy error"


def error_payload(code: str, message: str, **extra: object) -> dict[str, object]:
    """The one error shape (SPEC §5): an ``error`` object with ``message``, ``type`` and
    ``code`` -- what the OpenAI and Anthropic SDKs print in their exception text (a bare
    string there shows as "Error code: 503" and nothing else)."""
    return {"error": {"message": message, "type": "vaultproxy_error", "code": code, **extra}}


def error_body(code: str, message: str, **extra: object) -> bytes:
    return json.dumps(error_payload(code, message, **extra)).encode()


class AuditUnavailable(VaultproxyError):
    """``[audit] on_failure = "deny"`` and ``audit.jsonl`` cannot be written: a request that
    would carry a credential is refused rather than forwarded unaudited."""

    status, code, public = (
        503, "audit_unavailable",
        "the audit log cannot be written; requests that need a credential are refused",
    )


class NotReady(VaultproxyError):
    status, code, public = 503, "not_ready", "vaultproxy is not configured (no home loaded)"


def problems_text(err: ConfigError) -> str:
    return "\n".join(f"  {p}" for p in err.problems)


class RequestDenied(VaultproxyError):
    """A service's rule (SPEC §10) refuses this method and path."""

    status, code, public = 403, "request_denied", "a vaultproxy rule denies this request"


class ApprovalDenied(VaultproxyError):
    status, code, public = 403, "approval_denied", "the operator denied this request"

    def __init__(self, approval_id: str) -> None:
        super().__init__(f"the operator denied this request (approval {approval_id})")
        self.extra_headers = (("X-Vaultproxy-Approval", approval_id),)


class ApprovalTimeout(VaultproxyError):
    """Nobody decided within ``hold_seconds``; approving the id later lets a retry pass."""

    status, code, public = 403, "approval_timeout", "no decision on this request in time"

    def __init__(self, approval_id: str) -> None:
        super().__init__(
            f"this request needs the operator's approval and none came in time; approval "
            f"{approval_id} stays open: once it is approved, retry the request"
        )
        self.extra_headers = (("X-Vaultproxy-Approval", approval_id),)


class HoneytokenUsed(VaultproxyError):
    status, code, public = 403, "honeytoken", "this credential is a decoy; the use is reported"


def rate_limited(retry_after: int, message: str) -> RateLimited:
    """A 429 carrying ``Retry-After``."""
    err = RateLimited(message)
    err.extra_headers = (("Retry-After", str(retry_after)),)
    return err


class AgentTokenExpired(VaultproxyError):
    """The agent's token was right but its lifetime (``agent add --ttl``) is over: distinct
    from a wrong token, so the operator knows to ``agent rotate`` rather than to look for a
    typo."""

    status, code, public = (
        407, "agent_token_expired",
        "this agent's token has expired; the operator issues a new one with "
        "`vaultproxy agent rotate NAME`",
    )


class UpstreamTimeout(VaultproxyError):
    """``[proxy] connect_timeout`` / ``response_timeout`` / ``idle_timeout`` ran out."""

    status, code, public = 504, "upstream_timeout", "the upstream did not answer in time"


class Overloaded(VaultproxyError):
    """Out of file descriptors: a new connection is refused at once, never queued."""

    status, code, public = 503, "overloaded", (
        "vaultproxy is out of file descriptors or connections; retry shortly"
    )
