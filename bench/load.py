"""The load generator: `hey` (Debian package `hey`, Go). It speaks HTTP/1.1 with keep-alive
(or a new connection per request with -disable-keepalive), tunnels HTTPS through an HTTP proxy
with CONNECT (-x), and skips certificate verification (every proxy here mints its own).
``run_keepalive``: the same keep-alive GETs from bench/keepalive.py, without hey's spare
dials (the CPU-per-request rows of bench/lean.py and bench/peers.py).

Every run is bounded: either by duration (-z) or by count (-n), and by a subprocess timeout."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field


@dataclass
class HeyResult:
    total_s: float = 0.0
    rps: float = 0.0
    p50_ms: float | None = None
    p99_ms: float | None = None
    statuses: dict[int, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    raw: str = ""
    conns_opened: int | None = None  # run_keepalive: connections it opened (hey: unknown)

    def ok(self, expect: tuple[int, ...] = (200,)) -> bool:
        good = sum(n for s, n in self.statuses.items() if s in expect)
        return good > 0 and good == sum(self.statuses.values()) and not self.errors

    def problem(self) -> str:
        return f"statuses={self.statuses} errors={self.errors[:3]}"


_NUM = r"([0-9.]+)"


def parse(text: str) -> HeyResult:
    r = HeyResult(raw=text)
    if m := re.search(r"Total:\s+" + _NUM + " secs", text):
        r.total_s = float(m.group(1))
    if m := re.search(r"Requests/sec:\s+" + _NUM, text):
        r.rps = float(m.group(1))
    for pct, attr in (("50", "p50_ms"), ("99", "p99_ms")):
        if m := re.search(rf"\b{pct}% in " + _NUM + " secs", text):
            setattr(r, attr, float(m.group(1)) * 1000)
    for m in re.finditer(r"\[(\d{3})\]\s+(\d+) responses", text):
        r.statuses[int(m.group(1))] = int(m.group(2))
    if "Error distribution:" in text:
        tail = text.split("Error distribution:", 1)[1]
        r.errors = [ln.strip() for ln in tail.splitlines() if ln.strip()]
    return r


def hey_binary() -> str:
    path = shutil.which("hey")
    if path is None:
        raise RuntimeError("hey not found: apt-get install hey")
    return path


def run_hey(
    url: str,
    *,
    proxy: str | None,
    conns: int = 10,
    duration_s: float | None = None,
    count: int | None = None,
    keepalive: bool = True,
    headers: tuple[str, ...] = (),
    method: str = "GET",
    body_file: str | None = None,
    timeout_s: float = 60,
) -> HeyResult:
    # hey uses the Host header as the TLS server name; without -host that is "name:port",
    # which squid sends on upstream and then fails. -host = the bare name for every target.
    host = url.removeprefix("https://").split("/", 1)[0].rsplit(":", 1)[0]
    cmd = [
        hey_binary(),
        "-c",
        str(conns),
        "-t",
        str(int(timeout_s)),
        "-disable-compression",
        "-host",
        host,
    ]
    if duration_s is not None:
        cmd += ["-z", f"{duration_s:g}s"]
    else:
        cmd += ["-n", str(count or conns)]
    if proxy:
        cmd += ["-x", proxy]
    if not keepalive:
        cmd.append("-disable-keepalive")
    for h in headers:
        cmd += ["-H", h]
    if method != "GET":
        cmd += ["-m", method]
    if body_file:
        cmd += ["-D", body_file]
    cmd.append(url)
    limit = (duration_s or 0) + timeout_s + 30
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=limit, check=False)
    res = parse(out.stdout)
    if out.returncode != 0:
        res.errors.append(f"hey exited {out.returncode}: {out.stderr.strip()[:200]}")
    return res


def run_keepalive(
    url: str,
    *,
    proxy: str | None,
    conns: int = 10,
    duration_s: float | None = None,
    count: int | None = None,
    headers: tuple[str, ...] = (),
    timeout_s: float = 60,
) -> HeyResult:
    """``run_hey``'s keep-alive GETs from bench/keepalive.py (its own process): exactly
    ``conns`` connections, none dialled spare (hey's Go transport sometimes dials one per
    request and drops it before TLS; see passive_opens in bench/lean.py)."""
    import json
    import sys
    from pathlib import Path

    cmd = [sys.executable, str(Path(__file__).with_name("keepalive.py")), "-c", str(conns)]
    cmd += ["-z", f"{duration_s:g}"] if duration_s is not None else ["-n", str(count or conns)]
    if proxy:
        cmd += ["-x", proxy]
    for h in headers:
        cmd += ["-H", h]
    cmd.append(url)
    limit = (duration_s or 0) + timeout_s + 30
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=limit, check=False)
    res = HeyResult(raw=out.stdout)
    if out.returncode != 0:
        res.errors.append(f"keepalive.py exited {out.returncode}: {out.stderr.strip()[-300:]}")
        return res
    data = json.loads(out.stdout)
    res.total_s, res.rps = float(data["total_s"]), float(data["rps"])
    res.p50_ms, res.p99_ms = data["p50_ms"], data["p99_ms"]
    res.statuses = {int(k): int(v) for k, v in data["statuses"].items()}
    res.errors = list(data["errors"])
    res.conns_opened = int(data["conns_opened"])
    return res


@dataclass
class SeqResult:
    count: int
    rps: float
    p50_ms: float
    p99_ms: float
    bad: int

    def ok(self) -> bool:
        return self.count > 0 and self.bad == 0

    def problem(self) -> str:
        return f"{self.bad} of {self.count} responses were not 200"


def sequential(
    base: str, path: str, *, proxy: str | None, headers: tuple[str, ...], count: int, limit_s: float
) -> SeqResult:
    """One keep-alive connection (through a CONNECT tunnel when proxied), one request at a time,
    timed with perf_counter (hey prints latencies in 0.1 ms steps, too coarse for direct).
    Client: Python's http.client; stops after `count` requests or `limit_s` seconds."""
    import http.client
    import ssl
    import time

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # each proxy mints its own certificate
    host, _, port = base.removeprefix("https://").partition(":")
    if proxy:
        phost, pport = proxy.removeprefix("http://").rsplit(":", 1)
        conn = http.client.HTTPSConnection(phost, int(pport), context=ctx, timeout=20)
        conn.set_tunnel(host, int(port or 443))
    else:
        conn = http.client.HTTPSConnection(host, int(port or 443), context=ctx, timeout=20)
    hdrs = dict(h.split(": ", 1) for h in headers)
    times: list[float] = []
    bad = 0
    start = time.perf_counter()
    try:
        while len(times) < count and time.perf_counter() - start < limit_s:
            t0 = time.perf_counter()
            conn.request("GET", path, headers=hdrs)
            resp = conn.getresponse()
            resp.read()
            times.append(time.perf_counter() - t0)
            bad += resp.status != 200
    finally:
        conn.close()
    elapsed = time.perf_counter() - start
    times.sort()
    n = len(times)
    if n == 0:
        return SeqResult(0, 0.0, 0.0, 0.0, 0)
    return SeqResult(
        count=n,
        rps=n / elapsed,
        p50_ms=times[n // 2] * 1000,
        p99_ms=times[min(n - 1, int(n * 0.99))] * 1000,
        bad=bad,
    )
