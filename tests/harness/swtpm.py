"""A real software TPM 2.0 (Debian `swtpm`) on loopback ports, fresh state per instance."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest


def require_tpm_stack() -> None:
    """Skip without swtpm or tpm2-pytss, except in CI (CI=true), where that is a failure."""
    missing = []
    if shutil.which("swtpm") is None:
        missing.append("swtpm (apt-get install swtpm swtpm-tools)")
    try:
        import tpm2_pytss  # noqa: F401
    except ImportError:
        missing.append("tpm2-pytss (pip install -e '.[tpm]', needs libtss2-dev)")
    if missing:
        message = "TPM tests need " + " and ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(message + "; .ci/run installs them")
        pytest.skip(message)


def _free_pair() -> int:
    """A port P with P and P+1 both free on 127.0.0.1 (server and control channel)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port >= 65535:
            continue
        with socket.socket() as s2:
            try:
                s2.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no free pair of loopback ports")


@dataclass
class Swtpm:
    proc: subprocess.Popen[bytes]
    port: int
    state: Path

    @property
    def tcti(self) -> str:
        return f"swtpm:host=127.0.0.1,port={self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start(state: Path) -> Swtpm:
    state.mkdir(parents=True, exist_ok=True)
    for _ in range(5):
        port = _free_pair()
        proc = subprocess.Popen(
            ["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={state}",
             "--server", f"type=tcp,port={port},bindaddr=127.0.0.1",
             "--ctrl", f"type=tcp,port={port + 1},bindaddr=127.0.0.1",
             "--flags", "not-need-init,startup-clear"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and proc.poll() is None:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                return Swtpm(proc, port, state)
            time.sleep(0.05)
        proc.kill()
        proc.wait()
    raise RuntimeError("swtpm did not start")


@contextlib.contextmanager
def running(state: Path) -> Iterator[Swtpm]:
    tpm = start(state)
    try:
        yield tpm
    finally:
        tpm.stop()
