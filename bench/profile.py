# ruff: noqa: E501  (long table labels and config templates)
"""cProfile of `vaultproxy run` on the injected path (host_inject, 10 keep-alive connections,
then new connections), summarised by where the time goes. cProfile slows the proxy down
several times over; read the shares, not the absolute numbers."""

from __future__ import annotations

import pstats
from pathlib import Path

from bench.load import run_hey
from bench.targets import Vaultproxy, VaultproxyHome
from bench.upstream import Nginx

AREAS = [  # first match wins; matched against the function's file path
    ("vaultproxy (our stages and core)", ("/vaultproxy/",)),
    ("mitmproxy hook dispatch (addonmanager, hooks)", ("mitmproxy/addonmanager.py", "mitmproxy/hooks.py")),
    ("mitmproxy HTTP/1 layer + h11-style parsing", ("mitmproxy/proxy/layers/http/", "mitmproxy/net/http/")),
    ("mitmproxy TLS layer + pyOpenSSL/cryptography", ("mitmproxy/proxy/layers/tls", "OpenSSL/", "cryptography/",
                                                      "mitmproxy/certs.py", "mitmproxy/addons/tlsconfig.py")),
    ("mitmproxy proxy core (server, layer machinery, commands)", ("mitmproxy/proxy/",)),
    ("mitmproxy flow/HTTP model (headers, requests, metadata)", ("mitmproxy/http.py", "mitmproxy/flow.py",
                                                                 "mitmproxy/coretypes/", "mitmproxy/connection.py")),
    ("other mitmproxy", ("mitmproxy/",)),
    ("asyncio event loop + sockets", ("asyncio/", "selectors.py", "socket.py")),
    ("ssl builtins (SSL_read/write via cffi)", ("<built-in method _cffi",)),
]  # fmt: skip


def _area(filename: str, funcname: str) -> str:
    key = filename if filename != "~" else funcname
    for area, needles in AREAS:
        if any(n in key for n in needles):
            return area
    return "other (builtins, stdlib)"


def summarise(stats_file: Path, requests: int, seconds: float) -> str:
    st = pstats.Stats(str(stats_file))
    raw = dict(st.stats)  # type: ignore[attr-defined]
    # cProfile's clock is wall time: the event loop's wait for sockets (epoll) is idle, not
    # CPU, and would make the per-request figure swing with the client's pace. Left out.
    idle = [k for k in raw if k[0] == "~" and "select.epoll" in k[2] and "poll" in k[2]]
    idle_s = sum(raw.pop(k)[2] for k in idle)
    total = sum(v[2] for v in raw.values()) or 1.0
    areas: dict[str, float] = {}
    for (fname, _line, func), (_cc, _nc, tt, _ct, _callers) in raw.items():
        a = _area(fname, func)
        areas[a] = areas.get(a, 0.0) + tt
    top = sorted(raw.items(), key=lambda kv: kv[1][2], reverse=True)[:15]
    cum_ours = sorted(
        (
            (k, v)
            for k, v in raw.items()
            if "/vaultproxy/" in k[0] and "<module>" not in k[2] and "/cli/" not in k[0]
        ),
        key=lambda kv: kv[1][3],
        reverse=True,
    )[:10]
    lines = [
        f"cProfile, host_inject, {requests} requests through the proxy in {seconds:.0f} s "
        f"(10 keep-alive conns, then 10 conc. new connections); profiled CPU {total:.1f} s "
        f"= {total * 1000 / max(requests, 1):.2f} ms per request under the profiler "
        f"(waiting in epoll, {idle_s:.1f} s, not counted).",
        "",
        "| where (self time) | share |",
        "|---|---|",
    ]
    for a, t in sorted(areas.items(), key=lambda kv: kv[1], reverse=True):
        lines.append(f"| {a} | {t * 100 / total:.1f}% |")
    lines += [
        "",
        "Top functions by self time:",
        "",
        "| function | self % | calls |",
        "|---|---|---|",
    ]
    for (fname, line, func), (_cc, nc, tt, _ct, _) in top:
        short = fname.split("site-packages/")[-1].split("/work/main/")[-1]
        lines.append(f"| `{short}:{line} {func}` | {tt * 100 / total:.1f}% | {nc:,} |")
    lines += [
        "",
        "Our code, by cumulative time:",
        "",
        "| function | cum % | calls |",
        "|---|---|---|",
    ]
    for (fname, line, func), (_cc, nc, _tt, ct, _) in cum_ours:
        short = fname.split("/work/main/")[-1]
        lines.append(f"| `{short}:{line} {func}` | {ct * 100 / total:.1f}% | {nc:,} |")
    return "\n".join(lines)


def profile_vaultproxy(nginx: Nginx, home: VaultproxyHome, work: Path, seconds: float) -> str:
    work.mkdir(parents=True, exist_ok=True)
    out = work / "vaultproxy.pstats"
    t = Vaultproxy("vp-profile", "vaultproxy host_inject (cProfile)", nginx, work)
    t.home, t.service, t.profile_to = home, "hi", out
    t.start()
    try:
        a = run_hey(t.base + "/1k", proxy=t.proxy, conns=10, duration_s=seconds)
        b = run_hey(
            t.base + "/1k", proxy=t.proxy, conns=10, duration_s=seconds / 2, keepalive=False
        )
    finally:
        t.stop()
    n = sum(a.statuses.values()) + sum(b.statuses.values())
    text = summarise(out, n, seconds * 1.5)
    return text
