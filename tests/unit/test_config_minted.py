"""services.toml keys of the minted auth types (SPEC §4.1): what is accepted, and every
refusal as a ``path: message`` line that names the field and the rule, never the value."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.canary import make_canary
from vaultproxy.config.load import parse_config
from vaultproxy.errors import ConfigError


def svc(auth: str, *lines: str, mode: str = "host_inject") -> str:
    return "\n".join([
        "[[service]]", 'name = "m"', 'hosts = ["api.example.com", "*.lab.example.com:8443"]',
        f'mode = "{mode}"', f'auth = "{auth}"', *lines,
    ]) + "\n"


def problems(text: str, tmp_path: Path) -> list[str]:
    with pytest.raises(ConfigError) as err:
        parse_config(text, tmp_path)
    return err.value.problems


GOOD = [
    svc("oauth2_refresh", 'token_url = "https://login.example.com/oauth/token"',
        'scope = "offline_access read"'),
    svc("oauth2_refresh", 'token_url = "/oauth/token"', 'client_auth = "post"'),
    svc("oauth2_client_credentials", 'token_url = "https://auth.example.com/token"',
        'audience = "https://api.example.com"', 'client_auth = "basic"',
        'token_params = { resource = "urn:x", "x.y-z" = "1" }'),
    svc("session", 'login_url = "/api/tokens"',
        """login_body = '{"identity": "{username}", "secret": "{password}"}'""",
        'token_field = "data.token"', 'token_header = "X-Auth-Token:"'),
    svc("session", 'login_url = "https://api.example.com/login"', "session_cookie = true"),
    svc("session", 'login_url = "https://a.lab.example.com:8443/login"'),
    svc("unifi_dual"),
    svc("unifi_dual", 'login_url = "/api/login"', mode="placeholder"),
    svc("oauth2_refresh", 'token_url = "/t"', mode="placeholder"),
]


@pytest.mark.parametrize("text", GOOD)
def test_accepted(text: str, tmp_path: Path) -> None:
    cfg = parse_config(text, tmp_path)
    assert cfg.services[0].name == "m"


BAD = [
    (svc("oauth2_refresh"), "service \"m\" (service[0]).token_url: is required when auth = "
                            "\"oauth2_refresh\""),
    (svc("oauth2_client_credentials", 'token_url = "http://auth.example.com/token"'),
     "service \"m\" (service[0]).token_url:"),
    (svc("oauth2_refresh", 'token_url = "https://user:pw@auth.example.com/t"'),
     "service \"m\" (service[0]).token_url:"),
    (svc("oauth2_refresh", 'token_url = "https://169.254.169.254/token"'),
     "service \"m\" (service[0]).token_url:"),
    (svc("oauth2_refresh", 'token_url = "/t"', 'client_auth = "jwt"'),
     "service \"m\" (service[0]).client_auth:"),
    (svc("oauth2_refresh", 'token_url = "/t"', 'audience = "a"'),
     "service \"m\" (service[0]).audience: only allowed with auth = "
     "\"oauth2_client_credentials\""),
    (svc("bearer", 'token_url = '
                   '"/t"'), "service \"m\" (service[0]).token_url: only allowed with auth ="),
    (svc("oauth2_client_credentials", 'token_url = "/t"', 'token_params = { scope = "x" }'),
     "service \"m\" (service[0]).token_params:"),
    (svc("oauth2_client_credentials", 'token_url = "/t"', 'token_params = { a = 1 }'),
     "service \"m\" (service[0]).token_params:"),
    (svc("session"), "service \"m\" (service[0]).login_url: is required when auth = \"session\""),
    (svc("session", 'login_url = "https://elsewhere.example.net/login"'),
     "service \"m\" (service[0]).login_url:"),
    (svc("session", 'login_url = '
                    '"/l"', "login_body = '{not json'"), "service \"m\" (service[0]).login_body:"),
    (svc("session", 'login_url = '
                    '"/l"', "login_body = '[1]'"), "service \"m\" (service[0]).login_body:"),
    (svc("session", 'login_url = '
                    '"/l"', 'token_field = "a..b"'), "service \"m\" (service[0]).token_field:"),
    (svc("session", 'login_url = "/l"', 'token_field = "t"', "session_cookie = true"),
     "service \"m\" (service[0]).token_field:"),
    (svc("session", 'login_url = "/l"', 'token_header = "Bad Name: x"'),
     "service \"m\" (service[0]).token_header:"),
    (svc("session", 'login_url = "/l"', 'token_header = "Content-Length:"'),
     "service \"m\" (service[0]).token_header:"),
    (svc("session", 'login_url = "/l"', 'substitute_in = ["auth", "body"]', mode="placeholder"),
     "service \"m\" (service[0]).substitute_in:"),
    (svc("unifi_dual", 'token_field = '
                       '"t"'), "service \"m\" (service[0]).token_field: only allowed with auth ="),
]


@pytest.mark.parametrize(("text", "expected"), BAD)
def test_refused_naming_the_field(text: str, expected: str, tmp_path: Path) -> None:
    lines = problems(text, tmp_path)
    assert any(line.startswith(expected) for line in lines), lines


def test_a_refusal_never_echoes_the_value(tmp_path: Path) -> None:
    secretish = make_canary()
    texts = [
        svc("oauth2_refresh", f'token_url = "https://u:{secretish}@x.example.com/t"'),
        svc("session", 'login_url = "/l"', f"login_body = '{{{secretish}'"),
        svc("oauth2_client_credentials", 'token_url = "/t"',
            f'token_params = {{ client_secret = "{secretish}" }}'),
        svc("session", 'login_url = "/l"', f'token_header = "{secretish} x: y"'),
    ]
    for text in texts:
        assert secretish not in "\n".join(problems(text, tmp_path))
