"""Comment-preserving edits: comments survive, a bad edit leaves the file byte-identical."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest

from vaultproxy.config.edit import add_service, remove_service, set_proxy_key, set_service_key
from vaultproxy.config.example import EXAMPLE
from vaultproxy.config.load import load_config
from vaultproxy.errors import ConfigError

START = """\
# top comment
[proxy]
egress = "block"  # inline comment

# about openai
[[service]]
name = "openai"
hosts = ["api.openai.com"]  # the API host
mode = "placeholder"
auth = "bearer"

# about github
[[service]]
name = "github"
hosts = ["api.github.com"]
mode = "host_inject"
auth = "bearer"
"""

NEW = {"name": "anthropic", "hosts": ["api.anthropic.com"], "mode": "host_inject",
       "auth": "header", "header_name": "x-api-key"}


@pytest.fixture
def services(tmp_path: Path) -> Path:
    f = tmp_path / "services.toml"
    f.write_text(START)
    return f


def test_add_keeps_comments_and_validates(services: Path) -> None:
    cfg = add_service(services, NEW)
    text = services.read_text()
    for comment in ("# top comment", "# inline comment", "# about openai", "# the API host",
                    "# about github"):
        assert comment in text
    assert [s.name for s in cfg.services] == ["openai", "github", "anthropic"]
    assert load_config(services) == cfg
    assert stat.S_IMODE(services.stat().st_mode) == 0o600


def test_remove_keeps_other_comments(services: Path) -> None:
    cfg = remove_service(services, "openai")
    text = services.read_text()
    assert [s.name for s in cfg.services] == ["github"]
    assert "# top comment" in text and "# inline comment" in text and "# about github" in text
    assert "api.openai.com" not in text
    cfg = remove_service(services, "github")
    assert cfg.services == ()
    assert "# top comment" in services.read_text()


BAD_EDITS: list[tuple[str, Any, list[str]]] = [
    ("add", {**NEW, "name": "openai"}, ['service "openai" (service[2]).name: already used by '
                                        'service[0]']),
    ("add", {**NEW, "hosts": ["api.openai.com"]},
     ['service "anthropic" (service[2]).hosts[0]: host and port already served by service[0]']),
    ("add", {**NEW, "bogus": True}, ['service "anthropic" (service[2]).bogus: unknown key']),
    ("remove", "nope", ['service: no service named "nope"']),
    ("set", ("openai", "mode", "magic"),
     ['service "openai" (service[0]).mode: must be "placeholder" or "host_inject"']),
    ("proxy", ("egress", "open"), ['proxy.egress: must be "passthrough" or "block"']),
]


@pytest.mark.parametrize(("op", "arg", "expected"), BAD_EDITS, ids=range(len(BAD_EDITS)))
def test_bad_edit_leaves_file_unchanged(services: Path, op: str, arg: Any,
                                        expected: list[str]) -> None:
    before = services.read_bytes()
    with pytest.raises(ConfigError) as info:
        if op == "add":
            add_service(services, arg)
        elif op == "remove":
            remove_service(services, arg)
        elif op == "set":
            set_service_key(services, *arg)
        else:
            set_proxy_key(services, *arg)
    assert info.value.problems == expected
    assert services.read_bytes() == before
    assert [p.name for p in services.parent.iterdir()] == ["services.toml"]  # no temp left


def test_bad_edit_does_not_echo_value(services: Path, canary: Any) -> None:
    c = canary()
    with pytest.raises(ConfigError) as info:
        add_service(services, {**NEW, "header_name": c + ":"})
    assert c not in str(info.value)


def test_set_keys(services: Path) -> None:
    cfg = set_service_key(services, "openai", "env", "OPENAI_API_KEY")
    assert cfg.services[0].env == "OPENAI_API_KEY"
    cfg = set_service_key(services, "openai", "env", None)
    assert cfg.services[0].env is None
    cfg = set_proxy_key(services, "max_body_mb", 64)
    assert cfg.proxy.max_body_mb == 64
    assert "# inline comment" in services.read_text()


def test_edit_example_and_missing_file(tmp_path: Path) -> None:
    f = tmp_path / "services.toml"
    f.write_text(EXAMPLE)
    add_service(f, NEW)
    text = f.read_text()
    assert text.startswith(EXAMPLE.split("\n", 1)[0])
    assert "# One [[service]] table per upstream API." in text
    assert load_config(f).services[0].name == "anthropic"
    g = tmp_path / "sub"
    g.mkdir()
    cfg = add_service(g / "services.toml", NEW)
    assert cfg.services[0].name == "anthropic"
    cfg = set_proxy_key(g / "services.toml", "egress", "block")
    assert cfg.proxy.egress == "block"
