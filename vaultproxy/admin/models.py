"""Request and response bodies of the admin API (pydantic; they make /openapi.json).

Write-only values are ``SecretStr``; no response model has a field that could hold one.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from vaultproxy.config.models import NAME_PATTERN

FIELD_PATTERN = NAME_PATTERN
MAX_SECRET = 64 * 1024


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True, frozen=True)


class _Out(BaseModel):
    model_config = ConfigDict(hide_input_in_errors=True)


class ErrorDetail(_Out):
    message: str
    type: str = "vaultproxy_error"
    code: str
    problems: list[str] | None = None


class ErrorOut(_Out):
    error: ErrorDetail


class HealthOut(_Out):
    status: Literal["ok", "degraded"] = "ok"
    locked: bool
    services: int
    version: str
    problems: list[str] | None = None  # only when "degraded": why (audit.jsonl unwritable)


class UnlockIn(_In):
    password: SecretStr = Field(min_length=1, max_length=4096)


class LockOut(_Out):
    locked: bool


class ServiceOut(_Out):
    name: str
    hosts: list[str]
    mode: str
    auth: str
    secret: str
    header_name: str | None
    prefix: str | None
    param_name: str | None
    placeholder: str
    substitute_in: list[str]
    env: str | None
    connect_to: str | None
    allow_private: bool
    allow_loopback: bool
    ca_cert: str | None
    insecure_tls: bool
    secret_present: bool | None = Field(
        description="whether the keystore has the entry; null while locked"
    )


class ServicesOut(_Out):
    services: list[ServiceOut]


class SecretInfo(_Out):
    name: str
    has_value: bool
    fields: list[str]
    created: float
    updated: float


class SecretsOut(_Out):
    secrets: list[SecretInfo]


class SecretPut(_In):
    """Write-only. ``value`` sets the entry's value; ``fields`` sets (merges) named fields."""

    value: SecretStr | None = Field(default=None, min_length=1, max_length=MAX_SECRET)
    fields: dict[str, SecretStr] | None = Field(default=None, max_length=64)

    @model_validator(mode="after")
    def _something(self) -> SecretPut:
        if self.value is None and not self.fields:
            raise ValueError("give a value or at least one field")
        for secret in (self.fields or {}).values():
            if not 0 < len(secret.get_secret_value()) <= MAX_SECRET:
                raise ValueError(f"field values must be 1-{MAX_SECRET} characters")
        return self


class SecretDeleted(_Out):
    name: str
    deleted: bool


class ReloadOut(_Out):
    before: int
    after: int


class AuditOut(_Out):
    records: list[dict[str, Any]]


Method = Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


class ProxyIn(_In):
    """An explicit request to a registered service; the proxy adds the credential."""

    service: str = Field(pattern=NAME_PATTERN)
    method: Method = "GET"
    path: str = Field(default="/", pattern=r"^/[\x21-\x22\x24-\x7e]*$", max_length=8192)
    headers: dict[str, str] = Field(default_factory=dict, max_length=100)
    query: dict[str, str | list[str]] = Field(default_factory=dict, max_length=100)
    body: str | dict[str, Any] | list[Any] | None = None
    host: str | None = Field(
        default=None, max_length=260,
        description="which of the service's hosts (default: its first non-wildcard host)",
    )
