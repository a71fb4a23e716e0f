"""services.toml keys for request rules, approvals and honeytokens (SPEC §10).

```toml
[[service]]
rules = [{ method = "POST", path = "/repos/*", action = "approve" }]
default_action = "allow"          # allow | approve | deny
rate_limit = "120/min"            # per agent per service

[approvals]
hold_seconds = 60
grant_seconds = 600
notify_command = ["notify-send", "vaultproxy"]

[[honeytoken]]
name = "aws-prod"
env = "AWS_SECRET_ACCESS_KEY"
placeholder = "..."               # default "__vault.<name>__"
```
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal, get_args

from pydantic import BeforeValidator, field_validator

from vaultproxy.access.ratelimit import RateSyntax, parse_rate
from vaultproxy.access.rules import ACTIONS
from vaultproxy.config import rules
from vaultproxy.config.fields import Model, choice, rule, ruled, str_list
from vaultproxy.config.problems import Problems, TypeProblem

Action = Literal["allow", "approve", "deny"]
METHOD_RE = re.compile(r"^(\*|[A-Za-z]{1,20})$")
PATH_RE = re.compile(r"^[\x21-\x7e]{1,1024}$")  # visible ASCII, no spaces
HOLD_SECONDS = (1, 3600)
GRANT_SECONDS = (0, 7 * 86400)
MAX_RULES = 1000


class RuleSpec(Model):
    method: str
    path: str
    action: Action

    @field_validator("method")
    @classmethod
    def _method(cls, value: str) -> str:
        if not METHOD_RE.match(value):
            raise Problems.one('must be an HTTP method (letters only) or "*"')
        return value.upper()

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not PATH_RE.match(value):
            raise Problems.one("must be 1-1024 visible ASCII characters (no spaces)")
        if not value.startswith(("/", "*")):
            raise Problems.one('must start with "/" or "*" (it matches the request path)')
        return value

    @field_validator("action", mode="before")
    @classmethod
    def _action(cls, value: object) -> object:
        return choice(value, ACTIONS)


def _rules(value: object) -> object:
    if isinstance(value, Sequence) and not isinstance(value, str | bytes) and all(
        isinstance(r, Mapping | RuleSpec) for r in value
    ):
        if len(value) > MAX_RULES:
            raise Problems.one(f"at most {MAX_RULES} rules per service")
        return tuple(value)
    raise TypeProblem.one('must be a list of tables like { method = "GET", path = "/x/*", '
                          'action = "allow" }')


Rules = Annotated[tuple[RuleSpec, ...], BeforeValidator(_rules)]


def check_default_action(value: object) -> object:
    return choice(value, get_args(Action))


def check_rate_limit(value: object) -> object:
    if not isinstance(value, str):
        raise TypeProblem.one('must be a string like "120/min"')
    try:
        parse_rate(value)
    except RateSyntax as e:
        raise Problems.one(str(e)) from None
    return value


def _seconds(value: object, bounds: tuple[int, int]) -> object:
    lo, hi = bounds
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise Problems.one(f"must be a number of seconds from {lo} to {hi}")
    return value


class ApprovalSettings(Model):
    """``[approvals]``: how long a held request waits, how long an approval admits again,
    and whom to tell."""

    hold_seconds: float = 60
    grant_seconds: float = 600
    notify_command: tuple[str, ...] | None = None

    @field_validator("hold_seconds", mode="before")
    @classmethod
    def _hold(cls, value: object) -> object:
        return _seconds(value, HOLD_SECONDS)

    @field_validator("grant_seconds", mode="before")
    @classmethod
    def _grant(cls, value: object) -> object:
        return _seconds(value, GRANT_SECONDS)

    @field_validator("notify_command", mode="before")
    @classmethod
    def _notify(cls, value: object) -> object:
        try:
            argv = str_list(value)
        except TypeProblem:
            raise TypeProblem.one('must be a list of strings, e.g. ["notify-send", '
                                  '"vaultproxy"]') from None
        assert isinstance(argv, tuple)
        if not argv or not argv[0]:
            raise Problems.one("must name a program first (it is run directly, not by a shell)")
        return argv


class Honeytoken(Model):
    """A decoy credential: exported by `env`/`exec` like a real placeholder; any use of it in
    a request is refused (403 honeytoken), audited and notified."""

    name: Annotated[str, ruled(rules.check_name)]
    env: Annotated[str, ruled(rules.check_env)] | None = None
    placeholder: str | None = None

    @field_validator("placeholder")
    @classmethod
    def _placeholder(cls, value: str, info: Any) -> str:
        rule(rules.check_placeholder, value, info.data.get("name"))
        return value

    @property
    def value(self) -> str:
        return self.placeholder or rules.default_placeholder(self.name)


def honeytokens(value: object) -> object:
    if isinstance(value, Sequence) and not isinstance(value, str | bytes) and all(
        isinstance(h, Mapping | Honeytoken) for h in value
    ):
        return tuple(value)
    raise TypeProblem.one("must be an array of tables ([[honeytoken]])")


def honeytoken_problems(tokens: Sequence[Honeytoken],
                        services: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """Names, env vars and values unique among honeytokens and services; a decoy value must
    not contain, or be contained in, any service placeholder (either would be ambiguous)."""
    problems: list[tuple[str, str]] = []
    names = {s.get("name") for s in services}
    envs = {s.get("env") for s in services if s.get("env")}
    phs = [s.get("placeholder") or rules.default_placeholder(str(s.get("name")))
           for s in services]
    seen_names: dict[str, int] = {}
    seen_env: dict[str, int] = {}
    seen_values: list[tuple[int, str]] = []
    for i, h in enumerate(tokens):
        p = f"honeytoken[{i}]"
        if h.name in names:
            problems.append((f"{p}.name", "already used by a service"))
        elif h.name in seen_names:
            problems.append((f"{p}.name", f"already used by honeytoken[{seen_names[h.name]}]"))
        seen_names.setdefault(h.name, i)
        if h.env is not None:
            if h.env in envs:
                problems.append((f"{p}.env", "already used by a service"))
            elif h.env in seen_env:
                problems.append((f"{p}.env", f"already used by honeytoken[{seen_env[h.env]}]"))
            seen_env.setdefault(h.env, i)
        value = h.value
        if any(value in ph or ph in value for ph in phs):
            problems.append((f"{p}.placeholder", "overlaps a service's placeholder"))
        for j, other in seen_values:
            if value in other or other in value:
                problems.append((f"{p}.placeholder", f"overlaps honeytoken[{j}]"))
        seen_values.append((i, value))
    return problems
