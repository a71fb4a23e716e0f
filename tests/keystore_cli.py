"""Helpers for the keystore CLI tests: run `python -m vaultproxy` as a real subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def vp(*args: str, stdin: bytes | None = None,
       env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the CLI with a non-TTY stdin (``stdin`` bytes, or empty)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("VAULTPROXY_")}
    base.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-m", "vaultproxy", *args],
        input=stdin if stdin is not None else b"",
        capture_output=True, env=base, timeout=120, check=False,
        start_new_session=True,  # no controlling terminal: never a password prompt
    )
    return subprocess.CompletedProcess(
        proc.args, proc.returncode, proc.stdout.decode("utf-8", "replace"),
        proc.stderr.decode("utf-8", "replace"),
    )


def password_file(directory: Path, password: str, name: str = "pw") -> Path:
    path = directory / name
    path.write_text(password + "\n")
    path.chmod(0o600)
    return path


def init_home(home: Path, pwfile: Path) -> None:
    result = vp("init", "--home", str(home), "--password-file", str(pwfile))
    assert result.returncode == 0, result.stderr
