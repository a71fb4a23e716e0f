"""The serving processes' event loop (engine/loop.py): `vaultproxy run` and each of its
``--workers`` workers run on uvloop; ``VAULTPROXY_UVLOOP=0`` keeps asyncio's default loop.

Read off the running processes themselves: ``/proc/<pid>/maps`` shows uvloop's extension
module (``uvloop/loop.cpython-*.so``) mapped into a process that imported it, and each
process's INFO line names the loop it serves on. The twin, started with the variable at 0,
maps no uvloop and names asyncio's loop -- so the probe can tell the two apart."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness.proxy import REPO, ProxyProcess
from tests.harness.upstream import Upstream
from tests.integration.conftest import agent_client, service_block

pytestmark = pytest.mark.integration

UVLOOP_SO = re.compile(r"/uvloop/loop\.cpython-[^/\s]+\.so$", re.M)


def _start(start_proxy: object, upstream: Upstream, env: dict[str, str]) -> ProxyProcess:
    services = service_block("ev", "host_inject", "bearer", upstream.port)
    return start_proxy(  # type: ignore[operator,no-any-return]
        services, {"ev": "ev-secret-value"}, args=("--workers", "2"),
        env={**os.environ, **env},
    )


@pytest.fixture(scope="module")
def uv_proxy(start_proxy: object, upstream: Upstream) -> ProxyProcess:
    env = {k: v for k, v in os.environ.items() if k == "VAULTPROXY_UVLOOP"}
    assert not env, "the default (no VAULTPROXY_UVLOOP) is what this fixture runs"
    return _start(start_proxy, upstream, {})


@pytest.fixture(scope="module")
def asyncio_proxy(start_proxy: object, upstream: Upstream) -> ProxyProcess:
    return _start(start_proxy, upstream, {"VAULTPROXY_UVLOOP": "0"})


def _pids(proxy: ProxyProcess) -> list[int]:
    workers = [int(p) for p in proxy.extra.get("worker_pids", [])]  # type: ignore[attr-defined]
    assert len(workers) == 1, proxy.extra
    return [proxy.proc.pid, *workers]


def _maps_uvloop(pid: int) -> bool:
    return UVLOOP_SO.search(Path(f"/proc/{pid}/maps").read_text()) is not None


def _serves(proxy: ProxyProcess) -> None:
    with agent_client(proxy) as c:
        r = c.get("https://ev.api.test/loop")
    assert r.status_code == 200, r.text


def test_run_and_its_worker_serve_on_uvloop(uv_proxy: ProxyProcess) -> None:
    _serves(uv_proxy)
    out = uv_proxy.output()
    for pid in _pids(uv_proxy):
        assert _maps_uvloop(pid), f"pid {pid} has no uvloop mapped"
        assert re.search(rf"INFO vaultproxy\.loop: event loop: uvloop \S+ \(pid {pid}\)", out), out


def test_twin_uvloop_off_serves_on_asyncio_default_loop(asyncio_proxy: ProxyProcess) -> None:
    _serves(asyncio_proxy)
    out = asyncio_proxy.output()
    for pid in _pids(asyncio_proxy):
        assert not _maps_uvloop(pid), f"pid {pid} has uvloop mapped"
        assert re.search(
            rf"INFO vaultproxy\.loop: event loop: asyncio _UnixSelectorEventLoop \(pid {pid}\)",
            out,
        ), out
    assert "uvloop" not in out


def test_a_value_it_does_not_understand_is_refused_before_start(tmp_path: Path) -> None:
    # Refused while parsing the command (before the home is even read): exit 2, one line
    # naming the variable and the values it takes.
    env = {**os.environ, "VAULTPROXY_UVLOOP": "maybe"}
    out = subprocess.run(
        [sys.executable, "-m", "vaultproxy", "run", "--home", str(tmp_path / "none"),
         "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=60, env=env, cwd=REPO, stdin=subprocess.DEVNULL,
    )
    assert out.returncode == 2, out
    assert "VAULTPROXY_UVLOOP='maybe' is not understood" in out.stderr
    assert "set it to 1 (uvloop, the default) or 0" in out.stderr
