"""Proxy processes are non-dumpable (``prctl(PR_SET_DUMPABLE, 0)``): another process of the
same, non-root uid cannot read their /proc/PID/{environ,mem}. Two processes under one
unprivileged uid (``setpriv``), the proxy with two workers; the negative twin is a plain
process of that uid, whose environment the same reader does get.

Every process here (proxy, reader, twin) also holds one ambient capability,
CAP_DAC_READ_SEARCH, only because this machine's Python lives under /root (0700); all of
them hold the same one, so the kernel's "same uid, same capabilities" ptrace rule applies
unchanged and only the dumpable flag tells the proxy and the twin apart."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import canary
from tests.harness.proxy import REPO, ProxyHome

pytestmark = [
    pytest.mark.security,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run processes as another uid"),
    pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) missing"),
]

MARKER = "VP_NODUMP_MARKER"


def _as(uid: int, gid: int) -> list[str]:
    return ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups",
            "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"]


@pytest.fixture(scope="module")
def nobody() -> tuple[int, int]:
    pw = pwd.getpwnam("nobody")
    return pw.pw_uid, pw.pw_gid


@pytest.fixture(scope="module")
def proxy(nobody: tuple[int, int]) -> Iterator[tuple[list[int], Path]]:
    base = Path(tempfile.mkdtemp(dir="/tmp", prefix="vp-nodump-"))
    os.chmod(base, 0o755)
    canary.watch(base)
    home = ProxyHome.create(base, "", {})
    uid, gid = nobody
    for p in [base, *base.rglob("*")]:
        os.chown(p, uid, gid, follow_symlinks=False)
    env = {**os.environ, "HOME": str(base), MARKER: "proxy-environment"}
    log = open(base / "proxy.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [*_as(uid, gid), sys.executable, "-m", "vaultproxy", "run", "--home", str(home.path),
         "--password-file", str(home.password_file), "--listen", "127.0.0.1:0",
         "--admin-listen", "127.0.0.1:0", "--dashboard-listen", "", "--workers", "2"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO, env=env)
    run_json = home.path / "run.json"
    pids: list[int] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if run_json.exists():
            data = json.loads(run_json.read_text() or "{}")
            if data.get("pid") == proc.pid:
                pids = [proc.pid, *data["worker_pids"]]
                break
        time.sleep(0.05)
    try:
        assert pids, (base / "proxy.log").read_text()
        yield pids, base
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
        shutil.rmtree(base, ignore_errors=True)


def _read_as(uid_gid: tuple[int, int], path: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*_as(*uid_gid), "cat", path], capture_output=True, timeout=30)


def test_same_uid_cannot_read_the_proxys_environ_or_memory(
    proxy: tuple[list[int], Path], nobody: tuple[int, int]
) -> None:
    pids, _ = proxy
    assert len(pids) == 2  # the supervisor and one worker
    for pid in pids:
        status = Path(f"/proc/{pid}/status").read_text()
        assert f"Uid:\t{nobody[0]}" in status  # really running as the unprivileged uid
        for what in ("environ", "mem"):
            r = _read_as(nobody, f"/proc/{pid}/{what}")
            assert r.returncode != 0 and b"Permission denied" in r.stderr, (pid, what)
            assert MARKER.encode() not in r.stdout
        reader = subprocess.run(
            [*_as(*nobody), sys.executable, "-c",
             f"import os; os.kill({pid}, 0); open('/proc/{pid}/maps').read()"],
            capture_output=True, text=True, timeout=30)
        assert "PermissionError" in reader.stderr  # maps too: nothing to aim a reader at


def test_twin_a_plain_process_of_the_same_uid_is_readable(nobody: tuple[int, int]) -> None:
    plain = subprocess.Popen([*_as(*nobody), sys.executable, "-c",
                              "import time; time.sleep(60)"],
                             env={**os.environ, MARKER: "plain-environment"})
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # until setpriv has exec'd sleep as nobody
            if f"Uid:\t{nobody[0]}" in Path(f"/proc/{plain.pid}/status").read_text():
                break
            time.sleep(0.02)
        r = _read_as(nobody, f"/proc/{plain.pid}/environ")
        assert r.returncode == 0 and f"{MARKER}=plain-environment".encode() in r.stdout
    finally:
        plain.kill()
        plain.wait()
