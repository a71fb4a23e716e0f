"""``[[mcp_server]]`` validation and the ``.mcp.json`` that `vaultproxy mcp config` prints."""

from __future__ import annotations

from pathlib import Path

import pytest

from vaultproxy.cli.mcp import client_config
from vaultproxy.config.load import parse_config
from vaultproxy.errors import ConfigError
from vaultproxy.files.home import Home

GOOD = '''
[[service]]
name = "github"
hosts = ["api.github.com"]
mode = "placeholder"
auth = "bearer"

[[mcp_server]]
name = "gh"
command = ["npx", "-y", "server-github"]
env = { GITHUB_TOKEN = "__vault.github__", LOG = "debug" }

[[mcp_server]]
name = "local"
command = ["./srv"]
isolate = false
'''


def test_parsed_and_rendered() -> None:
    cfg = parse_config(GOOD, Path("/tmp"))
    gh, local = cfg.mcp_server
    assert gh.isolate and not local.isolate and gh.command == ("npx", "-y", "server-github")
    out = client_config(Home(Path("/h")), cfg.mcp_server, "claude")["mcpServers"]
    assert out["gh"]["args"] == ["exec", "--home", "/h", "--", "env", "GITHUB_TOKEN=__vault"
                                 ".github__", "LOG=debug", "npx", "-y", "server-github"]
    assert out["local"]["args"] == ["exec", "--home", "/h", "--no-isolate", "--", "./srv"]
    assert all(e["type"] == "stdio" for e in out.values())
    assert out["vaultproxy"]["args"] == ["mcp", "--home", "/h"]
    generic = client_config(Home(Path("/h")), cfg.mcp_server, "generic")["mcpServers"]
    assert all("type" not in e for e in generic.values())
    with pytest.raises(ConfigError) as err:  # the twin: a placeholder of no service
        parse_config(GOOD.replace("__vault.github__", "__vault.gitlab__"), Path("/tmp"))
    assert "mcp_server[0].env.GITHUB_TOKEN: names a placeholder of no service" in str(err.value)


@pytest.mark.parametrize(("toml", "problem"), [
    ('[[mcp_server]]\nname = "a"\ncommand = []\n', "mcp_server[0].command"),
    ('[[mcp_server]]\nname = "a"\ncommand = "srv"\n', "mcp_server[0].command"),
    ('[[mcp_server]]\nname = "A b"\ncommand = ["x"]\n', "mcp_server[0].name"),
    ('[[mcp_server]]\nname = "a"\ncommand = ["x"]\nenv = { "bad-name" = "v" }\n',
     "mcp_server[0].env"),
    ('[[mcp_server]]\nname = "a"\ncommand = ["x"]\n[[mcp_server]]\nname = "a"\n'
     'command = ["y"]\n', "used twice"),
    ('[[mcp_server]]\nname = "a"\ncommand = ["x"]\nshell = true\n', "shell"),
])
def test_bad_entries_named(toml: str, problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(toml, Path("/tmp"))
    assert problem in str(err.value)
