"""The services.toml schema (SPEC §4): the only one. Frozen, extra keys forbidden, inputs
never echoed.

Every rule lives on the models: field types, one validator per field (rules.py holds the
pure checks they call), and :func:`across`, the one validator for rules that span services.
Validators report with :class:`~vaultproxy.config.problems.Problems`, which
``problems.render`` turns into ``path: message`` lines. Rules that depend on another field
read it from ``info.data``, so fields are declared in the order they are checked.
``ca_cert`` files are checked when the loader passes ``context={"base_dir": home}``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BeforeValidator,
    Field,
    StrictBool,
    ValidationInfo,
    field_validator,
    model_validator,
)

from vaultproxy.config import access, minted, rules, signed
from vaultproxy.config.audit import AuditSettings, TelemetrySettings
from vaultproxy.config.fields import (
    Model,
    StrList,
    base_dir,
    ca_file,
    choice,
    rule,
    ruled,
    str_list,
)
from vaultproxy.config.health import HealthSettings
from vaultproxy.config.mcp_servers import McpServer, mcp_servers, placeholder_problems
from vaultproxy.config.mtls import MtlsSettings
from vaultproxy.config.problems import Across, Problems, TypeProblem
from vaultproxy.config.rules import HostSpec, RuleViolation
from vaultproxy.config.sources import SourceConfig, check_secret, source_problems
from vaultproxy.net import egress

NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"

Mode = Literal["placeholder", "host_inject"]
AuthType = Literal[
    "bearer", "header", "basic", "query_param",
    # minted (SPEC §4.1; their keys: config/minted.py)
    "oauth2_refresh", "oauth2_client_credentials", "session", "unifi_dual",
    "path_prefix", "aws_sigv4", "google_service_account", "github_app",  # SPEC §4.1 (signed.py)
]
Surface = Literal["auth", "header", "query", "path", "body"]
Egress = Literal["passthrough", "block"]
MAX_BODY_MB = (1, 4096)
TIMEOUT_SECONDS = (0.1, 86400)
PREWARM_MAX = 20  # the pool keeps at most 20 idle connections (net/outbound.py)
RETIRED_REDACT_DAYS = (0, 3650)

# What each opt-in surface lets the agent do, for the SECURITY line logged at every start.
SURFACE_RISKS = {
    "header": "any request header (the agent chooses where the secret lands upstream)",
    "query": "any query parameter (the agent chooses where the secret lands upstream)",
    "path": "the request path (the upstream may log or echo it)",
    "body": "the request body (the upstream may store and later show it)",
}

# auth type -> the keys that belong only to it
AUTH_KEYS = {"header_name": "header", "prefix": "header", "param_name": "query_param"}


class Service(Model):
    # Declared in the order they are checked: a rule may read an earlier field (info.data).
    name: Annotated[str, ruled(rules.check_name)]
    mode: Mode
    auth: AuthType
    allow_private: StrictBool = False
    allow_loopback: StrictBool = False
    hosts: StrList
    # validate_default: "is required when auth = ..." must run when the key is absent
    header_name: str | None = Field(default=None, validate_default=True)
    prefix: str | None = None
    param_name: str | None = Field(default=None, validate_default=True)
    # the keystore entry, or "SOURCE:PATH#FIELD" (config/sources.py); None: same as name
    secret: Annotated[str, ruled(check_secret)] | None = None
    placeholder: str | None = None  # None means "__vault.<name>__" (see placeholder_text)
    substitute_in: tuple[Surface, ...] = ("auth",)
    env: Annotated[str, ruled(rules.check_env)] | None = None
    connect_to: str | None = None
    ca_cert: str | None = None
    insecure_tls: StrictBool = False
    allow_range: StrictBool = False
    # -- minted credentials (SPEC §4.1): every key checked by config/minted.py ---------------
    token_url: str | None = Field(default=None, validate_default=True)
    scope: str | None = None
    audience: str | None = None
    token_params: Annotated[
        tuple[tuple[str, str], ...] | None, BeforeValidator(minted.token_params)
    ] = None
    client_auth: str | None = None
    login_url: str | None = Field(default=None, validate_default=True)
    login_body: str | None = None
    session_cookie: StrictBool = False
    token_field: str | None = None
    token_header: str | None = None
    # --- path_prefix / aws_sigv4 / google_service_account / github_app (config/signed.py) ---
    path_prefix: str | None = Field(default=None, validate_default=True)
    region: str | None = Field(default=None, validate_default=True)
    aws_service: str | None = Field(default=None, validate_default=True)
    scopes: StrList | None = Field(default=None, validate_default=True)
    api_url: str | None = None
    # --- request rules and rate limit (SPEC §10; config/access.py) ---------------------------
    # (named request_rules here: `rules` is also this module's name for config/rules.py)
    request_rules: access.Rules = Field(default=(), alias="rules")
    default_action: Annotated[str, BeforeValidator(access.check_default_action)] = "allow"
    rate_limit: Annotated[str, BeforeValidator(access.check_rate_limit)] | None = None
    # Warm upstream connections each worker opens per host at start and on every reload
    # (stages/pool.py); 0: none, the first agent request dials.
    prewarm: int = 0

    @field_validator("mode", mode="before")
    @classmethod
    def _mode(cls, value: object) -> object:
        return choice(value, get_args(Mode))

    @field_validator("auth", mode="before")
    @classmethod
    def _auth(cls, value: object, info: ValidationInfo) -> object:
        value = choice(value, get_args(AuthType))
        signed.check_auth(str(value), info.data.get("mode"))
        return value

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, hosts: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        if not hosts:
            raise Problems.one("must list at least one host")
        problems: list[tuple[str, str]] = []
        seen: dict[tuple[str, int, bool], int] = {}
        address = _address(info.data)
        for j, value in enumerate(hosts):
            try:
                spec = rules.parse_host(value)
            except RuleViolation as e:
                problems.append((f"[{j}]", str(e)))
                continue
            key = (spec.host, spec.port, spec.wildcard)
            if key in seen:
                problems.append((f"[{j}]", f"same host and port as hosts[{seen[key]}]"))
                continue
            seen[key] = j
            if spec.is_ip:
                try:
                    check_address(spec, address)
                except RuleViolation as e:
                    problems.append((f"[{j}]", str(e)))
        if problems:
            raise Problems(problems)
        return hosts

    @field_validator("header_name", "prefix", "param_name", mode="after")
    @classmethod
    def _auth_keys(cls, value: str | None, info: ValidationInfo) -> str | None:
        field = str(info.field_name)
        auth, owner = info.data.get("auth"), AUTH_KEYS[field]
        if value is None:
            if auth == owner and field != "prefix":
                raise Problems.one(f'is required when auth = "{owner}"')
            return None
        if auth is not None and auth != owner:
            raise Problems.one(f'only allowed with auth = "{owner}"')
        check = {"header_name": rules.check_header_name, "prefix": rules.check_prefix,
                 "param_name": rules.check_param_name}[field]
        rule(check, value)
        return value

    @field_validator("placeholder")
    @classmethod
    def _placeholder(cls, value: str, info: ValidationInfo) -> str:
        rule(rules.check_placeholder, value, info.data.get("name"))
        return value

    @field_validator("substitute_in", mode="before")
    @classmethod
    def _surfaces(cls, value: object, info: ValidationInfo) -> object:
        value = str_list(value)
        assert isinstance(value, tuple)
        mode = info.data.get("mode")
        if mode is not None and mode != "placeholder":
            raise Problems.one('only allowed with mode = "placeholder"')
        if not value:
            raise Problems.one("must list at least one surface")
        problems, seen = [], set()
        for j, surface in enumerate(value):
            if surface not in get_args(Surface):
                problems.append((f"[{j}]", rules.one_of(get_args(Surface))))
            elif surface in seen:
                problems.append((f"[{j}]", "listed twice"))
            seen.add(surface)
        if problems:
            raise Problems(problems)
        return value

    @field_validator("connect_to")
    @classmethod
    def _connect_to(cls, value: str, info: ValidationInfo) -> str:
        try:
            spec = rules.parse_host(value, allow_wildcard=False, require_port=True)
            check_address(spec, _address(info.data))
        except RuleViolation as e:
            raise Problems.one(str(e)) from None
        return value

    @field_validator("ca_cert")
    @classmethod
    def _ca_cert(cls, value: str, info: ValidationInfo) -> str:
        return ca_file(value, info)

    @field_validator("insecure_tls")
    @classmethod
    def _insecure(cls, value: bool, info: ValidationInfo) -> bool:
        if value and info.data.get("ca_cert") is not None:
            raise Problems.one("cannot be combined with ca_cert (pick one)")
        return value

    @field_validator("prewarm", mode="before")
    @classmethod
    def _prewarm(cls, value: object, info: ValidationInfo) -> object:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= PREWARM_MAX:
            raise Problems.one(f"must be a whole number of connections from 0 (none) to "
                               f"{PREWARM_MAX}")
        hosts = info.data.get("hosts") or ()
        if value and hosts and all(h.lstrip().startswith("*") for h in hosts):
            raise Problems.one("needs a host that is no wildcard (which name would it dial?)")
        return value

    @field_validator(*minted.KEY_OWNERS)
    @classmethod
    def _minted_keys(cls, value: Any, info: ValidationInfo) -> Any:
        return minted.check_key(str(info.field_name), value, info.data, _address(info.data))

    @model_validator(mode="after")
    def _minted_surfaces(self) -> Service:
        problem = minted.substitute_problem(self.auth, self.substitute_in)
        if problem is not None:
            raise Problems.one(problem, ".substitute_in")
        return self
    @field_validator("path_prefix", "region", "aws_service", "scopes", "api_url", mode="after")
    @classmethod
    def _signed_keys(cls, value: Any, info: ValidationInfo) -> Any:
        return signed.check_key(str(info.field_name), value, info.data)

    @property
    def secret_name(self) -> str:
        return self.secret or self.name

    @property
    def placeholder_text(self) -> str:
        return self.placeholder or rules.default_placeholder(self.name)


def _address(data: Mapping[str, Any]) -> egress.AddressContext:
    return egress.AddressContext(allow_private=data.get("allow_private") is True,
                                 allow_loopback=data.get("allow_loopback") is True)


def check_address(spec: HostSpec, ctx: egress.AddressContext) -> None:
    """The load-time address policy (SPEC §5) for a configured IP or dialled name."""
    rules.check_address(spec.host, spec.port, ctx)


class ProxySettings(Model):
    egress: Egress = "passthrough"
    passthrough_allow: StrList = ()
    max_body_mb: int = 32
    require_agent_auth: StrictBool = False
    # Upstream deadlines, in seconds (SPEC §4): TCP + TLS; until the response head (long:
    # model APIs think); no byte either way once the response streams.
    connect_timeout: float = 10
    response_timeout: float = 600
    idle_timeout: float = 300
    # Seconds a warm upstream connection may sit idle in a service's pool (0: no pool; each
    # agent connection then dials its own upstream).
    upstream_pool_idle: float = 30

    @field_validator("upstream_pool_idle", mode="before")
    @classmethod
    def _pool_idle(cls, value: object) -> object:
        hi = TIMEOUT_SECONDS[1]
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= hi:
            raise Problems.one(f"must be a number of seconds from 0 (no pool) to {hi}")
        return value

    @field_validator("connect_timeout", "response_timeout", "idle_timeout", mode="before")
    @classmethod
    def _timeout(cls, value: object) -> object:
        lo, hi = TIMEOUT_SECONDS
        if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
            raise Problems.one(f"must be a number of seconds from {lo} to {hi}")
        return value

    @field_validator("egress", mode="before")
    @classmethod
    def _egress(cls, value: object) -> object:
        return choice(value, get_args(Egress), typed=False)

    @field_validator("passthrough_allow")
    @classmethod
    def _allow(cls, entries: tuple[str, ...]) -> tuple[str, ...]:
        problems = []
        for j, entry in enumerate(entries):
            try:
                rules.parse_allow_entry(entry)
            except RuleViolation as e:
                problems.append((f"[{j}]", str(e)))
        if problems:
            raise Problems(problems)
        return entries

    @field_validator("max_body_mb", mode="before")
    @classmethod
    def _max_body(cls, value: object) -> object:
        lo, hi = MAX_BODY_MB
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise Problems.one(f"must be a whole number from {lo} to {hi}")
        return value

    # Days a value replaced by a rotation or removal stays redacted in responses (SPEC §5).
    retired_redact_days: int = 30

    @field_validator("retired_redact_days", mode="before")
    @classmethod
    def _retired_days(cls, value: object) -> object:
        lo, hi = RETIRED_REDACT_DAYS
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise Problems.one(f"must be a whole number of days from {lo} to {hi} "
                               "(0 stops redacting replaced values)")
        return value


class AgentSettings(Model):
    """``[agent]``: what `vaultproxy env`/`exec` give agents. ``extra_ca`` = PEM files
    (relative to the home) appended to the agents' CA bundle, e.g. a private index's CA."""

    extra_ca: tuple[str, ...] = ()

    @field_validator("extra_ca", mode="before")
    @classmethod
    def _extra_ca(cls, value: object, info: ValidationInfo) -> object:
        try:
            files = str_list(value)
        except TypeProblem:
            raise TypeProblem.one("must be a list of file names") from None
        assert isinstance(files, tuple)
        problems, base = [], base_dir(info)
        for j, name in enumerate(files):
            if not name:
                problems.append((f"[{j}]", "must not be empty"))
            elif base is not None:
                try:
                    rules.check_ca_file(base / name)
                except RuleViolation as e:
                    problems.append((f"[{j}]", str(e)))
        if problems:
            raise Problems(problems)
        return files

    # The sandbox (SPEC §7): more variables passed, more writable paths, more hidden paths.
    keep_env: tuple[str, ...] = ()
    write: tuple[str, ...] = ()
    hide: tuple[str, ...] = ()

    @field_validator("keep_env", mode="before")
    @classmethod
    def _keep_env(cls, value: object) -> object:
        names = _list_of(value, "variable names")
        bad = [(f"[{j}]", "is not an environment variable name (e.g. \"GOPATH\")")
               for j, n in enumerate(names) if not _VAR_NAME_RE.fullmatch(n)]
        bad += [(f"[{j}]", "is never passed to an agent (vaultproxy's own, or routes around "
                 "the proxy)") for j, n in enumerate(names)
                if n.startswith("VAULTPROXY_") or n.upper() in ("ALL_PROXY", "NO_PROXY")]
        if bad:
            raise Problems(bad)
        return names

    @field_validator("write", "hide", mode="before")
    @classmethod
    def _paths(cls, value: object) -> object:
        paths = _list_of(value, "paths")
        bad = [(f"[{j}]", "must be an absolute path or start with ~/")
               for j, p in enumerate(paths) if not p.startswith(("/", "~/"))]
        if bad:
            raise Problems(bad)
        return paths


_VAR_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _list_of(value: object, what: str) -> tuple[str, ...]:
    try:
        items = str_list(value)
    except TypeProblem:
        raise TypeProblem.one(f"must be a list of {what}") from None
    assert isinstance(items, tuple)
    return items


def _sources(value: object) -> object:
    if isinstance(value, Sequence) and not isinstance(value, str | bytes) and all(
        isinstance(s, Mapping | SourceConfig) for s in value
    ):
        return tuple(value)
    raise TypeProblem.one("must be an array of tables ([[source]])")


def _services(value: object) -> object:
    if isinstance(value, Sequence) and not isinstance(value, str | bytes) and all(
        isinstance(s, Mapping | Service) for s in value
    ):
        return tuple(value)
    raise TypeProblem.one("must be an array of tables ([[service]])")


class Config(Model):
    proxy: ProxySettings = ProxySettings()
    agent: AgentSettings = AgentSettings()
    health: HealthSettings = HealthSettings()
    audit: AuditSettings = AuditSettings()  # [audit] (config/audit.py)
    telemetry: TelemetrySettings = TelemetrySettings()  # [telemetry] (config/audit.py)
    mtls: MtlsSettings = MtlsSettings()  # [mtls] (config/mtls.py): `run --mtls-listen`
    service: Annotated[tuple[Service, ...], BeforeValidator(_services)] = ()
    source: Annotated[tuple[SourceConfig, ...], BeforeValidator(_sources)] = ()  # SPEC §9
    approvals: access.ApprovalSettings = access.ApprovalSettings()  # SPEC §10
    honeytoken: Annotated[
        tuple[access.Honeytoken, ...], BeforeValidator(access.honeytokens)
    ] = ()
    mcp_server: Annotated[  # SPEC §11 (config/mcp_servers.py)
        tuple[McpServer, ...], BeforeValidator(mcp_servers)
    ] = ()

    @model_validator(mode="after")
    def _across(self) -> Config:
        services = [s.model_dump(exclude_none=True) for s in self.service]
        problems = across(services) + source_problems(self.source, services)
        problems += access.honeytoken_problems(self.honeytoken, services)
        known = {s.placeholder_text for s in self.service} | {h.value for h in self.honeytoken}
        problems += placeholder_problems(self.mcp_server, known)
        if problems:
            raise Across(problems)
        return self

    @property
    def services(self) -> tuple[Service, ...]:
        return self.service

    @property
    def sources(self) -> tuple[SourceConfig, ...]:
        return self.source


# --- the one rule across services ---------------------------------------------------------


def _facts(raw: object) -> dict[str, Any]:
    """What the cross-service rule needs from one service table, taking only the parts that
    are valid on their own (so a file with other problems still gets these reported)."""
    out: dict[str, Any] = {"endpoints": []}
    if not isinstance(raw, Mapping):
        return out
    name = raw.get("name")
    if isinstance(name, str) and rules.NAME_RE.match(name):
        out["name"] = name
    hosts = raw.get("hosts")
    if isinstance(hosts, Sequence) and not isinstance(hosts, str | bytes):
        for j, value in enumerate(hosts):
            try:
                spec = rules.parse_host(str(value))
            except RuleViolation:
                continue
            key = (spec.host, spec.port, spec.wildcard)
            if key not in [k for _, k in out["endpoints"]]:
                out["endpoints"].append((j, key))
    env = raw.get("env")
    if isinstance(env, str) and _passes(rules.check_env, env):
        out["env"] = env
    placeholder = raw.get("placeholder")
    if isinstance(placeholder, str):
        if _passes(rules.check_placeholder, placeholder, out.get("name")):
            out["placeholder"] = placeholder
    elif "placeholder" not in raw and "name" in out:
        out["placeholder"] = rules.default_placeholder(out["name"])
        out["default_placeholder"] = True
    return out


def _passes(check: Any, *args: Any) -> bool:
    try:
        check(*args)
    except RuleViolation:
        return False
    return True


def across(services: object) -> list[tuple[str, str]]:
    """Unique names, host:port, env vars and placeholders (no placeholder inside another)."""
    if not isinstance(services, Sequence) or isinstance(services, str | bytes):
        return []
    problems: list[tuple[str, str]] = []
    names: dict[str, int] = {}
    endpoints: dict[tuple[str, int, bool], int] = {}
    envs: dict[str, int] = {}
    placeholders: list[tuple[int, str]] = []
    for i, raw in enumerate(services):
        f, p = _facts(raw), f"service[{i}]"
        placeholder = f.get("placeholder")
        if "name" in f:
            if f["name"] in names:
                problems.append((f"{p}.name", f"already used by service[{names[f['name']]}]"))
                if f.get("default_placeholder"):  # already reported as a duplicate name
                    placeholder = None
            names.setdefault(f["name"], i)
        for j, key in f["endpoints"]:
            if key in endpoints and endpoints[key] != i:
                problems.append((f"{p}.hosts[{j}]",
                                 f"host and port already served by service[{endpoints[key]}]"))
            endpoints.setdefault(key, i)
        if "env" in f:
            if f["env"] in envs:
                problems.append((f"{p}.env", f"already used by service[{envs[f['env']]}]"))
            envs.setdefault(f["env"], i)
        if placeholder is not None:
            for other, text in placeholders:
                if text == placeholder:
                    problems.append((f"{p}.placeholder",
                                     f"same as the placeholder of service[{other}]"))
                elif text in placeholder or placeholder in text:
                    problems.append((f"{p}.placeholder", f"overlaps the placeholder of "
                                     f"service[{other}] (one contains the other)"))
            placeholders.append((i, placeholder))
    return problems
