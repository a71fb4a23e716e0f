"""services.toml rules (SPEC §4): each rule with a good and a bad input, exact `path:` lines."""

from __future__ import annotations

import datetime
import re
from pathlib import Path
from typing import Any

import pytest
import tomlkit
import trustme

from vaultproxy.config.example import EXAMPLE
from vaultproxy.config.load import load_config, parse_config
from vaultproxy.config.models import Config, Service
from vaultproxy.errors import ConfigError

BASE: dict[str, Any] = {
    "name": "svc", "hosts": ["api.example.com"], "mode": "placeholder", "auth": "bearer",
}


def toml_of(*services: dict[str, Any], proxy: dict[str, Any] | None = None,
            **top: Any) -> str:
    doc: dict[str, Any] = dict(top)
    if proxy is not None:
        doc["proxy"] = proxy
    if services:
        doc["service"] = list(services)
    return tomlkit.dumps(doc)


def svc(**over: Any) -> dict[str, Any]:
    out = {**BASE, **over}
    return {k: v for k, v in out.items() if v is not None}


def problems(text: str, base: Path | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, base or Path("/nonexistent"))
    return info.value.problems


def ok(text: str, base: Path | None = None) -> Config:
    return parse_config(text, base or Path("/nonexistent"))


# --- good inputs ----------------------------------------------------------------------

GOOD_SERVICES = [
    svc(),
    svc(name="a"),
    svc(name="a0_b-c"),
    svc(name="x" * 64),
    svc(hosts=["api.example.com:8443", "*.example.org", "*.example.org:8443"]),
    svc(hosts=["10.0.0.5", "10.0.0.5:8443", "[::1]", "[2606:4700::1111]:8443"],
        allow_private=True, allow_loopback=True),
    svc(hosts=["8.8.8.8", "[2606:4700::1111]:8443"]),
    svc(hosts=["localhost:8080"]),
    svc(hosts=["xn--bcher-kva.example"]),
    svc(mode="host_inject"),
    svc(auth="header", header_name="X-Api-Key"),
    svc(auth="header", header_name="Authorization", prefix="Token "),
    svc(auth="query_param", param_name="api_key"),
    svc(auth="basic"),
    svc(secret="other-entry"),
    svc(placeholder="MY_PLACEHOLDER.v1"),
    svc(placeholder="__vault.svc__"),
    svc(substitute_in=["header", "query", "path", "body"]),
    svc(substitute_in=["body"]),
    svc(env="OPENAI_API_KEY"),
    svc(env="_X1"),
    svc(connect_to="10.0.0.5:8443", allow_private=True),
    svc(connect_to="upstream.internal:443"),
    svc(connect_to="[fd00::5]:8443", allow_private=True),
    svc(connect_to="127.0.0.1:8443", allow_loopback=True),
    svc(connect_to="93.184.215.14:443"),
    svc(allow_private=True, allow_loopback=True),
    svc(insecure_tls=True),
    svc(insecure_tls=False, ca_cert=None),
]


@pytest.mark.parametrize("service", GOOD_SERVICES, ids=lambda s: ",".join(sorted(s)))
def test_good_service(service: dict[str, Any]) -> None:
    cfg = ok(toml_of(service))
    assert cfg.services[0].name == service["name"]


GOOD_PROXY = [
    {},
    {"egress": "passthrough"},
    {"egress": "block"},
    {"passthrough_allow": ["10.1.0.0/16", "127.0.0.1:8080", "[::1]:9000", "fd00::/8",
                           "192.168.1.7"]},
    {"max_body_mb": 1},
    {"max_body_mb": 4096},
    {"require_agent_auth": True},
]


@pytest.mark.parametrize("proxy", GOOD_PROXY, ids=str)
def test_good_proxy(proxy: dict[str, Any]) -> None:
    ok(toml_of(svc(), proxy=proxy))


def test_empty_file_is_valid() -> None:
    cfg = ok("")
    assert cfg.services == ()
    assert cfg.proxy.egress == "passthrough"
    assert cfg.proxy.max_body_mb == 32


def test_example_is_valid_and_documents_every_key() -> None:
    cfg = ok(EXAMPLE)
    assert cfg.services == ()
    keys = [f.alias or k for k, f in Service.model_fields.items()]  # "rules" (an alias)
    for key in keys + ["egress", "passthrough_allow", "max_body_mb",
                                               "require_agent_auth"]:
        assert key in EXAMPLE, key


def test_example_services_are_valid_when_uncommented(tmp_path: Path) -> None:
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "lab-ca.pem"))
    head, _, tail = EXAMPLE.partition("Uncomment and adapt.")
    lines = [head]
    for line in tail.splitlines():
        if re.match(r"# (\[\[service\]\]|\[\[source\]\]|[a-z_]+ = )", line):
            line = line[2:]
        lines.append(line)
    cfg = ok("\n".join(lines), tmp_path)
    assert [s.name for s in cfg.services] == [
        "openai", "anthropic", "maps", "lab-registry", "graph", "npm", "telegram", "s3",
        "gcs", "github",
    ]
    assert [s.name for s in cfg.sources] == ["bao"]


def test_defaults() -> None:
    s = ok(toml_of(svc(name="openai"))).services[0]
    assert s.secret_name == "openai"
    assert s.placeholder_text == "__vault.openai__"
    assert s.substitute_in == ("auth",)
    assert s.allow_range is False
    assert (s.allow_private, s.allow_loopback, s.insecure_tls) == (False, False, False)
    assert s.hosts == ("api.example.com",)
    s2 = ok(toml_of(svc(secret="x", placeholder="custom-ph-1"))).services[0]
    assert (s2.secret_name, s2.placeholder_text) == ("x", "custom-ph-1")


# --- bad inputs: (service overrides, exact problem lines) ------------------------------

BAD_SERVICES: list[tuple[dict[str, Any], list[str]]] = [
    ({"name": "Upper"}, ["service[0].name: must be 1-64 characters of a-z, 0-9, '_' or '-', "
                         "starting with a letter or digit"]),
    ({"name": "-x"}, ["service[0].name: must be 1-64 characters of a-z, 0-9, '_' or '-', "
                      "starting with a letter or digit"]),
    ({"name": "x" * 65}, ["service[0].name: must be 1-64 characters of a-z, 0-9, '_' or '-', "
                          "starting with a letter or digit"]),
    ({"name": 5}, ["service[0].name: must be a string"]),
    ({"hosts": []}, ["service \"svc\" (service[0]).hosts: must list at least one host"]),
    ({"hosts": "api.example.com"}, ["service \"svc\" (service[0]).hosts: must be a list of "
                                    "strings"]),
    ({"hosts": ["ok.example.com", "*.*.example.com"]},
     ['service "svc" (service[0]).hosts[1]: wildcard may only be "*." followed by a domain']),
    ({"hosts": ["a.*.example.com"]},
     ['service "svc" (service[0]).hosts[0]: wildcard may only be "*." followed by a domain']),
    ({"hosts": ["*example.com"]},
     ['service "svc" (service[0]).hosts[0]: wildcard may only be "*." followed by a domain']),
    ({"hosts": ["*"]}, ['service "svc" (service[0]).hosts[0]: wildcard may only be "*." followed '
                        'by a domain']),
    ({"hosts": ["*.com"]},
     ['service "svc" (service[0]).hosts[0]: wildcard needs a domain of at least two labels after '
      '"*."']),
    ({"hosts": ["API.example.com"]}, ["service \"svc\" (service[0]).hosts[0]: must be lowercase"]),
    ({"hosts": ["api.example.com."]}, ["service \"svc\" (service[0]).hosts[0]: must not end with "
                                       "a dot"]),
    ({"hosts": ["bücher.example"]},
     ["service \"svc\" (service[0]).hosts[0]: must be ASCII; write internationalised names as "
      "punycode (xn--)"]),
    ({"hosts": ["a_b.example.com"]}, ["service \"svc\" (service[0]).hosts[0]: is not a valid DNS "
                                      "name"]),
    ({"hosts": ["-a.example.com"]}, ["service \"svc\" (service[0]).hosts[0]: is not a valid DNS "
                                     "name"]),
    ({"hosts": ["a" * 64 + ".com"]}, ["service \"svc\" (service[0]).hosts[0]: is not a valid DNS "
                                      "name"]),
    ({"hosts": ["1.2.3"]},
     ["service \"svc\" (service[0]).hosts[0]: is neither a valid DNS name nor a valid IP "
      "address"]),
    ({"hosts": ["999.1.1.1"]},
     ["service \"svc\" (service[0]).hosts[0]: is neither a valid DNS name nor a valid IP "
      "address"]),
    ({"hosts": ["api.example.com:0"]},
     ["service \"svc\" (service[0]).hosts[0]: port must be a number from 1 to 65535"]),
    ({"hosts": ["api.example.com:65536"]},
     ["service \"svc\" (service[0]).hosts[0]: port must be a number from 1 to 65535"]),
    ({"hosts": ["api.example.com:"]},
     ["service \"svc\" (service[0]).hosts[0]: port must be a number from 1 to 65535"]),
    ({"hosts": ["api.example.com:https"]},
     ["service \"svc\" (service[0]).hosts[0]: port must be a number from 1 to 65535"]),
    ({"hosts": ["::1"]}, ["service \"svc\" (service[0]).hosts[0]: IPv6 addresses must be written "
                          "in brackets, "
                          "as [addr] or [addr]:port"]),
    ({"hosts": ["[::g]:443"]}, ["service \"svc\" (service[0]).hosts[0]: is not a valid IPv6 "
                                "address"]),
    ({"hosts": ["[::1]x"]}, ["service \"svc\" (service[0]).hosts[0]: must be [ipv6] or "
                             "[ipv6]:port"]),
    ({"hosts": ["https://api.example.com"]},
     ["service \"svc\" (service[0]).hosts[0]: must be host or host:port, not a URL"]),
    ({"hosts": ["a b.com"]},
     ["service \"svc\" (service[0]).hosts[0]: must not contain whitespace or control characters"]),
    ({"hosts": [""]}, ["service \"svc\" (service[0]).hosts[0]: must not be empty"]),
    ({"hosts": [":443"]}, ["service \"svc\" (service[0]).hosts[0]: host must not be empty"]),
    ({"hosts": ["a.example.com", "a.example.com:443"]},
     ["service \"svc\" (service[0]).hosts[1]: same host and port as hosts[0]"]),
    ({"mode": "inject"}, ['service "svc" (service[0]).mode: must be "placeholder" or '
                          '"host_inject"']),
    ({"auth": "oauth"}, ['service "svc" (service[0]).auth: must be one of "bearer", "header", '
                         '"basic", '
                         '"query_param", "oauth2_refresh", "oauth2_client_credentials", '
                         '"session", "unifi_dual", "path_prefix", "aws_sigv4", '
                         '"google_service_account" or "github_app"']),
    ({"auth": "header"}, ['service "svc" (service[0]).header_name: is required when auth = '
                          '"header"']),
    ({"auth": "header", "header_name": "X Api"},
     ["service \"svc\" (service[0]).header_name: must be an HTTP header name (token characters, "
      "1-128 long)"]),
    ({"auth": "header", "header_name": "X-Key:"},
     ["service \"svc\" (service[0]).header_name: must be an HTTP header name (token characters, "
      "1-128 long)"]),
    ({"auth": "header", "header_name": "Host"},
     ["service \"svc\" (service[0]).header_name: names a header that frames or routes the "
      "request; "
      "pick another"]),
    ({"auth": "header", "header_name": "X-K", "prefix": "a\nb"},
     ["service \"svc\" (service[0]).prefix: must be 1-64 printable ASCII characters (no control "
      "characters)"]),
    ({"header_name": "X-Api-Key"}, ['service "svc" (service[0]).header_name: only allowed with '
                                    'auth = "header"']),
    ({"prefix": "Token "
                ""}, ['service "svc" (service[0]).prefix: only allowed with auth = "header"']),
    ({"auth": "basic", "param_name": "k"},
     ['service "svc" (service[0]).param_name: only allowed with auth = "query_param"']),
    ({"auth": "query_param"}, ['service "svc" (service[0]).param_name: is required when auth = '
                               '"query_param"']),
    ({"auth": "query_param", "param_name": "a&b"},
     ["service \"svc\" (service[0]).param_name: must be 1-128 characters of A-Z, a-z, 0-9, '.', "
      "'_', '~' or '-'"]),
    ({"auth": "query_param", "param_name": 3}, ["service \"svc\" (service[0]).param_name: must be "
                                                "a string"]),
    ({"secret": "Bad "
                "Name"}, ["service \"svc\" (service[0]).secret: must be 1-64 characters of a-z, "
                          "0-9, '_' "
                              "or '-', starting with a letter or digit"]),
    ({"placeholder": "short"},
     ["service \"svc\" (service[0]).placeholder: must be 8-128 characters of A-Z, a-z, 0-9, '.', "
      "'_' or '-'"]),
    ({"placeholder": "has space here"},
     ["service \"svc\" (service[0]).placeholder: must be 8-128 characters of A-Z, a-z, 0-9, '.', "
      "'_' or '-'"]),
    ({"placeholder": "x" * 129},
     ["service \"svc\" (service[0]).placeholder: must be 8-128 characters of A-Z, a-z, 0-9, '.', "
      "'_' or '-'"]),
    ({"placeholder": "__vault.other__"},
     ['service "svc" (service[0]).placeholder: a placeholder of the form "__vault.<name>__" must '
      'use this '
      "service's own name"]),
    ({"mode": "host_inject", "substitute_in": ["header"]},
     ['service "svc" (service[0]).substitute_in: only allowed with mode = "placeholder"']),
    ({"substitute_in": []}, ["service \"svc\" (service[0]).substitute_in: must list at least one "
                             "surface"]),
    ({"substitute_in": ["header", "cookie"]},
     ['service "svc" (service[0]).substitute_in[1]: must be one of "auth", "header", "query", '
      '"path" or "body"']),
    ({"substitute_in": ["body", "body"]}, ["service \"svc\" (service[0]).substitute_in[1]: listed "
                                           "twice"]),
    ({"env": "lower_case"}, ["service \"svc\" (service[0]).env: must be an environment variable "
                             "name: A-Z, 0-9 "
                             "and '_', not starting with a digit"]),
    ({"env": "1ABC"}, ["service \"svc\" (service[0]).env: must be an environment variable name: "
                       "A-Z, 0-9 "
                       "and '_', not starting with a digit"]),
    ({"env": "HTTPS_PROXY"},
     ["service \"svc\" (service[0]).env: is reserved (set by vaultproxy or used by the loader)"]),
    ({"env": "LD_PRELOAD"},
     ["service \"svc\" (service[0]).env: is reserved (set by vaultproxy or used by the loader)"]),
    ({"connect_to": "10.0.0.5"}, ["service \"svc\" (service[0]).connect_to: must include a port "
                                  "(host:port)"]),
    ({"connect_to": "10.0.0.5:0"},
     ["service \"svc\" (service[0]).connect_to: port must be a number from 1 to 65535"]),
    ({"connect_to": "*.example.com:443"},
     ["service \"svc\" (service[0]).connect_to: wildcards are not allowed here"]),
    ({"connect_to": "fd00::5:443"}, ["service \"svc\" (service[0]).connect_to: IPv6 addresses "
                                     "must be written in "
                                     "brackets, as [addr] or [addr]:port"]),
    ({"allow_private": "yes"}, ["service \"svc\" (service[0]).allow_private: must be true or "
                                "false"]),
    ({"allow_loopback": 1}, ["service \"svc\" (service[0]).allow_loopback: must be true or "
                             "false"]),
    ({"insecure_tls": "false"}, ["service \"svc\" (service[0]).insecure_tls: must be true or "
                                 "false"]),
    ({"ca_cert": "missing.pem"}, ["service \"svc\" (service[0]).ca_cert: file not found (a "
                                  "relative path is "
                                  "resolved against the vaultproxy home)"]),
    ({"ca_cert": ""}, ["service \"svc\" (service[0]).ca_cert: must not be empty"]),
    ({"bogus": 1}, ["service \"svc\" (service[0]).bogus: unknown key"]),
    ({"name": None}, ["service[0].name: is required"]),
    ({"hosts": None, "mode": None, "auth": None},
     ["service \"svc\" (service[0]).hosts: is "
      "required", "service \"svc\" (service[0]).mode: is required",
      "service \"svc\" (service[0]).auth: is required"]),
]


@pytest.mark.parametrize(("over", "expected"), BAD_SERVICES,
                         ids=[",".join(f"{k}" for k in o) for o, _ in BAD_SERVICES])
def test_bad_service(over: dict[str, Any], expected: list[str]) -> None:
    assert problems(toml_of(svc(**over))) == expected


BAD_PROXY: list[tuple[dict[str, Any], list[str]]] = [
    ({"egress": "allow"}, ['proxy.egress: must be "passthrough" or "block"']),
    ({"egress": 1}, ['proxy.egress: must be "passthrough" or "block"']),
    ({"passthrough_allow": "10.0.0.0/8"}, ["proxy.passthrough_allow: must be a list of strings"]),
    ({"passthrough_allow": ["10.0.0.1/8"]},
     ["proxy.passthrough_allow[0]: CIDR has host bits set (use the network address)"]),
    ({"passthrough_allow": ["10.0.0.0/8", "10.0.0.0/33"]},
     ["proxy.passthrough_allow[1]: must be a CIDR (10.1.0.0/16) or ip:port"]),
    ({"passthrough_allow": ["db.internal:5432"]},
     ["proxy.passthrough_allow[0]: must be an IP address or CIDR, not a host name"]),
    ({"passthrough_allow": ["127.0.0.1:99999"]},
     ["proxy.passthrough_allow[0]: must be a CIDR (10.1.0.0/16) or ip:port"]),
    ({"passthrough_allow": ["nonsense"]},
     ["proxy.passthrough_allow[0]: must be a CIDR (10.1.0.0/16) or ip:port"]),
    ({"max_body_mb": 0}, ["proxy.max_body_mb: must be a whole number from 1 to 4096"]),
    ({"max_body_mb": 4097}, ["proxy.max_body_mb: must be a whole number from 1 to 4096"]),
    ({"max_body_mb": 1.5}, ["proxy.max_body_mb: must be a whole number from 1 to 4096"]),
    ({"max_body_mb": True}, ["proxy.max_body_mb: must be a whole number from 1 to 4096"]),
    ({"require_agent_auth": "no"}, ["proxy.require_agent_auth: must be true or false"]),
    ({"bogus": 1}, ["proxy.bogus: unknown key"]),
]


@pytest.mark.parametrize(("proxy", "expected"), BAD_PROXY, ids=[str(p) for p, _ in BAD_PROXY])
def test_bad_proxy(proxy: dict[str, Any], expected: list[str]) -> None:
    assert problems(toml_of(svc(), proxy=proxy)) == expected


def test_unknown_keys_get_the_closest_known_one() -> None:
    text = toml_of(svc(name="openai", conect_to="1.2.3.4:443", zzz=1),
                   proxy={"egres": "block"})
    assert problems(text) == [
        'proxy.egres: unknown key; did you mean "egress"?',
        'service "openai" (service[0]).conect_to: unknown key; did you mean "connect_to"?',
        'service "openai" (service[0]).zzz: unknown key',  # nothing close: no guess
    ]
    # Only keys of that table are offered: `egress` is a [proxy] key, not a service's.
    assert problems(toml_of(svc(egres="block"))) == [
        'service "svc" (service[0]).egres: unknown key']


def test_top_level_shape() -> None:
    assert problems(toml_of(svc(), bogus=1)) == ["bogus: unknown key"]
    assert problems('proxy = "x"\n') == ["proxy: must be a table ([proxy])"]
    assert problems('[service]\nname = "a"\n') == [
        "service: must be an array of tables ([[service]])"
    ]
    assert problems('service = ["a"]\n') == ["service: must be an array of tables ([[service]])"]


# --- rules across services ---------------------------------------------------------------

CROSS: list[tuple[list[dict[str, Any]], list[str]]] = [
    ([svc(name="a", hosts=["x.com"]), svc(name="a", hosts=["y.com"])],
     ['service "a" (service[1]).name: already used by service[0]']),
    ([svc(name="a", hosts=["x.com"]), svc(name="b", hosts=["x.com:443"])],
     ['service "b" (service[1]).hosts[0]: host and port already served by service[0]']),
    ([svc(name="a", hosts=["*.x.com"]), svc(name="b", hosts=["y.com", "*.x.com"])],
     ['service "b" (service[1]).hosts[1]: host and port already served by service[0]']),
    ([svc(name="a", hosts=["[::1]:8443"], allow_loopback=True),
      svc(name="b", hosts=["[0:0::1]:8443"], allow_loopback=True)],
     ['service "b" (service[1]).hosts[0]: host and port already served by service[0]']),
    ([svc(name="a", hosts=["x.com"], env="K"), svc(name="b", hosts=["y.com"], env="K")],
     ['service "b" (service[1]).env: already used by service[0]']),
    ([svc(name="a", hosts=["x.com"], placeholder="same-ph-1"),
      svc(name="b", hosts=["y.com"], placeholder="same-ph-1")],
     ['service "b" (service[1]).placeholder: same as the placeholder of service[0]']),
    ([svc(name="a", hosts=["x.com"], placeholder="prefix-ph"),
      svc(name="b", hosts=["y.com"], placeholder="prefix-ph-longer")],
     ['service "b" (service[1]).placeholder: overlaps the placeholder of service[0] (one contains '
      'the other)']),
    ([svc(name="a", hosts=["x.com"], placeholder="a-long-placeholder"),
      svc(name="b", hosts=["y.com"], placeholder="placeholder")],
     ['service "b" (service[1]).placeholder: overlaps the placeholder of service[0] (one contains '
      'the other)']),
    ([svc(name="a", hosts=["x.com"], placeholder="xx__vault.b__xx"),
      svc(name="b", hosts=["y.com"])],
     ['service "b" (service[1]).placeholder: overlaps the placeholder of service[0] (one contains '
      'the other)']),
]


@pytest.mark.parametrize(("services", "expected"), CROSS, ids=range(len(CROSS)))
def test_cross_service(services: list[dict[str, Any]], expected: list[str]) -> None:
    assert problems(toml_of(*services)) == expected


def test_cross_service_allows_distinct_ports_and_exact_beside_wildcard() -> None:
    cfg = ok(toml_of(svc(name="a", hosts=["x.com", "*.x.com"]),
                     svc(name="b", hosts=["x.com:8443", "api.x.com"])))
    assert len(cfg.services) == 2


def test_every_problem_is_reported() -> None:
    text = toml_of(
        svc(name="BAD", hosts=["*.com"], mode="nope"),
        svc(name="ok", hosts=["y.com"], env="lower"),
        svc(name="ok", hosts=["y.com"]),
        proxy={"egress": "x", "max_body_mb": 0},
        extra=True,
    )
    assert problems(text) == [
        "extra: unknown key",
        'proxy.egress: must be "passthrough" or "block"',
        "proxy.max_body_mb: must be a whole number from 1 to 4096",
        # An invalid name is the problem itself: the table is named by its index only.
        "service[0].name: must be 1-64 characters of a-z, 0-9, '_' or '-', starting with a "
        "letter or digit",
        'service[0].mode: must be "placeholder" or "host_inject"',
        'service[0].hosts[0]: wildcard needs a domain of at least two labels after "*."',
        "service \"ok\" (service[1]).env: must be an environment variable name: A-Z, 0-9 and "
        "'_', not starting with a digit",
        'service "ok" (service[2]).name: already used by service[1]',
        'service "ok" (service[2]).hosts[0]: host and port already served by service[1]',
    ]


# --- no value is ever echoed ----------------------------------------------------------------

CANARY_FIELDS = [
    ("name", "{c}!"), ("hosts", ["{c}.example.com:99999"]), ("hosts", ["*.{c}*"]),
    ("mode", "{c}"), ("auth", "{c}"), ("secret", "{c} x"), ("placeholder", "{c} x"),
    ("env", "{c}"), ("connect_to", "{c}"), ("ca_cert", "{c}.pem"),
    ("substitute_in", ["{c}"]), ("header_name", "{c}:"), ("allow_private", "{c}"),
    ("{c}", "{c}"),
]


def _fill(value: Any, c: str) -> Any:
    return [v.format(c=c) for v in value] if isinstance(value, list) else value.format(c=c)


@pytest.mark.parametrize(("key", "value"), CANARY_FIELDS, ids=[k for k, _ in CANARY_FIELDS])
def test_no_value_echoed(canary: Any, key: str, value: Any) -> None:
    c = canary()
    found = problems(toml_of(svc(**{key.format(c="bogus"): _fill(value, c)})))
    assert found
    assert not any(c in p for p in found)
    assert c not in str(ConfigError(found))


@pytest.mark.parametrize("text", [
    'x = "{c}\n', "[[service]]\nname = {c}\n", 'a = "{c}"\na = "{c}"\n', "{c} = \n",
    '[proxy]\negress = "{c}"\npassthrough_allow = ["{c}"]\n',
])
def test_no_value_echoed_syntax_and_proxy(canary: Any, text: str) -> None:
    c = canary()
    found = problems(text.format(c=c))
    assert found and not any(c in p for p in found)


def test_syntax_error_names_line_column_and_a_hint() -> None:
    assert problems('[proxy]\negress = "block\n') == [
        "services.toml: line 2, column 10: a string starts here and is not closed on this "
        'line; add the closing quote; a string ends on the line it starts ("""...""" spans '
        "lines)"
    ]
    assert problems("[proxy]\n\n\negress = \n") == [
        "services.toml: line 4, column 10: unexpected character; a value is missing after `=`"
    ]
    assert problems("a = 1\n\na = 2\n") == [
        "services.toml: line 3, column 1: a key or table is defined twice; remove or rename "
        "one of them; each service is its own [[service]] table"
    ]
    assert problems("[proxy]\negress = block\n") == [
        'services.toml: line 2, column 10: unexpected character; a string value needs '
        'quotes: key = "..."'
    ]
    assert problems("[proxy\n") == [
        "services.toml: line 1, column 7: unexpected character; a table header needs its "
        "closing `]`"
    ]
    # A quote inside a comment or a closed string is not an unclosed one.
    assert problems('[proxy]\negress = "block" # it\'s\nx = \n')[0].startswith(
        "services.toml: line 3, column ")


def test_model_refuses_bad_service_built_in_code(canary: Any) -> None:
    c = canary()
    with pytest.raises(ValueError) as info:
        Service(name="a", hosts=(f"{c}:0",), mode="placeholder", auth="bearer")
    assert c not in str(info.value)
    with pytest.raises(ValueError, match="already used"):
        Config(service=(Service(name="a", hosts=("x.com",), mode="placeholder", auth="bearer"),
                        Service(name="a", hosts=("y.com",), mode="placeholder", auth="bearer")))


# --- ca_cert -------------------------------------------------------------------------------


def test_ca_cert_good_and_bad(tmp_path: Path) -> None:
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "lab-ca.pem"))
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    (tmp_path / "dir.pem").mkdir()
    cfg = ok(toml_of(svc(ca_cert="lab-ca.pem")), tmp_path)
    assert cfg.services[0].ca_cert == "lab-ca.pem"
    assert problems(toml_of(svc(ca_cert="junk.pem")), tmp_path) == [
        "service \"svc\" (service[0]).ca_cert: is not a PEM certificate file"
    ]
    assert problems(toml_of(svc(ca_cert="dir.pem")), tmp_path) == [
        "service \"svc\" (service[0]).ca_cert: file not found (a relative path is resolved "
        "against the "
        "vaultproxy home)"
    ]
    assert problems(toml_of(svc(ca_cert="lab-ca.pem", insecure_tls=True)), tmp_path) == [
        "service \"svc\" (service[0]).insecure_tls: cannot be combined with ca_cert (pick one)"
    ]


def test_load_config_reads_file_relative_to_its_home(tmp_path: Path) -> None:
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "lab-ca.pem"))
    f = tmp_path / "services.toml"
    f.write_text(toml_of(svc(ca_cert="lab-ca.pem")))
    assert load_config(f).services[0].name == "svc"


def test_load_config_missing_and_not_utf8(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "services.toml")
    assert info.value.problems == [
        "services.toml: not found; run `vaultproxy init` to create one"
    ]
    f = tmp_path / "services.toml"
    f.write_bytes(b'x = "\xff"\n')
    with pytest.raises(ConfigError) as info:
        load_config(f)
    assert info.value.problems == ["services.toml: not valid UTF-8"]


def test_dates_and_nested_tables_are_wrong_types() -> None:
    text = toml_of(svc(name=datetime.date(2024, 1, 1), hosts=[{"a": 1}]))
    assert problems(text) == ["service[0].name: must be a string",
                              "service[0].hosts: must be a list of strings"]


def test_upstream_pool_idle() -> None:
    assert ok("").proxy.upstream_pool_idle == 30
    assert ok("[proxy]\nupstream_pool_idle = 0\n").proxy.upstream_pool_idle == 0
    for value in ("-1", "true", '"30"', "90000"):
        found = problems(f"[proxy]\nupstream_pool_idle = {value}\n")
        assert found and all("upstream_pool_idle" in p for p in found), found
        assert all("0 (no pool)" in p for p in found), found
