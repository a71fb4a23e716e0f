"""Validate plain services.toml data and collect EVERY problem as ``path: message``.

Works on plain Python data (what TOML decodes to) so it can report a problem in one
service and carry on with the next, then check the rules that span services.
Messages name the field and the rule; they never contain the offending value.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509

from vaultproxy import policy
from vaultproxy.config import rules
from vaultproxy.config.health import check_health
from vaultproxy.config.rules import HostSpec, RuleViolation

SERVICE_STR = ("name", "mode", "auth", "secret", "header_name", "prefix", "param_name",
               "placeholder", "env", "connect_to", "ca_cert")
SERVICE_BOOL = ("allow_private", "allow_loopback", "insecure_tls", "allow_range")
SERVICE_LIST = ("hosts", "substitute_in")
SERVICE_REQUIRED = ("name", "hosts", "mode", "auth")
SERVICE_KEYS = frozenset(SERVICE_STR + SERVICE_BOOL + SERVICE_LIST)
PROXY_KEYS = frozenset({"egress", "passthrough_allow", "max_body_mb", "require_agent_auth"})
TOP_KEYS = frozenset({"proxy", "agent", "service", "health"})
AGENT_KEYS = frozenset({"extra_ca"})

# auth type -> the keys that belong to it
AUTH_KEYS = {"header_name": ("header",), "prefix": ("header",), "param_name": ("query_param",)}


@dataclass
class _Facts:
    """What the cross-service checks need from one valid-enough service."""

    index: int
    name: str | None = None
    endpoints: list[tuple[int, tuple[str, int, bool]]] = field(default_factory=list)
    specs: list[tuple[int, HostSpec]] = field(default_factory=list)
    placeholder: str | None = None
    placeholder_is_default: bool = False
    env: str | None = None


class _Collector:
    def __init__(self) -> None:
        self.problems: list[str] = []
        self.paths: set[str] = set()

    def add(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}")
        self.paths.add(path)

    def rule(self, path: str, check: Callable[..., object], *args: object) -> bool:
        try:
            check(*args)
        except RuleViolation as e:
            self.add(path, str(e))
            return False
        return True


def _typed(c: _Collector, table: Mapping[str, object], path: str) -> dict[str, object]:
    """Keep the keys with the right type; report unknown keys and wrong types."""
    out: dict[str, object] = {}
    for key, value in table.items():
        where = f"{path}.{key}"
        if key not in SERVICE_KEYS:
            c.add(where, "unknown key")
        elif key in SERVICE_STR and not isinstance(value, str):
            c.add(where, "must be a string")
        elif key in SERVICE_BOOL and not isinstance(value, bool):
            c.add(where, "must be true or false")
        elif key in SERVICE_LIST and not _is_str_list(value):
            c.add(where, "must be a list of strings")
        else:
            out[key] = value
    for key in SERVICE_REQUIRED:
        if key not in table:
            c.add(f"{path}.{key}", "is required")
    return out


def _is_str_list(value: object) -> bool:
    return (isinstance(value, Sequence) and not isinstance(value, str | bytes)
            and all(isinstance(v, str) for v in value))


def check_service(raw: Mapping[str, object], path: str, base_dir: Path | None,
                  c: _Collector, index: int = 0) -> _Facts:
    """Check one service table; ``base_dir`` None skips the ca_cert file checks."""
    s = _typed(c, raw, path)
    facts = _Facts(index)
    name = s.get("name")
    if isinstance(name, str) and c.rule(f"{path}.name", rules.check_name, name):
        facts.name = name
    mode = s.get("mode")
    if isinstance(mode, str) and not c.rule(f"{path}.mode", rules.check_choice, mode, rules.MODES):
        mode = None
    auth = s.get("auth")
    if isinstance(auth, str) and not c.rule(f"{path}.auth", rules.check_choice, auth, rules.AUTHS):
        auth = None
    _check_hosts(c, s, path, facts)
    _check_auth_fields(c, s, path, auth)
    secret = s.get("secret")
    if isinstance(secret, str):
        c.rule(f"{path}.secret", rules.check_secret_name, secret)
    _check_placeholder(c, s, path, facts, mode)
    env = s.get("env")
    if isinstance(env, str) and c.rule(f"{path}.env", rules.check_env, env):
        facts.env = env
    connect_to = s.get("connect_to")
    address_ctx = policy.AddressContext(
        allow_private=s.get("allow_private") is True,
        allow_loopback=s.get("allow_loopback") is True,
    )
    if isinstance(connect_to, str):
        c.rule(f"{path}.connect_to", _check_connect_to, connect_to, address_ctx)
    for j, spec in facts.specs:
        if spec.is_ip:
            c.rule(f"{path}.hosts[{j}]", _check_address, spec, address_ctx)
    _check_tls(c, s, path, base_dir)
    return facts


def _check_connect_to(value: str, ctx: policy.AddressContext) -> None:
    _check_address(rules.parse_host(value, allow_wildcard=False, require_port=True), ctx)


def _check_address(spec: HostSpec, ctx: policy.AddressContext) -> None:
    """The load-time address policy (SPEC §5) for a configured IP or dialled name."""
    verdict = policy.check_static(spec.host, spec.port, ctx)
    if verdict.allowed:
        return
    hint = ""
    if verdict.reason.startswith("loopback") and not ctx.allow_loopback:
        hint = "; set allow_loopback = true to permit it"
    elif verdict.reason.startswith(_PRIVATE_REASONS) and not ctx.allow_private:
        hint = "; set allow_private = true to permit it"
    raise RuleViolation(
        f"denied by the address policy: {policy.with_article(verdict.reason)}{hint}"
    )


_PRIVATE_REASONS = ("private", "carrier-grade NAT", "unique-local", "local-use NAT64")


def _check_hosts(c: _Collector, s: Mapping[str, object], path: str, facts: _Facts) -> None:
    hosts = s.get("hosts")
    if not isinstance(hosts, Sequence) or isinstance(hosts, str):
        return
    if not hosts:
        c.add(f"{path}.hosts", "must list at least one host")
    seen: dict[tuple[str, int, bool], int] = {}
    for j, value in enumerate(hosts):
        where = f"{path}.hosts[{j}]"
        try:
            spec = rules.parse_host(str(value))
        except RuleViolation as e:
            c.add(where, str(e))
            continue
        key = (spec.host, spec.port, spec.wildcard)
        if key in seen:
            c.add(where, f"same host and port as hosts[{seen[key]}]")
            continue
        seen[key] = j
        facts.endpoints.append((j, key))
        facts.specs.append((j, spec))


def _check_auth_fields(c: _Collector, s: Mapping[str, object], path: str,
                       auth: object) -> None:
    for key, auths in AUTH_KEYS.items():
        if key in s and isinstance(auth, str) and auth not in auths:
            c.add(f"{path}.{key}", f'only allowed with auth = "{auths[0]}"')
    header_name, prefix, param_name = s.get("header_name"), s.get("prefix"), s.get("param_name")
    if auth == "header":
        if header_name is None and f"{path}.header_name" not in c.paths:
            c.add(f"{path}.header_name", 'is required when auth = "header"')
        elif isinstance(header_name, str):
            c.rule(f"{path}.header_name", rules.check_header_name, header_name)
        if isinstance(prefix, str):
            c.rule(f"{path}.prefix", rules.check_prefix, prefix)
    if auth == "query_param":
        if param_name is None and f"{path}.param_name" not in c.paths:
            c.add(f"{path}.param_name", 'is required when auth = "query_param"')
        elif isinstance(param_name, str):
            c.rule(f"{path}.param_name", rules.check_param_name, param_name)


def _check_placeholder(c: _Collector, s: Mapping[str, object], path: str, facts: _Facts,
                       mode: object) -> None:
    placeholder, name = s.get("placeholder"), facts.name
    if isinstance(placeholder, str):
        if c.rule(f"{path}.placeholder", rules.check_placeholder, placeholder, name):
            facts.placeholder = placeholder
    elif "placeholder" not in s and name is not None:
        facts.placeholder = rules.default_placeholder(name)
        facts.placeholder_is_default = True
    surfaces = s.get("substitute_in")
    if not isinstance(surfaces, Sequence) or isinstance(surfaces, str):
        return
    if isinstance(mode, str) and mode != "placeholder":
        c.add(f"{path}.substitute_in", 'only allowed with mode = "placeholder"')
        return
    if not surfaces:
        c.add(f"{path}.substitute_in", "must list at least one surface")
    seen: set[str] = set()
    for j, value in enumerate(surfaces):
        where = f"{path}.substitute_in[{j}]"
        if value not in rules.SURFACES:
            c.add(where, 'must be one of "auth", "header", "query", "path" or "body"')
        elif value in seen:
            c.add(where, "listed twice")
        seen.add(str(value))


def _check_tls(c: _Collector, s: Mapping[str, object], path: str,
               base_dir: Path | None) -> None:
    ca_cert = s.get("ca_cert")
    if "ca_cert" in s and s.get("insecure_tls") is True:
        c.add(f"{path}.insecure_tls", "cannot be combined with ca_cert (pick one)")
    if not isinstance(ca_cert, str):
        return
    if not ca_cert:
        c.add(f"{path}.ca_cert", "must not be empty")
        return
    if base_dir is None:
        return
    c.rule(f"{path}.ca_cert", check_ca_file, base_dir / ca_cert)


def check_ca_file(file: Path) -> None:
    if not file.is_file():
        raise RuleViolation("file not found (a relative path is resolved against the "
                            "vaultproxy home)")
    try:
        data = file.read_bytes()
    except OSError:
        raise RuleViolation("file cannot be read") from None
    try:
        x509.load_pem_x509_certificates(data)
    except ValueError:
        raise RuleViolation("is not a PEM certificate file") from None


def check_proxy(raw: object, c: _Collector) -> None:
    if not isinstance(raw, Mapping):
        c.add("proxy", "must be a table ([proxy])")
        return
    for key in raw:
        if key not in PROXY_KEYS:
            c.add(f"proxy.{key}", "unknown key")
    egress = raw.get("egress")
    if "egress" in raw and (not isinstance(egress, str) or egress not in rules.EGRESS):
        c.add("proxy.egress", 'must be "passthrough" or "block"')
    if "passthrough_allow" in raw:
        allow = raw["passthrough_allow"]
        if not _is_str_list(allow):
            c.add("proxy.passthrough_allow", "must be a list of strings")
        else:
            assert isinstance(allow, Sequence)
            for j, entry in enumerate(allow):
                c.rule(f"proxy.passthrough_allow[{j}]", rules.parse_allow_entry, entry)
    lo, hi = rules.MAX_BODY_MB
    mb = raw.get("max_body_mb")
    if "max_body_mb" in raw and (isinstance(mb, bool) or not isinstance(mb, int)
                                 or not lo <= mb <= hi):
        c.add("proxy.max_body_mb", f"must be a whole number from {lo} to {hi}")
    if "require_agent_auth" in raw and not isinstance(raw["require_agent_auth"], bool):
        c.add("proxy.require_agent_auth", "must be true or false")


def check_agent(raw: object, c: _Collector, base_dir: Path | None) -> None:
    """``[agent]``: what `vaultproxy env`/`exec` give agents. ``extra_ca`` = PEM files
    (relative to the home) appended to the agents' CA bundle, e.g. a private index's CA."""
    if not isinstance(raw, Mapping):
        c.add("agent", "must be a table ([agent])")
        return
    for key in raw:
        if key not in AGENT_KEYS:
            c.add(f"agent.{key}", "unknown key")
    if "extra_ca" not in raw:
        return
    files = raw["extra_ca"]
    if not _is_str_list(files):
        c.add("agent.extra_ca", "must be a list of file names")
        return
    assert isinstance(files, Sequence)
    for j, name in enumerate(files):
        if not name:
            c.add(f"agent.extra_ca[{j}]", "must not be empty")
        elif base_dir is not None:
            c.rule(f"agent.extra_ca[{j}]", check_ca_file, base_dir / name)


def check_across(all_facts: list[_Facts], c: _Collector) -> None:
    """Rules that span services: unique names, host:port, placeholders and env vars."""
    names: dict[str, int] = {}
    endpoints: dict[tuple[str, int, bool], int] = {}
    envs: dict[str, int] = {}
    placeholders: list[tuple[int, str]] = []
    for f in all_facts:
        p = f"service[{f.index}]"
        if f.name is not None:
            if f.name in names:
                c.add(f"{p}.name", f"already used by service[{names[f.name]}]")
                if f.placeholder_is_default:  # already reported as a duplicate name
                    f.placeholder = None
            names.setdefault(f.name, f.index)
        for j, key in f.endpoints:
            if key in endpoints and endpoints[key] != f.index:
                c.add(f"{p}.hosts[{j}]", f"host and port already served by "
                                         f"service[{endpoints[key]}]")
            endpoints.setdefault(key, f.index)
        if f.env is not None:
            if f.env in envs:
                c.add(f"{p}.env", f"already used by service[{envs[f.env]}]")
            envs.setdefault(f.env, f.index)
        if f.placeholder is not None:
            for other, text in placeholders:
                if text == f.placeholder:
                    c.add(f"{p}.placeholder", f"same as the placeholder of service[{other}]")
                elif text in f.placeholder or f.placeholder in text:
                    c.add(f"{p}.placeholder", f"overlaps the placeholder of service[{other}] "
                                              "(one contains the other)")
            placeholders.append((f.index, f.placeholder))


def validate(data: Mapping[str, object], base_dir: Path | None) -> list[str]:
    """Every problem in a decoded services.toml, in file order; [] when it is valid."""
    c = _Collector()
    for key in data:
        if key not in TOP_KEYS:
            c.add(key, "unknown key")
    if "proxy" in data:
        check_proxy(data["proxy"], c)
    if "agent" in data:
        check_agent(data["agent"], c, base_dir)
    if "health" in data:
        check_health(data["health"], c, base_dir, check_ca_file)
    services = data.get("service", [])
    if not isinstance(services, Sequence) or isinstance(services, str) or not all(
        isinstance(s, Mapping) for s in services
    ):
        c.add("service", "must be an array of tables ([[service]])")
        return c.problems
    facts = [check_service(s, f"service[{i}]", base_dir, c, i) for i, s in enumerate(services)]
    check_across(facts, c)
    return c.problems
