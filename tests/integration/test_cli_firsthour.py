"""The first hour at the terminal, driven for real (pexpect ptys, bash job control):

- the password prompt comes before the heavy imports, echo is off from the start and text
  typed ahead is never shown (it is kept and used, as sudo does);
- three tries for a password typed at a terminal;
- `vaultproxy run &` is not stopped by the terminal: it says how to supply the password;
- a busy port fails at once naming its flag, and leaves no stale file;
- `stop`, `try`, `doctor`, and `secret set` reaching a running proxy at once.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest

from tests.canary import make_canary
from tests.harness.proxy import PASSWORD, REPO, ProxyHome, ProxyProcess
from tests.harness.upstream import Upstream
from tests.integration.conftest import agent_client, service_block

pytestmark = pytest.mark.integration
VP = [sys.executable, "-m", "vaultproxy"]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAULTPROXY_")}
    env.pop("HTTPS_PROXY", None)
    return {**env, **extra}


def vp(home: Path, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*VP, *args, "--home", str(home)], capture_output=True, text=True,
                          timeout=90, env=_env(), cwd=REPO, start_new_session=True,
                          input=input)


def spawn(args: list[str], log: Path, **kw: object) -> pexpect.spawn:
    child = pexpect.spawn(args[0], args[1:], env=_env(), encoding="utf-8", timeout=60,
                          cwd=str(REPO), dimensions=(24, 250), **kw)
    child.logfile_read = log.open("a")
    return child


def end(child: pexpect.spawn, *, kill: bool = False) -> str:
    if kill and child.isalive():
        child.terminate(force=True)
    child.expect(pexpect.EOF)
    child.close()
    if child.logfile_read is not None:
        child.logfile_read.close()
    return str(child.before or "")


@pytest.fixture
def home(tmp_path: Path, upstream: Upstream) -> ProxyHome:
    return ProxyHome.create(tmp_path, service_block("fh", "host_inject", "bearer", upstream.port),
                            {"fh": make_canary()},
                            files={"upstream-ca.pem": upstream.ca_file.read_bytes()})


@pytest.fixture
def running(home: ProxyHome) -> Iterator[ProxyProcess]:
    proc = ProxyProcess.start(home)
    yield proc
    proc.stop()


def test_prompt_before_heavy_imports_and_typed_ahead_never_echoed(
    home: ProxyHome, tmp_path: Path
) -> None:
    # -X importtime writes each import to stderr (the pty) as it happens: what is printed
    # before the prompt is exactly what was imported before it.
    started = time.monotonic()
    child = spawn([sys.executable, "-X", "importtime", "-m", "vaultproxy", "run", "--home",
                   str(home.path), "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"],
                  tmp_path / "run.log")
    try:
        assert child.waitnoecho(timeout=10), "echo never went off"
        quiet_after = time.monotonic() - started
        child.send(PASSWORD + "\n")  # typed before the prompt shows: kept, never echoed
        child.expect("Master password: ")
        prompt_after = time.monotonic() - started
        before_prompt = child.before
        child.expect("ready", timeout=60)  # the typed-ahead password unlocked it
        child.expect("keystore: unlocked")
    finally:
        out = end(child, kill=True)
    log = (tmp_path / "run.log").read_text()
    assert PASSWORD not in log, "typed-ahead text was echoed"
    assert " mitmproxy" not in before_prompt and " vaultproxy.engine.serve" not in before_prompt
    assert " vaultproxy.config.models" not in before_prompt
    assert " mitmproxy" in log  # the negative twin: the engine is imported after it
    print(f"echo off after {quiet_after:.2f} s, prompt after {prompt_after:.2f} s")
    assert quiet_after < prompt_after < 5.0, out


def test_three_tries_at_a_terminal(home: ProxyHome, tmp_path: Path) -> None:
    child = spawn([*VP, "secret", "list", "--home", str(home.path)], tmp_path / "pty.log")
    for _ in range(2):
        child.expect("Master password: ")
        child.sendline("not the password")
        child.expect("wrong master password, try again")
    child.expect("Master password: ")
    child.sendline(PASSWORD)
    child.expect("fh")
    end(child)
    assert child.exitstatus == 0

    child = spawn([*VP, "secret", "list", "--home", str(home.path)], tmp_path / "pty.log")
    for _ in range(3):
        child.expect("Master password: ")
        child.sendline("not the password")
    out = end(child)
    assert child.exitstatus == 1
    assert "wrong master password" in out and "Traceback" not in out
    assert "not the password" not in (tmp_path / "pty.log").read_text()


def test_a_password_file_is_read_once(home: ProxyHome, tmp_path: Path) -> None:
    bad = tmp_path / "bad-pw"
    bad.write_text("not the password")
    bad.chmod(0o600)
    r = vp(home.path, "secret", "list", "--password-file", str(bad))
    assert r.returncode == 1 and "try again" not in r.stderr
    assert f"the password in {bad} (--password-file) is not this keystore's" in r.stderr


def test_run_in_the_background_is_not_stopped_by_the_terminal(
    home: ProxyHome, tmp_path: Path
) -> None:
    """`vaultproxy run &` from an interactive shell (job control on): a background process
    group. It must not prompt (SIGTTIN/SIGTTOU would stop it); it starts locked, says how to
    supply the password, and serves."""
    cmd = (f"{' '.join(VP)} run --home {home.path} --listen 127.0.0.1:0 "
           "--admin-listen 127.0.0.1:0 & wait")
    child = spawn(["bash", "--norc", "--noprofile", "-mc", cmd], tmp_path / "bg.log")
    try:
        child.expect("running in the background")
        child.expect("ready")
        deadline = time.monotonic() + 20
        while not (home.path / "run.json").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        r = vp(home.path, "status")
        assert r.returncode == 0 and "LOCKED" in r.stdout, r.stdout + r.stderr
        r = vp(home.path, "stop")
        assert r.returncode == 0 and "stopped vaultproxy" in r.stdout, r.stderr
    finally:
        out = end(child, kill=True)
    log = (tmp_path / "bg.log").read_text()
    assert "--password-file" in log and "Stopped" not in log + out


def _busy() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    return s


@pytest.mark.parametrize("flag", ["--listen", "--admin-listen"])
def test_a_busy_port_fails_at_once_naming_the_flag(home: ProxyHome, flag: str) -> None:
    baseline = time.monotonic()
    subprocess.run([*VP, "--version"], capture_output=True, check=True, cwd=REPO)
    startup = time.monotonic() - baseline  # what any vaultproxy command costs on this machine
    with _busy() as busy:
        port = busy.getsockname()[1]
        other = "--admin-listen" if flag == "--listen" else "--listen"
        started = time.monotonic()
        r = vp(home.path, "run", "--password-file", str(home.password_file), flag,
               f"127.0.0.1:{port}", other, "127.0.0.1:0")
        took = time.monotonic() - started
    assert r.returncode == 2, r.stderr
    assert f"127.0.0.1:{port}" in r.stderr and f"{flag} HOST:PORT" in r.stderr
    assert took < startup + 1.0, f"took {took:.2f} s (a bare start takes {startup:.2f} s)"
    leftovers = {"admin-token", "admin.sock", "run.json", "proxy.sock"} & {
        p.name for p in home.path.iterdir()}
    assert not leftovers


def test_stop_ends_the_running_proxy(running: ProxyProcess) -> None:
    r = vp(running.home.path, "stop")
    assert r.returncode == 0 and f"pid {running.proc.pid}" in r.stdout, r.stderr
    assert running.proc.poll() == 0
    assert not (running.home.path / "admin.sock").exists()
    r = vp(running.home.path, "stop")
    assert r.returncode == 0 and "not running" in r.stdout


def test_try_reports_status_latency_and_injection(running: ProxyProcess) -> None:
    r = vp(running.home.path, "try", "fh", "/v1/ping")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "GET https://fh.api.test/v1/ping" in r.stdout and ": 200 in " in r.stdout
    assert "credential injected: yes" in r.stdout
    assert vp(running.home.path, "lock").returncode == 0
    r = vp(running.home.path, "try", "fh")
    assert r.returncode == 1 and ": 503 in " in r.stdout
    assert "refused by vaultproxy: locked" in r.stdout
    assert "credential injected: no" in r.stdout
    r = vp(running.home.path, "try", "nope")
    assert r.returncode == 2 and "it serves: fh" in r.stderr


def test_doctor_names_each_fix(home: ProxyHome, upstream: Upstream) -> None:
    with _started(home):
        r = vp(home.path, "doctor")
        assert "ok    proxy running, unlocked, 1 service(s)" in r.stdout, r.stdout
        assert "ok    service fh: fh.api.test resolves and its TLS verifies" in r.stdout
        assert "HTTPS_PROXY" in r.stdout and "fix: eval" in r.stdout
        assert r.returncode == 0, r.stdout
        # The negative twin: an upstream that is not there, and a locked proxy.
        with _busy() as closed:
            port = closed.getsockname()[1]
        text = (home.path / "services.toml").read_text()
        (home.path / "services.toml").write_text(
            text + service_block("gone", "host_inject", "bearer", port))
        assert vp(home.path, "lock").returncode == 0
        r = vp(home.path, "doctor")
        assert r.returncode == 1
        assert "FAIL  the running proxy is LOCKED" in r.stdout and "fix: vaultproxy unlock" \
            in r.stdout
        assert "FAIL  service gone: cannot reach gone.api.test" in r.stdout
        assert "2 problem(s)" in r.stdout


class _started:
    def __init__(self, home: ProxyHome) -> None:
        self.home = home

    def __enter__(self) -> ProxyProcess:
        self.proc = ProxyProcess.start(self.home)
        return self.proc

    def __exit__(self, *exc: object) -> None:
        self.proc.stop()


def test_secret_set_reaches_the_running_proxy_at_once(
    tmp_path: Path, upstream: Upstream
) -> None:
    home = ProxyHome.create(tmp_path, service_block("late", "host_inject", "bearer",
                                                    upstream.port),
                            files={"upstream-ca.pem": upstream.ca_file.read_bytes()})
    with _started(home) as proc:
        with agent_client(proc) as c:
            r = c.get("https://late.api.test/v1/before")
        assert r.status_code == 502 and r.json()["error"]["code"] == "secret_missing"
        value = make_canary()
        r = subprocess.run([*VP, "secret", "set", "late", "--home", str(home.path),
                            "--password-file", str(home.password_file)], input=value,
                           capture_output=True, text=True, timeout=60, env=_env(), cwd=REPO)
        assert r.returncode == 0, r.stderr
        assert "stored late\nthe running proxy uses it now\n" == r.stdout
        with agent_client(proc) as c:
            r = c.get("https://late.api.test/v1/after")
        assert r.status_code == 200
        assert upstream.received[-1].header("authorization") == f"Bearer {value}"
        r = vp(home.path, "secret", "rm", "late", "--password-file", str(home.password_file))
        assert r.stdout == "removed late\nthe running proxy uses it now\n", r.stderr
        with agent_client(proc) as c:
            assert c.get("https://late.api.test/v1/gone").status_code == 502
        # Who, never the value: an admin record names the command that changed the keystore.
        admin = [r for r in proc.audit() if r["event"] == "admin"]
        assert [(r["caller"], r["reason"]) for r in admin][-2:] == [
            ("id:cli-secret-set", "reload"), ("id:cli-secret-rm", "reload")]
        assert value not in (home.path / "audit.jsonl").read_text()
        # passwd too: the running proxy keeps serving under the new password's keystore.
        new = tmp_path / "new-pw"
        new.write_text("a brand new master password")
        new.chmod(0o600)
        r = subprocess.run([*VP, "passwd", "--home", str(home.path), "--password-file",
                            str(home.password_file), "--new-password-file", str(new)],
                           capture_output=True, text=True, timeout=90, env=_env(), cwd=REPO)
        assert r.returncode == 0, r.stderr
        assert "the running proxy uses it now (`vaultproxy unlock` takes the new password" \
            in r.stdout


def test_completion_scripts_come_from_the_parser(tmp_path: Path) -> None:
    for shell in ("bash", "zsh", "fish"):
        r = subprocess.run([*VP, "completion", shell], capture_output=True, text=True,
                           timeout=60, cwd=REPO, check=True)
        assert "tail" in r.stdout and "follow" in r.stdout and "doctor" in r.stdout, shell
        script = tmp_path / f"vp.{shell}"
        script.write_text(r.stdout)
        if shell == "bash":
            subprocess.run(["bash", "-n", str(script)], check=True)
        if shell == "fish":
            subprocess.run(["fish", "--no-execute", str(script)], check=True)


def test_a_keystore_change_without_a_proxy_is_audited_by_the_cli(home: ProxyHome) -> None:
    value = make_canary()
    r = subprocess.run([*VP, "secret", "set", "offline", "--home", str(home.path),
                        "--password-file", str(home.password_file)], input=value,
                       capture_output=True, text=True, timeout=60, env=_env(), cwd=REPO)
    assert r.stdout == "stored offline\n", r.stderr  # no proxy: nothing more to say
    text = (home.path / "audit.jsonl").read_text()
    record = json.loads(text.splitlines()[-1])
    assert record["event"] == "admin" and record["reason"] == "secret-set"
    assert record["caller"] == f"cli:uid={os.getuid()}" and value not in text
