"""Soak under a fault schedule (``bench/soak.py --faults``): is every request answered and
every forward audited while things break, and how long until the proxy serves again?

A Python load (threads, one keep-alive httpx client each, GET ``/auth`` on the host_inject
service; nginx logs each Authorization it receives) runs against ``vaultproxy run --workers
2`` while the schedule injects, one after another with a quiet spell between:

- ``kill``: SIGKILL worker 1; recovered when its replacement serves;
- ``stop``: SIGSTOP worker 1 (a wedged process looks the same); recovered when the
  supervisor's heartbeat has replaced it (SIGCONT afterwards: the old one drains and exits);
- ``fds``: RLIMIT_NOFILE of every proxy process lowered to what it holds + 48 and 400 idle
  connections opened for a few seconds; recovered at the first 204 after they close;
- ``upstream``: nginx shut down for a few seconds, then started again on the same port;
  recovered at the first 204 after it is back.

Reported: requests sent, answered by status, **unanswered** (no HTTP answer at all: reset,
timeout; goal 0), **unaudited forwards** (requests nginx received minus the ``forward``
records audit.jsonl holds for them; goal 0), and per fault the time to recover.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.targets import Vaultproxy
from bench.upstream import Nginx

OK = 204


@dataclass
class Load:
    proxy_url: str
    base: str
    ca_file: Path
    threads: int = 8
    statuses: Counter[int] = field(default_factory=Counter)
    unanswered: Counter[str] = field(default_factory=Counter)
    timeline: list[tuple[float, int]] = field(default_factory=list)  # (t, status or 0)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _workers: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Load:
        for _ in range(self.threads):
            t = threading.Thread(target=self._run, daemon=True)
            t.start()
            self._workers.append(t)
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._workers:
            t.join(60)

    def _client(self) -> httpx.Client:  # noqa: TID251 - an agent, not the proxy
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        return httpx.Client(  # noqa: TID251 - the load is an agent, not the proxy
            proxy=self.proxy_url, verify=ctx, timeout=30, trust_env=False)

    def _run(self) -> None:
        client = self._client()
        try:
            while not self._stop.is_set():
                try:
                    status = client.get(self.base + "/auth").status_code
                    why = None
                except httpx.ProxyError as e:  # the CONNECT was answered, with an error
                    status, why = _connect_status(e), None
                    client.close()
                    client = self._client()
                except httpx.HTTPError as e:
                    status, why = 0, type(e).__name__
                    client.close()
                    client = self._client()
                with self._lock:
                    self.timeline.append((time.monotonic(), status))
                    if why is None:
                        self.statuses[status] += 1
                    else:
                        self.unanswered[why] += 1
                if status != OK:
                    time.sleep(0.05)
        finally:
            client.close()

    def first_ok_after(self, t0: float, limit: float = 60.0) -> float | None:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            with self._lock:
                for t, status in self.timeline:
                    if t >= t0 and status == OK:
                        return t - t0
            time.sleep(0.05)
        return None


def _connect_status(e: httpx.ProxyError) -> int:
    """httpx says ``503 Service Unavailable`` (the proxy's answer to the CONNECT)."""
    head = str(e).split(" ", 1)[0]
    return int(head) if head.isdigit() else 0


def worker_pids(target: Vaultproxy) -> list[int]:
    assert target.home is not None
    data = json.loads((target.home.path / "run.json").read_text())
    return [int(p) for p in data.get("worker_pids", [])]


def until(pred: Callable[[], bool], limit: float = 60.0) -> float | None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        with contextlib.suppress(OSError, ValueError):
            if pred():
                return time.monotonic() - t0
        time.sleep(0.05)
    return None


def replaced(target: Vaultproxy, old: int) -> bool:
    """A new worker in the slot says it serves (run.json lists it from its start)."""
    pids = worker_pids(target)
    log = (target.workdir / f"vaultproxy-{target.name}.log").read_text(errors="replace")
    return bool(pids) and old not in pids and f"(pid {pids[0]}) serves" in log


def serving_worker(target: Vaultproxy) -> int:
    """Worker 1, once it serves (the previous fault's replacement may still be starting)."""
    def ready() -> bool:
        pids = worker_pids(target)
        log = (target.workdir / f"vaultproxy-{target.name}.log").read_text(errors="replace")
        return bool(pids) and (tuple(pids) == target.worker_pids
                               or f"(pid {pids[0]}) serves" in log)

    until(ready)
    return worker_pids(target)[0]


def fault_kill(target: Vaultproxy, load: Load, nginx: Nginx) -> float | None:
    old = serving_worker(target)
    os.kill(old, signal.SIGKILL)
    return until(lambda: replaced(target, old))


def fault_stop(target: Vaultproxy, load: Load, nginx: Nginx) -> float | None:
    old = serving_worker(target)
    os.kill(old, signal.SIGSTOP)
    try:
        return until(lambda: replaced(target, old))
    finally:
        with contextlib.suppress(ProcessLookupError):  # the supervisor may have ended it
            os.kill(old, signal.SIGCONT)


def fault_fds(target: Vaultproxy, load: Load, nginx: Nginx) -> float | None:
    pids = [target.proc.pid, *worker_pids(target)] if target.proc is not None else []
    before: dict[int, tuple[int, int]] = {}
    for p in pids:
        with contextlib.suppress(OSError):  # a worker being replaced right now
            before[p] = resource.prlimit(p, resource.RLIMIT_NOFILE)
            n = len(os.listdir(f"/proc/{p}/fd")) + 48
            resource.prlimit(p, resource.RLIMIT_NOFILE, (n, before[p][1]))
    port = int(load.proxy_url.rsplit(":", 1)[1])
    idle = []
    try:
        for _ in range(400):
            s = socket.socket()
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                s.connect(("127.0.0.1", port))
            idle.append(s)
        time.sleep(4.0)
    finally:
        for s in idle:
            s.close()
        for p, lim in before.items():
            with contextlib.suppress(OSError):
                resource.prlimit(p, resource.RLIMIT_NOFILE, lim)
    return load.first_ok_after(time.monotonic())


def fault_upstream(target: Vaultproxy, load: Load, nginx: Nginx) -> float | None:
    nginx.kill()
    time.sleep(4.0)
    nginx.restart()
    return load.first_ok_after(time.monotonic())


FAULTS: dict[str, Callable[[Vaultproxy, Load, Nginx], float | None]] = {
    "kill": fault_kill, "stop": fault_stop, "fds": fault_fds, "upstream": fault_upstream,
}


def run_schedule(target: Vaultproxy, nginx: Nginx, quiet: float) -> dict[str, object]:
    """Load ``target`` and inject every fault in turn; the counts and recovery times."""
    assert target.proxy is not None and target.home is not None
    up0 = nginx.auth_lines()
    load = Load(target.proxy, target.base, target.home.path / "ca.crt").start()
    recover: dict[str, float | None] = {}
    try:
        time.sleep(quiet)
        for name, inject in FAULTS.items():
            recover[name] = inject(target, load, nginx)
            time.sleep(quiet)
    finally:
        load.stop()
    return {
        "sent": sum(load.statuses.values()) + sum(load.unanswered.values()),
        "statuses": dict(load.statuses), "unanswered": dict(load.unanswered),
        "upstream": nginx.auth_lines() - up0, "recover": recover,
    }
