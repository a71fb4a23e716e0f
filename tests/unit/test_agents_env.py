"""`vaultproxy env` rendering: what sh and fish read back is exactly what we meant."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vaultproxy.cli import inherit
from vaultproxy.cli.env_exec import render, render_unset, with_credentials
from vaultproxy.config.load import parse_config
from vaultproxy.errors import ConfigError, UsageError
from vaultproxy.files.home import Home
from vaultproxy.values.env_secrets import check, known_secrets

TRICKY = {
    "A_PLAIN": "http://127.0.0.1:3203",
    "B_QUOTE": "it's \"quoted\"",
    "C_DOLLAR": "$HOME `id` $(id) \\n \\",
    "D_SPACE": "  two  spaces ; echo pwned ",
    "E_NEWLINE": "line1\nline2",
    "F_EMPTY": "",
}


@pytest.mark.parametrize("shell", ["sh", "dash", "bash", "fish"])
def test_render_roundtrips_through_shell(shell: str, tmp_path: Path) -> None:
    exe = shutil.which(shell)
    if exe is None:
        pytest.skip(f"{shell} not installed")
    script = tmp_path / "env"
    script.write_text(render(TRICKY, "fish" if shell == "fish" else "sh"))
    dump = tmp_path / "dump.py"
    names = list(TRICKY)
    dump.write_text(
        f"import os, json\nprint(json.dumps({{k: os.environ.get(k) for k in {names!r}}}))\n"
    )
    src = "source" if shell == "fish" else "."
    py = sys.executable
    r = subprocess.run([exe, "-c", f"{src} {script}; {py} {dump}"],
                       capture_output=True, text=True, timeout=30,
                       env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == TRICKY
    assert "pwned" not in r.stderr


def test_render_refuses_bad_variable_names() -> None:
    with pytest.raises(UsageError):
        render({"BAD-NAME": "x"}, "sh")


def test_inherited_environment_is_an_allowlist(tmp_path: Path) -> None:
    """No proxy answers (no admin.sock): only the built-in names and LC_* pass; a kept
    name is dropped too (it could not be checked for secrets), and a warning says so."""
    base = {"PATH": "/bin", "HOME": "/h", "LC_ALL": "C", "TERM": "xterm",
            "VAULTPROXY_PASSWORD_FILE": "/pw", "VAULTPROXY_AGENT_TOKEN": "t",
            "ALL_PROXY": "http://x", "HTTPS_PROXY": "http://old", "GITHUB_TOKEN": "ghp_x",
            "AWS_SECRET_ACCESS_KEY": "k", "SSH_AUTH_SOCK": "/tmp/agent", "GOPATH": "/go"}
    warnings: list[str] = []
    got = inherit.inherit(Home(tmp_path), base, ("GOPATH",), warnings.append)
    assert got.env == {"PATH": "/bin", "HOME": "/h", "LC_ALL": "C", "TERM": "xterm"}
    assert got.unchecked and len(warnings) == 1 and "GOPATH" in warnings[0]


@pytest.mark.parametrize("name", ["VAULTPROXY_HOME", "ALL_PROXY", "no_proxy", "BAD-NAME"])
def test_keep_env_refuses_ours_and_routing_variables(name: str) -> None:
    with pytest.raises(UsageError, match="keep-env"):
        inherit.check_keep([name])


def test_values_holding_a_stored_secret_are_swapped_or_dropped() -> None:
    ph, other = "vpcanary_placeholdered_secret", "vpcanary_host_inject_secret"
    secrets = known_secrets([(ph, "__vault.openai__"), (other, None), ("abc", None)])
    env = {"OPENAI_KEY": ph, "AUTH": f"Bearer {ph}", "GH": f"{ph}:{other}",
           "TOKEN": other, "PLAIN": "abcdef-not-secret", "SHORT": "abc",
           "AGENT": "vpa_" + "A" * 43}
    v = check(env, secrets)
    assert v.swap == {"OPENAI_KEY": "__vault.openai__", "AUTH": "Bearer __vault.openai__"}
    assert sorted(v.drop) == ["AGENT", "GH", "TOKEN"]  # "abc": too short to count
    assert ph not in repr(v) and ph not in repr(secrets)
    # the same value also stored without a placeholder: dropped, never swapped
    both = known_secrets([(ph, "__vault.openai__"), (ph, None)])
    assert check({"X": ph}, both).drop == ("X",)


def test_render_unset() -> None:
    assert render_unset(["A", "B"], "sh") == "unset A;\nunset B;\n"
    assert render_unset(["A"], "fish") == "set -e A;\n"
    assert render_unset([], "sh") == ""


def test_with_credentials() -> None:
    assert with_credentials("http://127.0.0.1:3203", "bot", "vpa_x-y") == (
        "http://bot:vpa_x-y@127.0.0.1:3203"
    )


def test_agent_table_parses_and_names_each_problem(tmp_path: Path) -> None:
    ok = parse_config('[agent]\nkeep_env = ["GOPATH", "LC_X"]\nwrite = ["~/.cache", "/srv"]\n'
                      'hide = ["~/notes"]\n', tmp_path).agent
    assert ok.keep_env == ("GOPATH", "LC_X") and ok.write == ("~/.cache", "/srv")
    assert ok.hide == ("~/notes",)
    with pytest.raises(ConfigError) as e:
        parse_config('[agent]\nkeep_env = ["VAULTPROXY_HOME", "BAD-NAME", "all_proxy"]\n'
                     'write = ["relative/dir"]\nhide = "~/x"\n', tmp_path)
    text = "\n".join(e.value.problems)
    for where in ("agent.keep_env[0]", "agent.keep_env[1]", "agent.keep_env[2]",
                  "agent.write[0]", "agent.hide"):
        assert where in text, text
