"""`[[source]]` and `secret = "SOURCE:PATH#FIELD"` in services.toml (SPEC §9): each rule with
a good and a bad input, exact `path: message` lines, never the value."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import tomlkit

from tests.canary import make_canary
from vaultproxy.config.example import EXAMPLE
from vaultproxy.config.load import parse_config
from vaultproxy.config.models import Config
from vaultproxy.errors import ConfigError

BAO: dict[str, Any] = {"name": "bao", "kind": "openbao", "url": "https://bao.example.com:8200",
                       "auth": "token"}
VW: dict[str, Any] = {"name": "vw", "kind": "bitwarden", "url": "https://vw.example.com",
                      "auth": "password", "folder": "vault-proxy"}


def svc(secret: str, name: str = "svc", **over: Any) -> dict[str, Any]:
    return {"name": name, "hosts": [f"{name}.example.com"], "mode": "host_inject",
            "auth": "bearer", "secret": secret, **over}


def doc(sources: list[dict[str, Any]], services: list[dict[str, Any]] = ()) -> str:  # type: ignore[assignment]
    data: dict[str, Any] = {"source": sources}
    if services:
        data["service"] = list(services)
    return tomlkit.dumps(data)


def ok(text: str) -> Config:
    return parse_config(text, Path("/nonexistent"))


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, Path("/nonexistent"))
    return info.value.problems


def test_sources_and_references_load() -> None:
    cfg = ok(doc([BAO, VW, {**BAO, "name": "lab", "kind": "vault", "auth": "approle",
                            "mount": "kv/team", "namespace": "eng", "refresh_seconds": 300,
                            "url": "http://127.0.0.1:8200", "allow_loopback": True}],
                 [svc("bao:team/openai#api_key"), svc("vw:GitHub login#password", "gh"),
                  svc("lab:rotating?version=3#k", "pinned"), svc("plain-entry", "local"),
                  svc("bao:registry", "reg", auth="basic")]))
    assert [s.name for s in cfg.sources] == ["bao", "vw", "lab"]
    assert cfg.sources[0].kv_mount == "secret" and cfg.sources[2].kv_mount == "kv/team"
    assert cfg.sources[2].plain_http and not cfg.sources[0].plain_http
    assert cfg.services[0].secret_name == "bao:team/openai#api_key"


def test_the_commented_example_still_loads() -> None:
    assert ok(EXAMPLE).sources == ()


@pytest.mark.parametrize(("source", "line"), [
    ({**BAO, "kind": "s3"}, 'source "bao" (source[0]).kind: must be one of "openbao", "vault" or '
                            '"bitwarden"'),
    ({**BAO, "auth": "password"}, 'source "bao" (source[0]).auth: must be "token" or "approle"'),
    ({**VW, "auth": "token"}, 'source "vw" (source[0]).auth: must be "password" or "apikey"'),
    ({**BAO, "folder": "x"}, 'source "bao" (source[0]).folder: only allowed with kind = '
                             '"bitwarden"'),
    ({**VW, "mount": "secret"}, 'source "vw" (source[0]).mount: only allowed with kind = '
                                '"openbao" or "vault"'),
    ({**BAO, "mount": "../x"},
     "source \"bao\" (source[0]).mount: must be 1-256 of A-Z a-z 0-9 _ . - in /-separated parts"),
    ({**BAO, "url": "http://bao.example.com"},
     "source \"bao\" (source[0]).url: plain http:// is allowed only to a loopback address "
     "(127.0.0.1 or "
     "[::1]); use https://"),
    ({**BAO, "url": "http://127.0.0.1:8200"},
     "source \"bao\" (source[0]).url: denied by the address policy: a loopback address; set "
     "allow_loopback = "
     "true to permit it"),
    ({**BAO, "url": "https://169.254.169.254"},
     "source \"bao\" (source[0]).url: denied by the address policy: a cloud metadata address"),
    ({**BAO, "url": "https://localhost:8200", "allow_loopback": True},
     "source \"bao\" (source[0]).url: denied by the address policy: a localhost name"),
    ({**BAO, "url": "ftp://bao.example.com"},
     "source \"bao\" (source[0]).url: must be an https:// URL (http:// only to a loopback "
     "address)"),
    ({**BAO, "url": "https://user:pw@bao.example.com"},
     "source \"bao\" (source[0]).url: must have no query, fragment or credentials (the "
     "credentials go in the "
     "keystore entry source.NAME)"),
    ({**BAO, "refresh_seconds": -1},
     "source \"bao\" (source[0]).refresh_seconds: must be a whole number from 0 (only on sync) to "
     "604800"),
    ({**BAO, "bogus": 1}, "source \"bao\" (source[0]).bogus: unknown key"),
    ({**BAO, "name": "Bao"},
     "source[0].name: must be 1-64 characters of a-z, 0-9, '_' or '-', starting with a "
     "letter or digit"),
    ({k: v for k, v in BAO.items() if k != "url"}, "source \"bao\" (source[0]).url: is required"),
])
def test_source_rules(source: dict[str, Any], line: str) -> None:
    assert line in problems(doc([source]))


def test_duplicate_source_names() -> None:
    assert problems(doc([BAO, BAO])) == ["source \"bao\" (source[1]).name: already used by "
                                         "source[0]"]


@pytest.mark.parametrize(("secret", "line"), [
    ("nosuch:x#f", "service \"svc\" (service[0]).secret: names a source that no [[source]] "
                   "defines (the part "
     "before the colon)"),
    ("vw:Item?version=2#password", "service \"svc\" (service[0]).secret: ?version= is only for "
                                   "openbao/vault "
     "sources"),
    ("source.bao", "service \"svc\" (service[0]).secret: names a source's own credentials "
                   "(source.NAME); take "
     'a synced item instead: "SOURCE:PATH#FIELD"'),
    ("bao:x#", "service \"svc\" (service[0]).secret: a source reference the field after # is "
               "empty"),
    ("bao:#f", "service \"svc\" (service[0]).secret: a source reference the path must be 1-512 "
               "characters"),
])
def test_reference_rules(secret: str, line: str) -> None:
    assert problems(doc([BAO, VW], [svc(secret)])) == [line]


def test_messages_never_echo_the_value() -> None:
    secret = make_canary()
    lines = problems(doc([{**BAO, "url": f"http://{secret}.example.com"}],
                         [svc(f"nosuch:{secret}#f")]))
    assert lines and not any(secret in line for line in lines)
