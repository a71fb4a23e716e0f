"""README.md's first steps, run as written: `make demo` (on free ports, in a temporary demo
home) and then every command of the Quickstart block, offline. The demo brings its own
HTTPS echo upstream: the upstream must receive the demo secret, the agent (curl) must see
only the placeholder.

The only changes to the README's text are the ones README itself names: the ports
(`make demo DEMO_PORT=... DEMO_ADMIN_PORT=...`) and the demo home's location.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.harness.proxy import REPO
from tests.harness.upstream import free_port
from vaultproxy.keystore import Keystore
from vaultproxy.secret import Secret

pytestmark = [pytest.mark.integration, pytest.mark.slow]

INTERNET = "needs the internet"


def quickstart_commands(readme: str) -> list[str]:
    """The command lines of the first ```sh block under "## Quickstart"."""
    section = readme.split("## Quickstart", 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    lines = [ln for ln in block.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    return [ln for ln in lines if INTERNET not in ln]


def first_commands(readme: str) -> list[str]:
    block = readme.split("```sh\n", 1)[1].split("```", 1)[0]
    return [ln.split("#", 1)[0].strip() for ln in block.splitlines() if ln.strip()]


def _wait_for(pred, timeout: float = 120.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.1)
    return False


def test_readme_opens_with_the_two_setup_commands() -> None:
    assert first_commands((REPO / "README.md").read_text()) == ["make demo", "make test"]


@pytest.mark.skipif(shutil.which("make") is None or shutil.which("curl") is None,
                    reason="needs make and curl")
@pytest.mark.skipif(not (REPO / ".venv" / "bin" / "vaultproxy").exists(),
                    reason="needs the repository's .venv (make venv)")
def test_quickstart_runs_offline_as_written(tmp_path: Path) -> None:
    readme = (REPO / "README.md").read_text()
    commands = quickstart_commands(readme)
    assert commands and commands[0].startswith("curl ") and "echo.demo.internal" in commands[0]
    demo = tmp_path / "demo-home"
    port, admin_port = free_port(), free_port()
    log = tmp_path / "make-demo.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAULTPROXY_")}
    with open(log, "wb") as out:
        # -o: never rebuild .venv in the middle of a test run (make venv did it already).
        make = subprocess.Popen(
            ["make", "-o", ".venv/.installed", "demo", f"DEMO={demo}", f"DEMO_PORT={port}",
             f"DEMO_ADMIN_PORT={admin_port}", f"DEMO_DASHBOARD_PORT={free_port()}"],
            cwd=REPO, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            start_new_session=True,
        )
    try:
        ready = _wait_for(lambda: make.poll() is not None or "fingerprint" in log.read_text())
        assert ready and make.poll() is None, log.read_text()
        results = []
        for command in commands:
            cmd = command.replace("127.0.0.1:3203", f"127.0.0.1:{port}")
            cmd = cmd.replace("demo-home", str(demo))
            if cmd.startswith("tail "):  # the audit log is flushed within a second
                assert _wait_for(lambda: (demo / "audit.jsonl").exists()
                                 and (demo / "audit.jsonl").stat().st_size > 0, 30)
            r = subprocess.run(["sh", "-c", cmd], cwd=REPO, capture_output=True, text=True,
                               timeout=120, env=env, start_new_session=True)
            assert r.returncode == 0, (command, r.stdout, r.stderr, log.read_text())
            results.append(r)

        # What the agent saw: the echo of its request, with the placeholder only.
        echoed = json.loads(results[0].stdout)
        assert echoed["headers"]["Authorization"] == "Bearer __vault.echo__"
        # What the upstream received: the demo secret (printed by the echo service).
        password = Secret((tmp_path / "demo-home.password").read_bytes().strip())
        entry = Keystore.open(demo / "keystore.enc", password).get("demo")
        assert entry is not None and entry.value is not None
        secret = entry.value.reveal().decode()
        assert re.fullmatch(r"demo_[0-9a-f]{32}", secret)
        assert _wait_for(lambda: f"Authorization: Bearer {secret}" in log.read_text(), 30)
        assert secret not in results[0].stdout + results[0].stderr
        outputs = "".join(r.stdout for r in results)
        assert "running for" in outputs and "services.toml OK" in outputs
        assert '"host":"echo.demo.internal"' in outputs and '"outcome":"injected"' in outputs
    finally:
        # Ctrl-C in the `make demo` terminal: the proxy and the echo service both stop.
        if make.poll() is None:
            os.killpg(make.pid, signal.SIGINT)
        try:
            make.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(make.pid, signal.SIGKILL)
            make.wait()
    echo_port = int((demo / "echo.port").read_text())
    assert make.returncode is not None
    for p in (port, echo_port):
        assert _wait_for(lambda p=p: _refused(p), 30), f"port {p} still accepts after Ctrl-C"
    assert not (demo / "run.json").exists()


def _refused(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.connect(("127.0.0.1", port))
        except ConnectionRefusedError:
            return True
    return False
