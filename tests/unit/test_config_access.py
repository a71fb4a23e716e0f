"""services.toml keys of SPEC §10: rules, default_action, rate_limit, [approvals],
[[honeytoken]] -- accepted shapes and the problems named (never echoing a value)."""

from __future__ import annotations

import pytest

from vaultproxy.config.load import parse_config
from vaultproxy.errors import ConfigError

SERVICE = """
[[service]]
name = "gh"
hosts = ["api.github.com"]
mode = "host_inject"
auth = "bearer"
env = "GH_TOKEN"
"""


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as e:
        parse_config(text, None)
    return e.value.problems


def test_accepts_the_spec_example() -> None:
    cfg = parse_config(SERVICE + """
rules = [
  { method = "GET",  path = "/repos/*", action = "allow" },
  { method = "*",    path = "/repos/*/actions/secrets*", action = "deny" },
  { method = "post", path = "*", action = "approve" },
]
default_action = "allow"
rate_limit = "120/min"

[approvals]
hold_seconds = 60
grant_seconds = 600
notify_command = ["notify-send", "vaultproxy"]

[[honeytoken]]
name = "aws-prod"
env = "AWS_SECRET_ACCESS_KEY"
""", None)
    svc = cfg.services[0]
    assert [r.method for r in svc.request_rules] == ["GET", "*", "POST"]
    assert svc.rate_limit == "120/min"
    assert cfg.approvals.notify_command == ("notify-send", "vaultproxy")
    assert cfg.honeytoken[0].value == "__vault.aws-prod__"


@pytest.mark.parametrize(("extra", "expected"), [
    ('rules = [{ method = "G ET", path = "/x", action = "allow" }]',
     'service "gh" (service[0]).rules[0].method: must be an HTTP method (letters only) or "*"'),
    ('rules = [{ method = "GET", path = "x", action = "allow" }]',
     'service "gh" (service[0]).rules[0].path: must start with "/" or "*" (it matches the '
     'request path)'),
    ('rules = [{ method = "GET", path = "/x", action = "permit" }]',
     'service "gh" (service[0]).rules[0].action: must be one of "allow", "approve" or "deny"'),
    ('rules = "allow"', "service \"gh\" (service[0]).rules: must be a list of tables"),
    ('default_action = "maybe"', 'service "gh" (service[0]).default_action: must be one of '
     '"allow", "approve" or "deny"'),
    ('rate_limit = "120/fortnight"',
     "service \"gh\" (service[0]).rate_limit: the unit must be one of"),
    ("rate_limit = 120", 'service "gh" (service[0]).rate_limit: must be a string like "120/min"'),
])
def test_service_keys_refused_with_a_named_problem(extra: str, expected: str) -> None:
    found = problems(SERVICE + extra + "\n")
    assert any(p.startswith(expected) for p in found), found


@pytest.mark.parametrize(("table", "expected"), [
    ("[approvals]\nhold_seconds = 0", "approvals.hold_seconds: must be a number of seconds"),
    ("[approvals]\ngrant_seconds = -1", "approvals.grant_seconds: must be a number of seconds"),
    ('[approvals]\nnotify_command = "notify-send x"', "approvals.notify_command: must be a list"),
    ("[approvals]\nnotify_command = []", "approvals.notify_command: must name a program"),
    ("[approvals]\nwhatever = 1", "approvals.whatever:"),
    ('[[honeytoken]]\nname = "gh"', "honeytoken[0].name: already used by a service"),
    ('[[honeytoken]]\nname = "d"\nenv = "GH_TOKEN"', "honeytoken[0].env: already used by a "
     "service"),
    ('[[honeytoken]]\nname = "d"\nplaceholder = "__vault.gh__"', "honeytoken[0].placeholder:"),
    ('[[honeytoken]]\nname = "d"\nenv = "PATH"', "honeytoken[0].env: is reserved"),
])
def test_tables_refused_with_a_named_problem(table: str, expected: str) -> None:
    found = problems(table + "\n" + SERVICE)
    assert any(p.startswith(expected) for p in found), found
