"""The terminal flows a new user meets, under a real pty (pexpect): the password prompt is
on the controlling terminal also when stdin is a pipe carrying the secret, and Ctrl-D /
Ctrl-C at a prompt end the command cleanly (no traceback, nothing written).

Each test waits for the prompt before typing (typed-ahead text is kept: test_cli_firsthour.py).
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

import pexpect
import pytest

import tests.canary as canaries
from tests.harness.proxy import PASSWORD
from tests.keystore_cli import init_home, password_file
from vaultproxy.keystore import Keystore
from vaultproxy.secret import Secret

pytestmark = pytest.mark.integration
Canary = Callable[[], str]
VP = f"{shlex.quote(sys.executable)} -m vaultproxy"


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("VAULTPROXY_")}


def spawn(shell_command: str, log: Path) -> pexpect.spawn:
    """Run ``sh -c shell_command`` on a fresh pty (its controlling terminal)."""
    child = pexpect.spawn("sh", ["-c", shell_command], env=_env(), encoding="utf-8",
                          timeout=60, dimensions=(24, 200))
    child.logfile_read = log.open("a")
    return child


def finish(child: pexpect.spawn) -> tuple[int, str]:
    """Wait for the end; return (exit status, everything printed since the last expect)."""
    child.expect(pexpect.EOF)
    rest = child.before or ""
    child.close()
    if child.logfile_read is not None:
        child.logfile_read.close()
    assert child.exitstatus is not None, f"killed by signal {child.signalstatus}"
    return child.exitstatus, rest


@pytest.fixture
def home(tmp_path: Path) -> tuple[Path, Path, str]:
    """An initialised home (via a password file), its password file and the password."""
    canaries.watch(tmp_path)
    password = PASSWORD  # the master password is not a canary: it is typed and in a file
    pw = password_file(tmp_path, password)
    h = tmp_path / "home"
    init_home(h, pw)
    return h, pw, password


def test_piped_secret_prompts_for_the_password_on_the_terminal(
    home: tuple[Path, Path, str], tmp_path: Path, canary: Canary
) -> None:
    h, _pw, password = home
    value = canary()
    # The README's command: the value on stdin, the master password typed at the terminal.
    child = spawn(f"printf %s {shlex.quote(value)} | {VP} secret set openai --home {h}",
                  tmp_path / "pty.log")
    child.expect("Master password: ")
    child.sendline(password)
    status, out = finish(child)
    assert status == 0, out
    assert "stored openai" in out
    assert "Traceback" not in out
    store = Keystore.open(h / "keystore.enc", Secret(password))
    entry = store.get("openai")
    assert entry is not None and entry.value is not None
    assert entry.value.reveal() == value.encode()
    assert value not in (tmp_path / "pty.log").read_text()  # the value never echoed


def test_without_a_terminal_the_pipe_alone_is_not_enough(
    home: tuple[Path, Path, str], canary: Canary
) -> None:
    """Negative twin: no controlling terminal (a new session, no tty) -> exit 2 with how."""
    import subprocess

    h, _pw, _password = home
    r = subprocess.run([sys.executable, "-m", "vaultproxy", "secret", "set", "openai",
                        "--home", str(h)], input=canary().encode(), capture_output=True,
                       env=_env(), timeout=60, start_new_session=True)
    assert r.returncode == 2
    assert b"no master password source" in r.stderr and b"--password-file" in r.stderr


@pytest.mark.parametrize("command", ["secret list", "secret set a", "passwd", "check",
                                     "init --home {tmp}/fresh"])
def test_ctrl_d_at_a_prompt_exits_cleanly(
    home: tuple[Path, Path, str], tmp_path: Path, command: str
) -> None:
    h, _pw, _password = home
    before = sorted(p.name for p in h.iterdir())
    cmd = command.format(tmp=tmp_path)
    if "--home" not in cmd:
        cmd += f" --home {h}"
    # stdin is the terminal here, so `secret set` prompts for the password first.
    child = spawn(f"{VP} {cmd}", tmp_path / "pty.log")
    child.expect("[Pp]assword: ")
    child.sendeof()
    status, out = finish(child)
    assert status == 1, out
    assert "Traceback" not in out
    assert "vaultproxy: no input at the prompt (Ctrl-D); nothing was changed" in out
    assert sorted(p.name for p in h.iterdir()) == before
    assert not (tmp_path / "fresh" / "keystore.enc").exists()


def test_ctrl_c_at_a_prompt_exits_130_cleanly(home: tuple[Path, Path, str],
                                              tmp_path: Path) -> None:
    h, _pw, _password = home
    # exec: the pty's foreground process is vaultproxy itself, so its exit status is ours.
    child = spawn(f"exec {VP} secret list --home {h}", tmp_path / "pty.log")
    child.expect("Master password: ")
    child.sendintr()
    status, out = finish(child)
    assert status == 130, out
    assert "Traceback" not in out and "KeyboardInterrupt" not in out
    assert "interrupted at the prompt (Ctrl-C)" in out


def test_ctrl_d_at_the_value_prompt(home: tuple[Path, Path, str], tmp_path: Path) -> None:
    h, pw, _password = home
    child = spawn(f"{VP} secret set a --home {h} --password-file {pw}", tmp_path / "pty.log")
    child.expect(r"Value for a \(hidden\): ")
    child.sendeof()
    status, out = finish(child)
    assert status == 1 and "Traceback" not in out and "Ctrl-D" in out


def test_wrong_password_at_the_prompt_does_not_point_at_a_password_file(
    home: tuple[Path, Path, str], tmp_path: Path
) -> None:
    h, _pw, _password = home
    child = spawn(f"{VP} secret list --home {h}", tmp_path / "pty.log")
    for _ in range(3):  # a terminal gets three tries (tests/integration/test_cli_firsthour.py)
        child.expect("Master password: ")
        child.sendline("not the password at all")
    status, out = finish(child)
    assert status == 1
    assert "wrong master password" in out and "type the master password" in out
    assert "--password-file" not in out and "VAULTPROXY_PASSWORD_FILE" not in out


def test_wrong_password_from_a_file_names_the_file(home: tuple[Path, Path, str],
                                                   tmp_path: Path) -> None:
    import subprocess

    h, _pw, _password = home
    bad = password_file(tmp_path, "not the password at all", name="bad")
    r = subprocess.run([sys.executable, "-m", "vaultproxy", "secret", "list", "--home", str(h),
                        "--password-file", str(bad)], capture_output=True, text=True,
                       env=_env(), timeout=60, start_new_session=True)
    assert r.returncode == 1
    assert f"the password in {bad} (--password-file) is not this keystore's" in r.stderr


def test_init_at_a_terminal_asks_twice_and_warns_about_a_short_password(tmp_path: Path) -> None:
    h = tmp_path / "fresh"
    child = spawn(f"{VP} init --home {h}", tmp_path / "pty.log")
    child.expect("New master password: ")
    child.sendline("short-pw")
    child.expect("Repeat master password: ")
    child.sendline("short-pw")
    status, out = finish(child)
    assert status == 0, out
    assert "SECURITY: the master password has 8 characters; use 12 or more" in out
    assert (h / "keystore.enc").exists()


def test_init_with_a_long_password_does_not_warn(tmp_path: Path) -> None:
    h = tmp_path / "fresh"
    child = spawn(f"{VP} init --home {h}", tmp_path / "pty.log")
    child.expect("New master password: ")
    child.sendline("a long enough passphrase")
    child.expect("Repeat master password: ")
    child.sendline("a long enough passphrase")
    status, out = finish(child)
    assert status == 0, out
    assert "SECURITY" not in out
