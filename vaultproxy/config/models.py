"""The services.toml schema (SPEC §4). Frozen, extra keys forbidden, inputs never echoed."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from vaultproxy.config.validate import validate

NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"

Mode = Literal["placeholder", "host_inject"]
AuthType = Literal["bearer", "header", "basic", "query_param"]
Surface = Literal["auth", "header", "query", "path", "body"]

# What each opt-in surface lets the agent do, for the SECURITY line logged at every start.
SURFACE_RISKS = {
    "header": "any request header (the agent chooses where the secret lands upstream)",
    "query": "any query parameter (the agent chooses where the secret lands upstream)",
    "path": "the request path (the upstream may log or echo it)",
    "body": "the request body (the upstream may store and later show it)",
}


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)


class Service(_Model):
    name: str = Field(pattern=NAME_PATTERN)
    hosts: tuple[str, ...] = Field(min_length=1)
    mode: Mode
    auth: AuthType
    secret: str | None = None  # keystore entry; None means "same as name" (see secret_name)
    header_name: str | None = None
    prefix: str | None = None
    param_name: str | None = None
    placeholder: str | None = None  # None means "__vault.<name>__" (see placeholder_text)
    substitute_in: tuple[Surface, ...] = ("auth",)
    allow_range: bool = False
    env: str | None = None
    connect_to: str | None = None
    allow_private: bool = False
    allow_loopback: bool = False
    ca_cert: str | None = None
    insecure_tls: bool = False

    @model_validator(mode="after")
    def _rules(self) -> Service:
        # The same rules load_config applies, so a Service built in code is held to them too.
        problems = validate({"service": [_plain(self)]}, base_dir=None)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def secret_name(self) -> str:
        return self.secret or self.name

    @property
    def placeholder_text(self) -> str:
        return self.placeholder or f"__vault.{self.name}__"


class ProxySettings(_Model):
    egress: Literal["passthrough", "block"] = "passthrough"
    passthrough_allow: tuple[str, ...] = ()
    max_body_mb: int = Field(default=32, ge=1, le=4096)
    require_agent_auth: bool = False


class AgentSettings(_Model):
    extra_ca: tuple[str, ...] = ()  # PEM files (relative to the home) added to ca-bundle.pem


class HealthSettings(_Model):
    """``[health]``: the credential-health breach check (config/health.py)."""

    hibp_url: str = ""  # empty: no breach check
    ca_cert: str | None = None
    allow_loopback: bool = False
    allow_private: bool = False


class Config(_Model):
    proxy: ProxySettings = ProxySettings()
    agent: AgentSettings = AgentSettings()
    health: HealthSettings = HealthSettings()
    service: tuple[Service, ...] = ()

    @model_validator(mode="after")
    def _rules(self) -> Config:
        # Cross-service rules (unique names, hosts, placeholders, env). ca_cert files are
        # checked by load_config, which knows the home directory.
        data = {"proxy": _plain(self.proxy), "agent": _plain(self.agent),
                "health": _plain(self.health), "service": [_plain(s) for s in self.service]}
        problems = validate(data, base_dir=None)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def services(self) -> tuple[Service, ...]:
        return self.service


def _plain(model: BaseModel) -> dict[str, object]:
    return model.model_dump(exclude_unset=True, exclude_none=True)
