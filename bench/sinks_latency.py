# ruff: noqa: E501  (table rows)
"""Request latency with audit sinks that are healthy, slow, refusing or down (SPEC §13: a sink
never slows a request).

    .venv/bin/python bench/sinks_latency.py            # 400 request pairs per case (~2 min)
    .venv/bin/python bench/sinks_latency.py --quick    # 100
    .venv/bin/python bench/sinks_latency.py --sinks webhook --cases ok,slow

One agent (httpx, keep-alive, one tunnel per proxy) sends GETs in sequence through two
``vaultproxy run`` processes to a local TLS upstream (host_inject bearer), alternating one
request to a proxy without sinks (the baseline) and one to a proxy with every network sink
(syslog over TCP, webhook, otlp logs, traces), so other load on the machine hits both alike.
Per case, p50 / p95 / p99 / max of the request time for both. Cases: receivers healthy
("ok"), slow (the HTTP receivers sleep 30 s before answering, the syslog receiver accepts
and never reads), refusing (HTTP 500, TCP reset), down (nothing listens). Every request
must be answered with 200 and audited in ``audit.jsonl`` (exit status 1 otherwise).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.harness.proxy import ProxyHome, ProxyProcess
from tests.harness.sink_receivers import HttpReceiver
from tests.harness.upstream import Upstream, free_port
from tests.integration.conftest import agent_client, service_block

SECRET = "bench-sinks-token"  # not a canary: the bench runs outside pytest


class TcpReceiver:
    """Syslog over TCP: "ok" reads everything, "slow" never reads, "refuse" resets."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            if self.mode == "ok":
                threading.Thread(target=self._drain, args=(conn,), daemon=True).start()
            elif self.mode == "slow":
                self.held.append(conn)
            else:
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                conn.close()

    @staticmethod
    def _drain(conn: socket.socket) -> None:
        with conn:
            while conn.recv(65536):
                pass

    def close(self) -> None:
        self.server.close()
        for c in self.held:
            c.close()


def start_proxy(base: Path, up: Upstream, mode: str | None, sinks: tuple[str, ...],
                held: list[object]) -> ProxyProcess:
    """A proxy with the network sinks pointed at receivers in ``mode`` (None: no sinks)."""
    audit = ""
    env: dict[str, str] = {}
    if mode is not None:
        hook = otlp = tcp = None
        if mode != "down":
            hook = HttpReceiver(mode=mode).start()
            otlp = HttpReceiver(mode=mode).start()
            tcp = TcpReceiver(mode)
            held += [hook, otlp, tcp]
        syslog_port = tcp.port if tcp else free_port()
        hook_port = hook.port if hook else free_port()
        otlp_port = otlp.port if otlp else free_port()
        listed = ", ".join(f'"{x}"' for x in sinks if x != "traces")
        audit = (f'[audit]\nsinks = [{listed}]\n'
                 f'syslog = "tcp://127.0.0.1:{syslog_port}"\n'
                 f'webhook_url = "http://127.0.0.1:{hook_port}/hook"\nallow_loopback = true\n\n'
                 f"[telemetry]\ntraces = {'true' if 'traces' in sinks else 'false'}\n\n")
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{otlp_port}"}
    toml = audit + service_block("b", "host_inject", "bearer", up.port)
    base.mkdir()
    home = ProxyHome.create(base, toml, {"b": SECRET, "audit": {"webhook": "bench-key"}},
                            files={"upstream-ca.pem": up.ca_file.read_bytes()})
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        return ProxyProcess.start(home)
    finally:
        os.environ.clear()
        os.environ.update(saved)


def quantiles(times: list[float]) -> dict[str, float]:
    q = statistics.quantiles(times, n=100)
    return {"p50": q[49], "p95": q[94], "p99": q[98], "max": max(times)}


def run_case(base: Path, up: Upstream, baseline: ProxyProcess, mode: str, n: int,
             sinks: tuple[str, ...]) -> list[dict[str, object]]:
    """``n`` requests to the sink proxy interleaved one for one with ``n`` to the no-sink
    baseline, so the machine's other load hits both alike."""
    held: list[object] = []
    proxy = start_proxy(base, up, mode, sinks, held)
    times: dict[str, list[float]] = {"none": [], mode: []}
    statuses: list[int] = []
    try:
        with agent_client(baseline) as c0, agent_client(proxy) as c1:
            pairs = (("none", c0), (mode, c1))
            for i in range(20):  # warm-up: TLS contexts, pools
                for _, c in pairs:
                    c.get(f"https://b.api.test/warm/{i}")
            for i in range(n):
                for name, c in pairs:
                    t0 = time.perf_counter()
                    r = c.get(f"https://b.api.test/bench/{mode}/{i}")
                    times[name].append((time.perf_counter() - t0) * 1000)
                    if name == mode:
                        statuses.append(r.status_code)
        records = [json.loads(x) for x in (proxy.home.path / "audit.jsonl").read_text().splitlines()]
        audited = sum(1 for r in records if r["event"] == "request"
                      and str(r["path"]).startswith("/bench/"))
    finally:
        proxy.stop()
        for rx in held:
            rx.stop() if isinstance(rx, HttpReceiver) else rx.close()  # type: ignore[attr-defined]
    return [{"case": f"{mode} (baseline)", "n": n, "ok": n, "audited": n, **quantiles(times["none"])},
            {"case": mode, "n": n, "ok": statuses.count(200), "audited": audited,
             **quantiles(times[mode])}]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100 requests per case")
    parser.add_argument("--sinks", default="syslog,webhook,otlp,traces",
                        help="comma-separated sinks to turn on (default: all network ones)")
    parser.add_argument("--cases", default="ok,slow,refuse,down")
    args = parser.parse_args()
    n = 100 if args.quick else 400
    sinks = tuple(args.sinks.split(","))
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="vp-sinks-bench-") as tmp:
        (Path(tmp) / "up").mkdir()
        up = Upstream(Path(tmp) / "up").start()
        baseline = start_proxy(Path(tmp) / "base", up, None, sinks, [])
        try:
            for i, mode in enumerate(args.cases.split(",")):
                rows += run_case(Path(tmp) / f"c{i}", up, baseline, mode, n, sinks)
        finally:
            baseline.stop()
            up.stop()
    print(f"sinks: {', '.join(sinks)}; {n} requests per row, sink proxy and baseline interleaved")
    print(f"{'case':<18} {'ok':>5} {'audited':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for r in rows:
        print(f"{r['case']:<18} {r['ok']:>5} {r['audited']:>8} {r['p50']:>8.2f} {r['p95']:>8.2f} "
              f"{r['p99']:>8.2f} {r['max']:>8.2f}")
    bad = [r for r in rows if r["ok"] != n or r["audited"] != n]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
