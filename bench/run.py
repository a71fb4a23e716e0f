# ruff: noqa: E501  (long table labels and config templates)
"""vaultproxy benchmarks: direct vs bare mitmdump vs squid ssl-bump vs vaultproxy, in one run.

    .venv/bin/python bench/run.py            # full (~5 min), writes docs/BENCHMARKS.md
    .venv/bin/python bench/run.py --quick    # short durations (< 2 min)
    .venv/bin/python bench/run.py --profile  # also cProfile vaultproxy (host_inject, 10 conns)

Needs: nginx-light, hey, squid-openssl (optional) from Debian; trustme in the venv.
All traffic stays on 127.0.0.1. See docs/BENCHMARKS.md for what each figure means."""

from __future__ import annotations

import argparse
import http.client
import os
import ssl
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import report
from bench.load import run_hey, sequential
from bench.targets import Direct, Mitmdump, Squid, Target, Vaultproxy, VaultproxyHome, squid_binary
from bench.upstream import BIG_BYTES, Nginx

DOC = Path(__file__).resolve().parents[1] / "docs" / "BENCHMARKS.md"


def rss_kib(pid: int, field: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak(pid: int) -> None:
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    except OSError:
        pass


def cpu_ticks(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])  # utime + stime


def settle(pids: list[int], limit_s: float = 15) -> None:
    """Wait (bounded) until the proxy is idle: a finished client run can leave it busy with
    connections still being torn down, which would be charged to the next workload."""
    if not pids:
        return
    hz = os.sysconf("SC_CLK_TCK")
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        a = sum(cpu_ticks(p) for p in pids)
        time.sleep(0.25)
        if (sum(cpu_ticks(p) for p in pids) - a) / hz < 0.025:  # < 10% of one core
            return


def check_injection(t: Target) -> str:
    """One GET /auth through the target; nginx logs the Authorization it received."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # each proxy mints its own certificate
    url = t.base.removeprefix("https://")
    host, _, port = url.partition(":")
    if t.proxy:
        phost, pport = t.proxy.removeprefix("http://").rsplit(":", 1)
        conn = http.client.HTTPSConnection(phost, int(pport), context=ctx, timeout=20)
        conn.set_tunnel(host, int(port or 443))
    else:
        conn = http.client.HTTPSConnection(host, int(port or 443), context=ctx, timeout=20)
    hdrs = dict(h.split(": ", 1) for h in t.headers)
    before = t.nginx.auth_lines()
    try:
        conn.request("GET", "/auth", headers=hdrs)
        status = conn.getresponse().status
    finally:
        conn.close()
    deadline = time.monotonic() + 5  # nginx logs after the response went out
    while t.nginx.auth_lines() == before and time.monotonic() < deadline:
        time.sleep(0.02)
    seen = t.nginx.last_authorization()
    want = t.expect_auth or "-"
    if status != 204 or seen != want:
        raise RuntimeError(
            f"{t.name}: injection check failed (status {status}, upstream saw the wrong Authorization)"
        )
    return "ok"


def measure(t: Target, d: dict[str, float], results: dict[str, dict[str, object]]) -> None:
    r: dict[str, object] = {}
    results[t.name] = r
    pids = t.pids  # every process of the proxy (vaultproxy --workers N: N of them)
    if pids:
        r["rss_idle_mib"] = sum(rss_kib(p, "VmRSS") or 0 for p in pids) / 1024
    r["injection"] = check_injection(t)
    run_hey(t.base + "/1k", proxy=t.proxy, headers=t.headers, duration_s=d["warm"])

    def keep(key: str, res: object, value: object) -> None:
        if res.ok():  # type: ignore[attr-defined]
            r[key] = value
        else:
            r[key] = None
            r.setdefault("problems", []).append(f"{key}: {res.problem()}")  # type: ignore[attr-defined,union-attr]

    settle(pids)
    res = run_hey(t.base + "/1k", proxy=t.proxy, headers=t.headers, conns=10, duration_s=d["conc"])
    keep("conc10_rps", res, res.rps)
    settle(pids)
    # Warm the sequential path too, then measure with a per-request timer (see load.sequential).
    sequential(t.base, "/1k", proxy=t.proxy, headers=t.headers, count=50, limit_s=d["warm"])
    res = sequential(
        t.base, "/1k", proxy=t.proxy, headers=t.headers, count=int(d["seq_n"]), limit_s=d["seq"]
    )
    keep("seq_p50_ms", res, res.p50_ms)
    keep("seq_p99_ms", res, res.p99_ms)
    keep("seq_rps", res, res.rps)
    settle(pids)
    res = run_hey(
        t.base + "/1k",
        proxy=t.proxy,
        headers=t.headers,
        conns=10,
        duration_s=d["new"],
        keepalive=False,
    )
    keep("newconn_rps", res, res.rps)
    settle(pids)
    if t.proxy:
        res = run_hey(t.passthrough_base + "/1k", proxy=t.proxy, conns=10, duration_s=d["pt"])
        keep("passthrough_rps", res, res.rps)
    else:
        r["passthrough_rps"] = r.get("conc10_rps")
    for kind in ("download", "upload"):
        settle(pids)
        base_rss = {p: rss_kib(p, "VmRSS") or 0 for p in pids}
        for p in pids:
            reset_peak(p)
        if kind == "download":
            res = run_hey(
                t.base + "/big", proxy=t.proxy, headers=t.headers, count=1, conns=1, timeout_s=120
            )
            keep(f"{kind}_mbps", res, BIG_BYTES / 1e6 / res.total_s if res.total_s else None)
        else:
            t.nginx.clear_uploads()
            res = run_hey(
                t.base + "/upload", proxy=t.proxy, headers=t.headers, count=1, conns=1, timeout_s=120,
                method="PUT", body_file=str(t.nginx.big_file),
            )  # fmt: skip
            res.statuses = {(200 if s in (201, 204) else s): n for s, n in res.statuses.items()}
            keep(f"{kind}_mbps", res, BIG_BYTES / 1e6 / res.total_s if res.total_s else None)
        if pids:  # summed over the proxy's processes
            peaks = {p: rss_kib(p, "VmHWM") or 0 for p in pids}
            r[f"{kind}_peak_mib"] = sum(peaks.values()) / 1024
            growth = sum(max(0, peaks[p] - base_rss[p]) for p in pids)
            r[f"{kind}_growth_mib"] = growth / 1024


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="short durations (< 2 min in all)")
    ap.add_argument("--profile", action="store_true", help="also cProfile vaultproxy host_inject")
    ap.add_argument("--only", default="", help="comma-separated target names (default: all)")
    ap.add_argument("--rounds", type=int, default=1, metavar="N",
                    help="measure every target N times, interleaved; cells are medians")
    ap.add_argument("--no-doc", action="store_true", help="print the table; do not write the doc")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args(argv)
    d = (
        {"warm": 1, "conc": 4, "seq": 3, "seq_n": 1000, "new": 4, "pt": 3}
        if args.quick
        else {"warm": 2, "conc": 10, "seq": 8, "seq_n": 3000, "new": 10, "pt": 6}
    )
    for k in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy", "SSL_CERT_FILE"):
        os.environ.pop(k, None)
    started = time.monotonic()
    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="vaultproxy-bench-"))
    os.chmod(work, 0o755)  # nginx workers and squid run as unprivileged users when we are root
    nginx = Nginx(work / "nginx").start()
    print(
        f"nginx on 127.0.0.1:{nginx.port} (passthrough port {nginx.pt_port}); work dir {work}",
        flush=True,
    )
    home = VaultproxyHome.create(work / "vp", nginx)
    targets: list[Target] = [Direct("direct", "direct", nginx, work / "direct")]
    targets.append(Mitmdump("mitmdump", "bare mitmdump", nginx, work / "mitmdump"))
    skipped: list[str] = []
    if squid_binary():
        targets.append(Squid("squid", "squid ssl-bump", nginx, work / "squid"))
    else:
        skipped.append("squid: squid-openssl not installed (apt-get install squid-openssl)")
    for name, svc, label, workers in (
        ("vp-ph", "ph", "vaultproxy placeholder", 1),
        ("vp-hi", "hi", "vaultproxy host_inject", 1),
        ("vp-hi-w2", "hi", "vaultproxy host_inject, --workers 2", 2),
    ):
        vp = Vaultproxy(name, label, nginx, work / "vp")
        vp.home, vp.service, vp.workers = home, svc, workers
        targets.append(vp)
    if args.only:
        wanted = set(args.only.split(","))
        targets = [t for t in targets if t.name in wanted or t.name in ("direct", "mitmdump")]
    rounds: list[dict[str, dict[str, object]]] = []
    try:
        for n in range(max(1, args.rounds)):
            results: dict[str, dict[str, object]] = {}
            rounds.append(results)
            for t in targets:
                t0 = time.monotonic()
                try:
                    t.start()
                    measure(t, d, results)
                except Exception as e:  # noqa: BLE001 - a failing target is reported, not fatal
                    skipped.append(f"{t.name} (round {n + 1}): {e}")
                    results.pop(t.name, None)
                finally:
                    t.stop()
                print(f"round {n + 1} {t.name}: {time.monotonic() - t0:.0f} s "
                      f"{results.get(t.name)}", flush=True)
        profile = None
        if args.profile:
            from bench.profile import profile_vaultproxy

            profile = profile_vaultproxy(nginx, home, work / "profile", d["conc"])
    finally:
        nginx.stop()
        if not args.keep:
            import shutil

            shutil.rmtree(work, ignore_errors=True)
    meta = report.machine(
        load_before=load_before, load_after=os.getloadavg(), elapsed=time.monotonic() - started,
        command="python bench/run.py" + (" --quick" if args.quick else "") + (" --profile" if args.profile else "")
        + (f" --rounds {args.rounds}" if args.rounds > 1 else ""),
        durations=d,
    )  # fmt: skip
    labels = {t.name: t.label for t in targets}
    text = report.render(report.medians(rounds), labels, meta, skipped)
    if len(rounds) > 1:
        text += "\n\n" + report.round_ratios(rounds, labels)
    print(text)
    if profile:
        print(profile)
    if not args.no_doc:
        report.write_doc(DOC, text, profile)
        print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
