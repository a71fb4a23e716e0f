"""services.toml keys of path_prefix, aws_sigv4, google_service_account and github_app
(config/signed.py): each rule with a good and a bad input, exact ``path: message`` lines,
and no message that echoes a value."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import tomlkit

from vaultproxy.config import signed
from vaultproxy.config.load import parse_config
from vaultproxy.config.models import Config
from vaultproxy.core.references import secret_problems
from vaultproxy.errors import ConfigError
from vaultproxy.keystore import Entry
from vaultproxy.secret import Secret

GOOD: dict[str, dict[str, Any]] = {
    "path_prefix": {"path_prefix": "/bot{secret}"},
    "aws_sigv4": {"region": "us-east-1", "aws_service": "s3"},
    "google_service_account": {"scopes": ["https://www.googleapis.com/auth/cloud-platform"]},
    "github_app": {},
}


def svc(auth: str, **over: Any) -> dict[str, Any]:
    out = {"name": "svc", "hosts": ["api.example.com"], "mode": "host_inject", "auth": auth,
           **GOOD[auth], **over}
    return {k: v for k, v in out.items() if v is not None}


def parse(*services: dict[str, Any]) -> Config:
    return parse_config(tomlkit.dumps({"service": list(services)}), Path("/nonexistent"))


def problems(*services: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(*services)
    return info.value.problems


@pytest.mark.parametrize("auth", sorted(GOOD))
def test_good(auth: str) -> None:
    s = parse(svc(auth)).services[0]
    assert s.auth == auth


def test_github_app_api_url() -> None:
    s = parse(svc("github_app", api_url="https://ghe.example.com/api/v3")).services[0]
    assert s.api_url == "https://ghe.example.com/api/v3"


@pytest.mark.parametrize(
    ("auth", "key"),
    [("path_prefix", "path_prefix"), ("aws_sigv4", "region"), ("aws_sigv4", "aws_service"),
     ("google_service_account", "scopes")],
)
def test_required(auth: str, key: str) -> None:
    assert problems(svc(auth, **{key: None})) == [
        f'service "svc" (service[0]).{key}: is required when auth = "{auth}"'
    ]


@pytest.mark.parametrize(
    ("key", "value", "owner"),
    [("path_prefix", "/bot{secret}", "path_prefix"), ("region", "us-east-1", "aws_sigv4"),
     ("scopes", ["x"], "google_service_account"), ("api_url", "https://a.example", "github_app")],
)
def test_only_with_its_auth(key: str, value: Any, owner: str) -> None:
    s = {"name": "svc", "hosts": ["api.example.com"], "mode": "host_inject", "auth": "bearer",
         key: value}
    assert problems(s) == [f'service "svc" (service[0]).{key}: only allowed with auth = "{owner}"']


SECRETISH = "vpcanary_notavalue"


@pytest.mark.parametrize(
    ("over", "line"),
    [
        ({"path_prefix": f"/bot/{SECRETISH}"}, "service \"svc\" (service[0]).path_prefix: must "
                                               "hold {secret} "
         "exactly once"),
        ({"path_prefix": "/bot{secret}{secret}"}, "service \"svc\" (service[0]).path_prefix: must "
                                                  "hold {secret} "
         "exactly once"),
        ({"path_prefix": f"bot{{secret}}{SECRETISH}"}, "service \"svc\" (service[0]).path_prefix: "
                                                       "must start "
         "with '/' and hold only path characters (no '?', '#', '%', spaces or braces besides "
         "{secret})"),
        ({"path_prefix": f"/bot{{secret}}?{SECRETISH}"}, None),
        ({"path_prefix": "/bot{secret}%2F"}, None),
        ({"path_prefix": "/b ot{secret}"}, None),
    ],
)
def test_path_prefix_rules(over: dict[str, Any], line: str | None) -> None:
    got = problems(svc("path_prefix", **over))
    assert len(got) == 1 and got[0].startswith("service \"svc\" (service[0]).path_prefix: ")
    if line is not None:
        assert got == [line]
    assert SECRETISH not in got[0]


@pytest.mark.parametrize(
    ("key", "value"),
    [("region", "US-EAST-1"), ("region", "us/east"), ("aws_service", "s3/../x"),
     ("aws_service", ""), ("region", "-x")],
)
def test_aws_names(key: str, value: str) -> None:
    assert problems(svc("aws_sigv4", **{key: value})) == [
        f"service \"svc\" (service[0]).{key}: must be 1-64 characters of a-z, 0-9 and '-' (e.g. "
         "us-east-1, s3)"
    ]


@pytest.mark.parametrize("scopes", [[], ["two scopes"], ['quo"te'], [""]])
def test_scopes(scopes: list[str]) -> None:
    got = problems(svc("google_service_account", scopes=scopes))
    assert len(got) == 1 and got[0].startswith("service \"svc\" (service[0]).scopes: ")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://api.github.com", "must be an https:// URL"),
        ("api.github.com", "must be an https:// URL"),
        ("https://u:p@api.github.com", "must have no query, fragment or credentials"),
        ("https://api.github.com/?x=1", "must have no query, fragment or credentials"),
        ("https://*.github.com", "host: wildcards are not allowed here"),
    ],
)
def test_api_url(url: str, message: str) -> None:
    assert problems(svc("github_app", api_url=url)) == [
        f'service "svc" (service[0]).api_url: {message}']


@pytest.mark.parametrize("auth", sorted(signed.HOST_INJECT_ONLY))
def test_signed_types_need_host_inject(auth: str) -> None:
    assert problems(svc(auth, mode="placeholder")) == [
        f'service "svc" (service[0]).auth: auth = "{auth}" needs mode = "host_inject"'
    ]


def test_aws_sigv4_without_botocore(monkeypatch: pytest.MonkeyPatch) -> None:
    real = signed.importlib.util.find_spec
    monkeypatch.setattr(signed.importlib.util, "find_spec",
                        lambda name, *a: None if name == "botocore" else real(name, *a))
    assert problems(svc("aws_sigv4")) == [
        "service \"svc\" (service[0]).auth: auth = \"aws_sigv4\" needs botocore; install it with "
        "pip install 'vaultproxy[aws]'"
    ]


class FakeKeystore:
    """names()/get() over plain entries: core/references.py needs nothing else."""

    def __init__(self, entries: dict[str, Entry]) -> None:
        self.entries = entries

    def names(self) -> list[str]:
        return list(self.entries)

    def get(self, name: str) -> Entry | None:
        return self.entries.get(name)


@pytest.mark.parametrize(
    ("auth", "fields", "missing"),
    [
        ("aws_sigv4", {"access_key_id"}, "secret_access_key"),
        ("google_service_account", {"other"}, "json"),
        ("github_app", {"app_id", "private_key"}, "installation_id"),
    ],
)
def test_check_names_missing_keystore_fields(auth: str, fields: set[str], missing: str) -> None:
    cfg = parse(svc(auth))
    entry = Entry(name="svc", value=None, fields={f: Secret("v") for f in fields})
    lines = [p.line for p in secret_problems(cfg, FakeKeystore({"svc": entry}))]  # type: ignore[arg-type]
    assert len(lines) == 1
    assert lines[0].startswith(
        f'service "svc" (service[0]).secret: keystore entry "svc" lacks field(s) {missing}')
    full = {f: Secret("v") for f in signed.FIELDS[auth]}
    ok = secret_problems(cfg, FakeKeystore({"svc": Entry(name="svc", value=None, fields=full)}))  # type: ignore[arg-type]
    assert ok == []


def test_path_prefix_needs_a_value() -> None:
    cfg = parse(svc("path_prefix"))
    lines = [p.line for p in secret_problems(
        cfg, FakeKeystore({"svc": Entry(name="svc", value=None, fields={"x": Secret("v")})}))]  # type: ignore[arg-type]
    assert lines == ['service "svc" (service[0]).secret: keystore entry "svc" has no value '
                     '(only fields); '
                     'auth = "path_prefix" needs a value']


def test_minters_and_check_agree_on_fields() -> None:
    """config/signed.py (what `check` reports) and the minters' own NEEDS name the same."""
    from vaultproxy.mint.base import NEEDS

    for auth in ("google_service_account", "github_app"):
        assert NEEDS[auth] == signed.FIELDS[auth]
