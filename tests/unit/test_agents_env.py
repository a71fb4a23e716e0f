"""`vaultproxy env` rendering: what sh and fish read back is exactly what we meant."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vaultproxy.cli.env_exec import child_environment, render, with_credentials
from vaultproxy.errors import UsageError

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


def test_child_environment_strips_ours() -> None:
    base = {"PATH": "/bin", "VAULTPROXY_PASSWORD_FILE": "/pw", "VAULTPROXY_AGENT_TOKEN": "t",
            "ALL_PROXY": "http://x", "HTTPS_PROXY": "http://old"}
    env = child_environment(base, {"HTTPS_PROXY": "http://new"})
    assert env == {"PATH": "/bin", "HTTPS_PROXY": "http://new"}


def test_with_credentials() -> None:
    assert with_credentials("http://127.0.0.1:3203", "bot", "vpa_x-y") == (
        "http://bot:vpa_x-y@127.0.0.1:3203"
    )
