# ruff: noqa: E501  (table labels)
"""Over a WAN: direct vs through vaultproxy, with an upstream behind a userspace delay relay.

    .venv/bin/python bench/rtt.py                 # RTT 20 and 100 ms, 20 calls each
    .venv/bin/python bench/rtt.py --rtt 20 --calls 10
    .venv/bin/python bench/rtt.py --only dial,prewarm   # the pool's dial: TLS resumption
                                                       # A/B; first request after a reload

The kernel here has no netem, so ../shared/tools/delayrelay.py (or bench's copy beside the
checkout's shared/) delays every chunk by RTT/2 in each direction and adds one round trip
before the first byte (the TCP handshake). nginx serves 1 KB over TLS behind it.

Workloads, as an agent loop makes them:
  new connection   N sequential `curl` processes (gh/git/curl style): every call opens a new
                   connection; through vaultproxy the client's connection is local and the
                   upstream one crosses the WAN.
  keep-alive       one `curl` process fetching the URL N times over one connection.
  dial             the pool's own transport (net/outbound.py) opening a new upstream
                   connection per request (the upstream closes each): a full TLS handshake
                   (resumption off) vs a resumed session, interleaved; wall time and the
                   client's CPU time per request.
  prewarm          the first request (a new curl) after a reload, through a pooled service
                   with `prewarm = 1` vs without (the reload drops the pool; SIGHUP, 2 s).
Reported: p50 and p90 of curl's own time_total per request, and the ratio vaultproxy/direct.
All traffic stays on 127.0.0.1."""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.targets import Vaultproxy, VaultproxyHome
from bench.upstream import Nginx, stop_process

REPO = Path(__file__).resolve().parents[1]
RELAY_CANDIDATES = (
    REPO.parent / "shared" / "tools" / "delayrelay.py",
    REPO.parents[1] / "shared" / "tools" / "delayrelay.py",  # a worktree under wt/
)
HOST = "hi.bench.test"


def relay_script() -> Path:
    for p in RELAY_CANDIDATES:
        if p.exists():
            return p
    raise SystemExit("delayrelay.py not found beside the checkout (../shared/tools/)")


def start_relay(workdir: Path, port: int, one_way_ms: float) -> tuple[subprocess.Popen[bytes], int]:
    port_file = workdir / f"relay-{port}-{one_way_ms}.port"
    port_file.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [sys.executable, str(relay_script()), str(port_file), "127.0.0.1", str(port), str(one_way_ms)],
        stdin=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while not port_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("delay relay did not start")
        time.sleep(0.02)
    return proc, int(port_file.read_text())


def services_toml(relay_port: int, pool_idle: int | None = None, prewarm: int = 0) -> str:
    head = f"[proxy]\nupstream_pool_idle = {pool_idle}\n\n" if pool_idle is not None else ""
    return head + (
        f'[[service]]\nname = "hi"\nhosts = ["{HOST}"]\nmode = "host_inject"\nauth = "bearer"\n'
        f'connect_to = "127.0.0.1:{relay_port}"\nallow_loopback = true\nca_cert = "upstream-ca.pem"\n'
        f"prewarm = {prewarm}\n"
    )


def curl_times(args: list[str], url: str, n: int, *, one_process: bool) -> list[float]:
    """curl's own time_total (seconds) per request."""
    fmt = "%{time_total}\\n"
    base = ["curl", "-s", "-w", fmt, *args]
    if one_process:
        urls = [a for _ in range(n) for a in ("-o", "/dev/null", url)]
        out = subprocess.run([*base, *urls], capture_output=True, text=True, check=True).stdout
        times = [float(x) for x in out.split()]
        # curl reports each transfer's time from its own start: keep-alive reuse shows as
        # the later transfers' lower times; the first carries the handshakes.
        return times
    times = []
    for _ in range(n):
        out = subprocess.run([*base, "-o", "/dev/null", url], capture_output=True, text=True, check=True).stdout
        times.append(float(out.strip()))
    return times


def summary(times: list[float]) -> tuple[float, float]:
    ms = sorted(t * 1000 for t in times)
    return statistics.median(ms), ms[min(len(ms) - 1, int(len(ms) * 0.9))]


def measure(rtt: float, calls: int, work: Path, nginx: Nginx, home_base: Path) -> list[tuple[str, float, float]]:
    relay, relay_port = start_relay(work, nginx.port, rtt / 2)
    rows: list[tuple[str, float, float]] = []
    proxies: list[Vaultproxy] = []
    try:
        targets: list[tuple[str, list[str]]] = [
            ("direct", ["--cacert", str(nginx.ca_file), "--connect-to", f"{HOST}:443:127.0.0.1:{relay_port}"]),
        ]
        # vaultproxy as configured by default (warm upstream pool), and with the pool off
        # (upstream_pool_idle = 0: mitmproxy's one upstream connection per agent connection)
        for who, idle in (("vaultproxy", None), ("vaultproxy, no pool", 0)):
            home = VaultproxyHome.create(home_base / f"home-{int(rtt)}-{idle}", nginx)
            (home.path / "services.toml").write_text(services_toml(relay_port, idle))
            vp = Vaultproxy("vp", "vaultproxy", nginx, work / f"vp-{int(rtt)}-{idle}")
            vp.home = home
            vp.start()
            proxies.append(vp)
            assert vp.proxy is not None
            targets.append((who, ["--cacert", str(home.path / "ca.crt"), "--proxy", vp.proxy]))
        url = f"https://{HOST}/1k"
        for label, one in (("new connection", False), ("keep-alive", True)):
            for _, args in targets:
                curl_times(args, url, 2, one_process=one)  # warm: DNS, CA load, proxy caches
            times: dict[str, list[float]] = {who: [] for who, _ in targets}
            rounds = calls if not one else 1
            for _ in range(rounds):  # interleaved: each round runs every target once
                for who, args in targets:
                    t = curl_times(args, url, 1 if not one else calls + 1, one_process=one)
                    times[who] += t[1:] if one else t  # keep-alive: the first opens it
            for who, _ in targets:
                p50, p90 = summary(times[who])
                rows.append((f"RTT {rtt:g} ms, {label}, {who}", p50, p90))
    finally:
        for vp in proxies:
            vp.stop()
        stop_process(relay)
    return rows


def measure_dial(rtt: float, calls: int, work: Path, nginx: Nginx) -> list[tuple[str, float, float]]:
    """A new upstream connection per request through the pool's transport: full vs resumed."""
    import asyncio

    from vaultproxy.net.outbound import UpstreamKey, pool_transport

    relay, relay_port = start_relay(work, nginx.port, rtt / 2)
    wall: dict[str, list[float]] = {"full TLS handshake": [], "resumed TLS session": []}
    cpu: dict[str, list[float]] = {k: [] for k in wall}

    async def run() -> None:
        key = UpstreamKey("hi", HOST, nginx.ca_file, False)
        pools = {"full TLS handshake": pool_transport(key, http2=False, idle=30, resume=False),
                 "resumed TLS session": pool_transport(key, http2=False, idle=30)}
        url = f"https://127.0.0.1:{relay_port}/1k"
        ext = {"sni_hostname": HOST}
        for i in range(calls + 1):
            for who, pool in pools.items():  # interleaved
                t0, c0 = time.perf_counter(), time.process_time()
                r = await pool.request("GET", url, headers={"Host": HOST, "Connection": "close"}, extensions=ext)
                assert r.status == 200, (r.status, r.content[:200])
                if i:  # the first fills the resumed pool's session
                    wall[who].append(time.perf_counter() - t0)
                    cpu[who].append(time.process_time() - c0)
        for pool in pools.values():
            await pool.aclose()

    try:
        asyncio.run(run())
    finally:
        stop_process(relay)
    rows = []
    for who in wall:
        p50, p90 = summary(wall[who])
        rows.append((f"RTT {rtt:g} ms, pool dial per request, {who}", p50, p90))
        c50, c90 = summary(cpu[who])
        rows.append((f"RTT {rtt:g} ms, pool dial per request, {who}, client CPU", c50, c90))
    return rows


def measure_prewarm(rtt: float, calls: int, work: Path, nginx: Nginx, home_base: Path) -> list[tuple[str, float, float]]:
    """The first agent request after a reload (which drops the pool): prewarm = 1 vs 0."""
    import signal

    relay, relay_port = start_relay(work, nginx.port, rtt / 2)
    proxies: dict[str, Vaultproxy] = {}
    times: dict[str, list[float]] = {}
    try:
        for who, n in (("vaultproxy, no prewarm", 0), ("vaultproxy, prewarm = 1", 1)):
            home = VaultproxyHome.create(home_base / f"home-pw-{int(rtt)}-{n}", nginx)
            (home.path / "services.toml").write_text(services_toml(relay_port, None, n))
            vp = Vaultproxy("vp", "vaultproxy", nginx, work / f"vp-pw-{int(rtt)}-{n}")
            vp.home = home
            vp.start()
            proxies[who] = vp
            times[who] = []
        url = f"https://{HOST}/1k"
        for _ in range(max(3, calls // 4)):
            for vp in proxies.values():
                assert vp.proc is not None
                vp.proc.send_signal(signal.SIGHUP)
            time.sleep(2.0)  # the reload, the pool's upkeep (1 s) and the pre-warm dial
            for who, vp in proxies.items():
                assert vp.proxy is not None and vp.home is not None
                args = ["--cacert", str(vp.home.path / "ca.crt"), "--proxy", vp.proxy]
                times[who] += curl_times(args, url, 1, one_process=False)
    finally:
        for vp in proxies.values():
            vp.stop()
        stop_process(relay)
    return [(f"RTT {rtt:g} ms, first request after a reload, {who}", *summary(t))
            for who, t in times.items()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rtt", type=float, action="append", help="round trip ms (repeatable; default 20 and 100)")
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--only", default="connections", help="comma list of: connections (the default), dial, prewarm")
    opts = ap.parse_args()
    rtts = opts.rtt or [20.0, 100.0]
    only = set(opts.only.split(","))
    with tempfile.TemporaryDirectory(prefix="vp-rtt-") as tmp:
        work = Path(tmp)
        work.chmod(0o755)  # nginx workers run unprivileged when we are root (else: 403s)
        nginx = Nginx(work / "nginx").start()
        try:
            rows = []
            for rtt in rtts:
                if "connections" in only:
                    rows += measure(rtt, opts.calls, work, nginx, work)
                if "dial" in only:
                    rows += measure_dial(rtt, opts.calls, work, nginx)
                if "prewarm" in only:
                    rows += measure_prewarm(rtt, opts.calls, work, nginx, work)
        finally:
            nginx.stop()
    print(f"load average (1/5/15 min) at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"| workload ({opts.calls} requests) | p50 ms | p90 ms |")
    print("|---|---|---|")
    for label, p50, p90 in rows:
        print(f"| {label} | {p50:.1f} | {p90:.1f} |")
    by = {label: p50 for label, p50, _ in rows}
    for rtt in rtts if "connections" in only else []:
        for kind in ("new connection", "keep-alive"):
            d = by[f"RTT {rtt:g} ms, {kind}, direct"]
            v = by[f"RTT {rtt:g} ms, {kind}, vaultproxy"]
            n = by[f"RTT {rtt:g} ms, {kind}, vaultproxy, no pool"]
            print(f"RTT {rtt:g} ms {kind}: vaultproxy/direct p50 = {v / d:.2f} "
                  f"(no pool: {n / d:.2f})")


if __name__ == "__main__":
    main()
